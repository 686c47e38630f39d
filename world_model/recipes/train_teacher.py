"""Train the multi-step teacher: a block-causal action-conditioned DiT on autoencoder latents.

    python -m world_model.recipes.train_teacher settings/train/teacher.yaml --out runs/teacher [--resume]
        [--init assets/checkpoints/teacher.safetensors] [--set max_minutes=9 --set batch=32]
    torchrun --nproc_per_node=2 -m world_model.recipes.train_teacher ...        # DDP, one process per GPU

Data: recipes/feeder.py (collector -> frozen autoencoder -> latent ClipBuffers on the training device);
random 16-tick clips are drawn from it, and its held-out buffer (worker 0) gives the validation loss.

Loss: world_model.losses.TeacherLoss, a mix of packed teacher forcing and diffusion forcing, with
null-action dropout. bf16 autocast on CUDA, AdamW, EMA. Resumable twice over: --resume continues from
OUT/train_state.safetensors (full state), --init starts from a weights-only checkpoint (the shipped
bf16 teacher) when the full state did not survive, e.g. across GPU machines.

Outputs under --out: metrics.csv, metrics.png, tb/ (TensorBoard), train_state*.safetensors,
teacher.safetensors (EMA weights, bf16), summary.json.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from world_model import checkpoint
from world_model.autoencoder import Autoencoder
from world_model.data import ClipBuffer, PairBuffer
from world_model.graphs import GraphedSession
from world_model.losses import TeacherLoss, TeacherLossConfig
from world_model.model import ModelConfig, WorldModel, action_features, load_model, load_weights_into, save_model
from world_model.recipes.common import (Metrics, autocast, ema_update, load_state, lr_at, plot_csv,
                                        recipe_cli, save_state)
from world_model.recipes.feeder import DataConfig, Feeder
from world_model.rollout import Session
from world_model.sampler import SamplerConfig


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    loss: TeacherLossConfig = TeacherLossConfig()
    data: DataConfig = DataConfig()
    autoencoder: str = "assets/checkpoints/autoencoder.safetensors"
    clip_len: int = field(default=16, metadata={"min": 2})
    # Encoding a 256-frame chunk took about 80 ms on the H100 (3k frames/s: the fill rate), which
    # halved the step rate when done every step; new data every few steps is plenty for a 400k buffer.
    drain_every: int = field(default=4, metadata={"min": 1})
    batch: int = field(default=32, metadata={"min": 1})                 # per process
    steps: int = field(default=60_000, metadata={"min": 1})
    max_minutes: float = field(default=0.0, metadata={"min": 0.0})      # 0: no time limit
    total_minutes: float = field(default=60.0, metadata={"min": 0.0})   # cosine horizon across resumes
    lr: float = field(default=3e-4, metadata={"min": 0.0})
    min_lr: float = field(default=3e-5, metadata={"min": 0.0})
    warmup: int = field(default=1000, metadata={"min": 1})
    weight_decay: float = field(default=0.01, metadata={"min": 0.0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})
    ema: float = field(default=0.999, metadata={"min": 0.0, "max": 1.0})
    ema_start: int = field(default=1000, metadata={"min": 0})
    eval_every: int = field(default=1000, metadata={"min": 1})
    save_every: int = field(default=2000, metadata={"min": 1})
    log_every: int = field(default=50, metadata={"min": 1})
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    # Training on its own rollouts (session 8, for the long-window brightening, docs/EVALUATION.md): in this
    # many teacher-forcing rows of each batch, the clean frames from `rollout_from` on are replaced by the EMA
    # model's own rollout (Session, `rollout_steps` Euler steps, the clip's actions), while the targets stay
    # the game's frames. 0 = off.
    rollout_rows: int = field(default=0, metadata={"min": 0})
    rollout_from: int = field(default=8, metadata={"min": 1})
    rollout_steps: int = field(default=4, metadata={"min": 1})
    rollout_graphs: bool = True     # CUDA graphs for the rollout (false: eager, ~5x slower on a GPU)
    # Training clips that hold a forward break (a reversal or a start from rest, world_model/data.py) are drawn
    # this many times as often as others: there the next frame follows the forward input rather than the
    # momentum the context shows, which is what the move probes ask (docs/DATA.md). 1 = uniform.
    move_weight: float = field(default=1.0, metadata={"min": 0.01})
    # The per-patch action map and the position table (model.patch_action, model.abs_pos) learn at this multiple
    # of the rate. For continuations: they start at zero while the rest is trained, and the cosine's tail rate
    # that suits trained weights hardly moves them. In the CPU zoom_toy, a map added to a trained model reached
    # a zoom effect of 0.12 in 800 steps at 1x, 0.56 at 10x and 0.69 at 30x (docs/EVALUATION.md, session 20).
    map_lr_mult: float = field(default=1.0, metadata={"min": 0.0})
    # Fork pairs per batch (world_model/forks.py; needs data.collect.fork.share > 0): 2 more teacher-forcing
    # rows each, under the pair loss (losses.py, `pair_weight`). 0 = off.
    pair_rows: int = field(default=0, metadata={"min": 0})
    # Stop when the held-out teacher-forcing MSE rises this fraction above the starting model's on the same
    # clips (0 = never). For continuations with a new loss: session 14's pair loss raised it at every validation
    # while it broke the teacher's samples (docs/EVALUATION.md), and the run went on to the end.
    guard_val_tf: float = field(default=0.0, metadata={"min": 0.0})


FIELDS = ("step", "loss", "loss_tf", "loss_df", "mse_tf", "mse_df", "val_mse_tf", "val_mse_df",
          "loss_pair", "mse_pair", "pair_effect", "val_pair_effect", "lr",
          "grad_norm", "minutes", "frames", "buffer", "steps_per_s", "ms_data", "ms_sample", "ms_rollout",
          "ms_fwd_bwd", "ms_opt")


class Objective(nn.Module):
    """Model + loss as one module, so DDP sees a single forward even though the loss runs the
    model twice (teacher-forcing half and diffusion-forcing half of the batch)."""

    def __init__(self, model: WorldModel, loss: TeacherLoss):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, latents: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None,
                context: torch.Tensor | None = None, pairs: tuple[torch.Tensor, torch.Tensor] | None = None):
        return self.loss(self.model, latents, actions, generator, context, pairs)


@torch.no_grad()
def own_rollout(session: Session, latents: torch.Tensor, actions: torch.Tensor, start: int, steps: int) -> torch.Tensor:
    """latents (n, T, C, h, w), actions (n, T, A) -> the clip with frames start.. replaced by the session's
    rollout from the real frames before `start`, under the clip's actions (frame j comes from action j)."""
    session.reset(latents[:, :start], actions[:, :start])
    made = [session.step(actions[:, j], steps=steps) for j in range(start, latents.shape[1])]   # (n, C, h, w) each
    return torch.cat([latents[:, :start], torch.stack(made, 1).to(latents.dtype)], dim=1)


def rollout_session(ema: WorldModel, cfg: TrainConfig, device: torch.device, rank: int) -> Session:
    """The EMA weights' Session for `own_rollout`: the whole clip fits its cache (no eviction), and on CUDA
    its passes replay as graphs that read the EMA parameters in place, so they follow every update."""
    return GraphedSession(ema, window=cfg.clip_len, sink=0, device=device, dtype=torch.bfloat16,
                          seed=cfg.seed * 31 + rank, sampler=SamplerConfig(kind="euler", steps=cfg.rollout_steps),
                          check_finite=False, capture=device.type == "cuda" and cfg.rollout_graphs)


class PhaseTimer:
    """Wall time of the phases of one step, synchronising the device between them. Used on logged
    steps only (one in `log_every`), so the other steps keep running asynchronously."""

    def __init__(self, device: torch.device, active: bool):
        self.device, self.active, self.ms = device, active, {}
        self.t = time.perf_counter()

    def mark(self, name: str) -> None:
        if not self.active:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.ms[f"ms_{name}"] = (now - self.t) * 1000
        self.t = now


class Profile:
    """`--profile N`: skip 2 steps, warm up 3, record N with torch.profiler, then stop training and
    print the operators that took the most device (or CPU) time; a Chrome trace goes to OUT."""

    def __init__(self, device: torch.device, steps: int, out: Path):
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.cuda, self.out, self.left = device.type == "cuda", out, 2 + 3 + steps
        self.prof = profile(activities=acts, schedule=schedule(wait=2, warmup=3, active=steps))
        self.prof.__enter__()

    def step(self) -> bool:
        """Advance; True once the recorded steps are done."""
        self.prof.step()
        self.left -= 1
        return self.left <= 0

    def report(self) -> str:
        self.prof.__exit__(None, None, None)
        self.prof.export_chrome_trace(str(self.out / "profile.json"))
        events = self.prof.key_averages()
        key = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        return events.table(sort_by=key, row_limit=30)


@torch.no_grad()
def validate(model: WorldModel, loss: TeacherLoss, buf: ClipBuffer, cfg: TrainConfig, device: torch.device,
             batches: int = 4, pairs: PairBuffer | None = None, pair_t: float = 0.9) -> dict[str, float]:
    """Held-out velocity MSE of both halves of the loss; with `pairs`, also the share of the fork pairs'
    difference the model draws at t = `pair_t`, where both clips' noisy frames are nearly the same noise and
    mostly the context and the action tell them apart (`TeacherLoss.pair_loss`; recipes/pair_effect.py reads
    it per pair kind and branch tick)."""
    rng = np.random.default_rng(1234)
    gen = torch.Generator(device=device).manual_seed(1234)
    tf, df, effect = [], [], []
    for _ in range(batches):
        x, a = buf.sample(cfg.batch, cfg.clip_len, rng)
        a = action_features(model.config, a)[0]                                       # (B, T, action_inputs)
        with autocast(device):
            tf.append(loss.teacher_forcing(model, x.float(), a, gen)[1].item())
            df.append(loss.diffusion_forcing(model, x.float(), a, gen, blind_prob=0.0)[1].item())
            if pairs is not None and len(pairs):
                xp, ap = pairs.sample(max(1, cfg.batch // 2), rng)
                effect.append(loss.pair_loss(model, xp.float(), pair_features(model, ap), gen, t=pair_t)[1]["pair_effect"].item())
    out = {"val_mse_tf": float(np.mean(tf)), "val_mse_df": float(np.mean(df))}
    if effect:
        out["val_pair_effect"] = float(np.mean(effect))
    return out


def pair_features(model: WorldModel, actions: torch.Tensor) -> torch.Tensor:
    """Fork pairs' actions (P, 2, T, 5) -> the model's action inputs (P, 2, T, action_inputs)."""
    P = actions.shape[0]
    return action_features(model.config, actions.flatten(0, 1))[0].unflatten(0, (P, 2))


def param_groups(model: WorldModel, map_lr_mult: float) -> list[dict]:
    """AdamW groups, each with its rate multiple ("mult"): one group at 1x, or with map_lr_mult != 1 the
    per-patch action map and position table in a second group. The layout depends only on the config, so a
    --resume rebuilds the same one and the saved Adam moments land on the same parameters."""
    mapped = ("patch_action", "pos_embed")
    named = list(model.named_parameters())
    maps = [p for n, p in named if n in mapped]
    if map_lr_mult == 1.0 or not maps:
        return [{"params": [p for _, p in named], "mult": 1.0}]
    return [{"params": [p for n, p in named if n not in mapped], "mult": 1.0},
            {"params": maps, "mult": map_lr_mult}]


def main(cfg: TrainConfig, out: Path, resume: bool = False, init: Path | None = None, profile: int = 0) -> dict:
    rank, world = _init_distributed()
    device = _device(cfg.device, rank)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    torch.manual_seed(cfg.seed + rank)

    ae = Autoencoder.load(cfg.autoencoder, device=device)
    if ae.latent_shape != cfg.model.latent_shape:
        raise checkpoint.CheckpointError(f"{cfg.autoencoder}: latent {ae.latent_shape} does not match "
                                         f"model.latent_* {cfg.model.latent_shape}")
    model = WorldModel(cfg.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg.map_lr_mult), lr=cfg.lr, betas=(0.9, 0.99),
                            weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    state_path = out / "train_state.safetensors"
    step, minutes = 0, 0.0
    rewarm_from = None          # fresh Adam moments after --init: warm the lr up again from there
    if resume and (state_path.exists() or (out / "train_state.index.json").exists()):
        meta = load_state(state_path, {"model": model, "ema": ema}, opt, model.config_dict())
        step, minutes = int(meta["step"]), float(meta["minutes"])
        log(f"resumed from {state_path} at step {step} ({minutes:.1f} min)")
    elif init is not None:
        src = load_model(init)
        try:                                  # the same config, or the same plus action momentum (zero weights)
            load_weights_into(model, src)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"{init}: another model config than {cfg.model}: {e}") from None
        ema.load_state_dict(model.state_dict())
        meta = checkpoint.load(init)[2]
        step, minutes = int(meta.get("step", 0)), float(meta.get("minutes", 0.0))
        rewarm_from = step
        log(f"initialised from {init} (step {step}, {minutes:.1f} min); optimizer moments start fresh")
    log(f"teacher: {model.num_params() / 1e6:.2f}M params, {world} process(es), device {device}")

    n_tf = round(cfg.batch * cfg.loss.tf_fraction)
    fork = cfg.data.collect.fork
    if cfg.pair_rows and fork.share <= 0:
        raise ValueError(f"pair_rows={cfg.pair_rows} needs fork pairs in the data: set data.collect.fork.share > 0")
    if fork.share > 0 and fork.clip > cfg.clip_len:   # the model knows the temporal positions of a clip only
        raise ValueError(f"data.collect.fork: prefix + branch = {fork.clip} ticks, more than clip_len={cfg.clip_len}")
    if cfg.rollout_rows and (cfg.rollout_rows > n_tf or cfg.rollout_from >= cfg.clip_len):
        raise ValueError(f"rollout_rows={cfg.rollout_rows} needs at most the {n_tf} teacher-forcing rows of a "
                         f"batch, and rollout_from={cfg.rollout_from} fewer than clip_len={cfg.clip_len} frames")
    roller = rollout_session(ema, cfg, device, rank) if cfg.rollout_rows else None
    objective = Objective(model, TeacherLoss(cfg.loss))
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    step_fn = torch.compile(objective) if cfg.compile else objective
    feeder = Feeder(cfg.data, ae, device, rank, world)
    metrics = Metrics(out / "metrics.csv", FIELDS, resume, tensorboard=out / "tb") if rank == 0 else None
    rng = np.random.default_rng([cfg.seed, rank, step])
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + rank * 104729 + step)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        feeder.fill(cfg.data.min_fill, log)
        pairs_held = feeder.heldout_pairs if feeder.forks else None
        # The guard compares the EMA with a frozen copy of the starting model on the same held-out batches.
        # Why not with one number taken before the first step: the held-out buffer is still filling then, and
        # session 15 read 0.436 and 0.499 for the same starting teacher in two runs (and stopped one on it).
        guard_ref, guard_hit, stopped_by_guard, guard_row = None, False, None, {}
        if cfg.guard_val_tf > 0 and rank == 0:
            guard_ref = copy.deepcopy(ema).requires_grad_(False)
        prof = Profile(device, profile, out) if profile else None
        t_start, step0, minutes0 = time.perf_counter(), step, minutes
        t_log, step_log = t_start, step
        bar = _progress(rank, cfg.steps, step)
        while step < cfg.steps and not stop["now"]:
            minutes = minutes0 + (time.perf_counter() - t_start) / 60
            if cfg.max_minutes and minutes - minutes0 >= cfg.max_minutes:
                break
            lr = lr_at(step, minutes, lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, steps=cfg.steps,
                       max_minutes=cfg.total_minutes)
            if rewarm_from is not None:
                lr *= min(1.0, (step - rewarm_from + 1) / min(cfg.warmup, 200))
            for g in opt.param_groups:
                g["lr"] = lr * g["mult"]
            timer = PhaseTimer(device, active=(step + 1) % cfg.log_every == 0)
            if step % cfg.drain_every == 0:
                feeder.drain(cfg.data.max_chunks_per_step)
            timer.mark("data")
            x, a = feeder.train.sample(cfg.batch, cfg.clip_len, rng, cfg.move_weight)  # (B, T, C, h, w), (B, T, 5)
            timer.mark("sample")
            pairs = None
            if cfg.pair_rows:
                xp, ap = feeder.train_pairs.sample(cfg.pair_rows, rng)                  # (P, 2, T, C, h, w)
                pairs = (xp.float(), pair_features(model, ap))
            context = None
            if roller is not None:
                n = cfg.rollout_rows
                context = torch.cat([own_rollout(roller, x[:n].float(), a[:n], cfg.rollout_from, cfg.rollout_steps),
                                     x[n:].float()])                                       # (B, T, C, h, w)
                timer.mark("rollout")
            with autocast(device):
                loss, parts = step_fn(x.float(), action_features(model.config, a)[0], gen, context, pairs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            timer.mark("fwd_bwd")
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            timer.mark("opt")
            step += 1
            if prof is not None and prof.step():
                break
            if step >= cfg.ema_start:
                ema_update(ema, model, cfg.ema if step > cfg.ema_start else 0.0)
            else:
                ema.load_state_dict(model.state_dict())
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.perf_counter()
                row = {"step": step, "lr": lr, "grad_norm": float(grad_norm), "minutes": minutes,
                       "frames": feeder.frames, "buffer": len(feeder.train),
                       "steps_per_s": (step - step_log) / max(1e-9, now - t_log)}
                row.update({k: float(v) for k, v in parts.items()})
                row.update(timer.ms)
                t_log, step_log = now, step
                if step % cfg.eval_every == 0:
                    row.update(validate(ema, objective_loss(objective), feeder.heldout, cfg, device, pairs=pairs_held))
                    if guard_ref is not None:
                        ref = validate(guard_ref, objective_loss(objective), feeder.heldout, cfg, device)["val_mse_tf"]
                        guard_row = {"guard_ref_val_mse_tf": ref, "guard_val_mse_tf": row["val_mse_tf"]}
                        guard_hit = row["val_mse_tf"] > ref * (1 + cfg.guard_val_tf)
                metrics.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.1e}")
            if cfg.guard_val_tf > 0 and step % cfg.eval_every == 0 and _agree(guard_hit, device, world):
                stopped_by_guard = step
                log(f"\nguard: held-out TF MSE {guard_row.get('guard_val_mse_tf', float('nan')):.4f} is more than "
                    f"{cfg.guard_val_tf:.0%} above the starting model's {guard_row.get('guard_ref_val_mse_tf', float('nan')):.4f}"
                    f" on the same clips: stopped at step {step}")
                break
            if step % cfg.save_every == 0:
                _save(rank, state_path, out, model, ema, opt, step, minutes, cfg)
        bar.close()
        if prof is not None:
            log(prof.report())
        minutes = minutes0 + (time.perf_counter() - t_start) / 60
        _save(rank, state_path, out, model, ema, opt, step, minutes, cfg)
        summary = {}
        if rank == 0:
            summary = {"step": step, "minutes": round(minutes, 2), "params": model.num_params(),
                       "steps_this_run": step - step0, "frames_collected": feeder.frames,
                       "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "processes": world, **validate(ema, objective_loss(objective), feeder.heldout, cfg, device,
                                                      pairs=pairs_held)}
            if guard_ref is not None:   # the starting model on the summary's own validation clips
                summary.update(guard_ref_val_mse_tf=validate(guard_ref, objective_loss(objective), feeder.heldout, cfg,
                                                             device)["val_mse_tf"], stopped_by_guard_at=stopped_by_guard)
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
            metrics.close()
            plot_csv(out / "metrics.csv", out / "metrics.png",
                     {"training loss": (["loss", "loss_tf", "loss_df"], True),
                      "held-out velocity MSE (EMA)": (["val_mse_tf", "val_mse_df"], True),
                      "fork pairs: action effect drawn": (["pair_effect", "val_pair_effect"], False),
                      "throughput (steps/s)": (["steps_per_s"], False)}, title="teacher")
            log(f"teacher: step {step}, {minutes:.1f} min, held-out mse tf {summary['val_mse_tf']:.4f} "
                f"df {summary['val_mse_df']:.4f} -> {out / 'teacher.safetensors'}")
        return summary
    finally:
        feeder.close()
        if world > 1:
            dist.destroy_process_group()


def objective_loss(objective: nn.Module) -> TeacherLoss:
    return (objective.module if isinstance(objective, nn.parallel.DistributedDataParallel) else objective).loss


def _save(rank, state_path, out, model, ema, opt, step, minutes, cfg) -> None:
    if rank != 0:
        return
    meta = {"step": str(step), "minutes": f"{minutes:.3f}"}
    save_state(state_path, {"model": model, "ema": ema}, opt, config=model.config_dict(), meta=meta)
    save_model(out / "teacher.safetensors", ema, kind="teacher", meta={**meta, "recipe": "train_teacher"})


def _agree(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's flag on every rank (only rank 0 validates), so all processes leave the loop together."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def _init_distributed() -> tuple[int, int]:
    if "RANK" not in os.environ:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _device(name: str, rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(name)


def _progress(rank: int, total: int, initial: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=rank != 0, dynamic_ncols=True, file=sys.stderr,
                mininterval=5.0)


def cli(argv: list[str] | None = None) -> int:
    def extra(p):
        p.add_argument("--profile", type=int, default=0, metavar="N",
                       help="profile N training steps (after 5 unrecorded ones), print the top operators, stop")
    return recipe_cli(argv, __doc__, TrainConfig,
                      lambda cfg, a: main(cfg, a.out, resume=a.resume, init=a.init, profile=a.profile),
                      init_help="start from these teacher weights (optimizer moments fresh)", extra=extra)


if __name__ == "__main__":
    sys.exit(cli())
