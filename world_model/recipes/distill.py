"""Distill the teacher into a frame-wise student that plays at 1-2 steps per frame (Causal-rCM, recipe.md 1b).

    python -m world_model.recipes.distill settings/train/distill_cm.yaml --out runs/distill_cm --resume \
        --set max_minutes=9                                  # Stage A: TF-dCM, student initialised from the teacher
    python -m world_model.recipes.distill settings/train/distill_dmd.yaml --out runs/distill_dmd --resume \
        --init runs/distill_cm/student.safetensors --set max_minutes=9    # Stage B: Self-Forcing DMD

`stage: cm` (Stage A). Teacher-forcing discrete consistency distillation on real clips: the packed sequence
[clean | x_t0] under the TF mask, target from one teacher Euler step t0 -> t1 and the stop-grad student at t1
(distill_losses.ConsistencyLoss).

`stage: dmd` (Stage B). The student rolls itself out with rollout.Session, the player's own code: seeded
with `context` real latents and actions from the buffer, then `frames` generated frames on the clip's real
actions, each with the consistency schedule [1, 0] or [1, t_mid, 0] (cycled per cycle, so one checkpoint
serves both and the generator updates alternate between them). Only the last denoising pass of each frame
carries gradient (Session.step grad=True); the t=0 context re-encode is detached. Iterations run in cycles of
exactly `critic_per_generator` critic updates (flow matching of the fake score on the rollouts) and one
generator update (the DMD gradient from the frozen teacher as real score and the critic as fake score).
The student does not change during a cycle's critic updates, so their samples come from ONE no-grad rollout
of critic_per_generator * batch clips, cut into one slice of `batch` clips per update: the same distribution
as separate rollouts, at about the wall time of one (an eager frame-by-frame rollout is launch-bound). The
generator's rollout, with grad, is a second Session at `batch`. Adam beta1 = 0 for both; the critic has its
own lr.

Both stages: data from recipes/feeder.py (a new chunk every `drain_every` student updates), bf16 autocast on
CUDA only, EMA of the student, resumable (--resume: OUT/train_state.safetensors; --init: student weights to
start from, default the teacher; the random streams are seeded per update or cycle, so on the same buffer a
resumed run draws what an uninterrupted one would), time slices via max_minutes, SIGTERM saves and stops (at
the end of a cycle). Outputs under --out: metrics.csv, metrics.png, tb/, train_state*.safetensors,
student.safetensors (EMA weights, kind "student"; bf16, or int8 with save_int8; its metadata names the
schedules for 1 and 2 steps), summary.json.
"""
from __future__ import annotations

import copy
import json
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from world_model import checkpoint
from world_model.autoencoder import Autoencoder
from world_model.distill_losses import ConsistencyConfig, ConsistencyLoss, DMDConfig, DMDLoss, packed_velocity
from world_model.graphs import GraphedSession
from world_model.model import WorldModel, action_features, load_model
from world_model.recipes.common import (Metrics, autocast, ema_update, load_state, lr_at, plot_csv,
                                        recipe_cli, save_state)
from world_model.recipes.feeder import DataConfig, Feeder
from world_model.rollout import Session
from world_model.sampler import SamplerConfig, consistency_schedule


@dataclass(frozen=True)
class RolloutConfig:
    context: int = field(default=4, metadata={"min": 1})          # real seed frames (the player seeds with 8)
    frames: int = field(default=12, metadata={"min": 1})          # generated frames; context + frames <= 16,
    sink: int = field(default=1, metadata={"min": 0})             # the teacher's training clip length
    steps: tuple[int, ...] = (1, 2)                               # denoising steps, cycled per cycle
    first_frame_steps: int = field(default=0, metadata={"min": 0})  # 0: as the others (the player does so)
    # The critic's no-grad rollout (5 x batch clips per cycle) replays its passes as CUDA graphs that read the
    # student's weights in place, as the teacher recipe's own-rollout does; the generator's rollout, which
    # takes gradient, stays eager. No effect on the CPU.
    graphs: bool = True


@dataclass(frozen=True)
class DistillConfig:
    stage: Literal["cm", "dmd"] = "cm"
    teacher: str = "assets/checkpoints/teacher.safetensors"
    init: str = ""                                    # student weights to start from ("" = the teacher)
    # A shallower student: it keeps these blocks of the weights it starts from, in this order (() = all). Each
    # pass costs about depth blocks, and the teacher/student speed ratio is what issue 6 asks for.
    student_layers: tuple[int, ...] = ()
    autoencoder: str = "assets/checkpoints/autoencoder.safetensors"
    data: DataConfig = DataConfig(min_fill=8_000)
    cm: ConsistencyConfig = ConsistencyConfig()
    dmd: DMDConfig = DMDConfig()
    rollout: RolloutConfig = RolloutConfig()
    t_mid: float = field(default=5 / 6, metadata={"min": 0.0, "max": 1.0})   # 2-step schedule [1, t_mid, 0]
    clip_len: int = field(default=16, metadata={"min": 2})          # stage cm
    # Encoding a 256-frame chunk takes about 80 ms on the H100; draining data.max_chunks_per_step chunks at
    # every iteration cost more than the updates. New data every few student updates is plenty.
    drain_every: int = field(default=4, metadata={"min": 1})        # student updates (dmd: cycles)
    batch: int = field(default=32, metadata={"min": 1})
    steps: int = field(default=10_000, metadata={"min": 1})         # student (generator) updates
    critic_per_generator: int = field(default=5, metadata={"min": 0})   # stage dmd
    max_minutes: float = field(default=0.0, metadata={"min": 0.0})    # 0: no limit for this run
    total_minutes: float = field(default=20.0, metadata={"min": 0.0})  # cosine horizon across resumes
    lr: float = field(default=5e-5, metadata={"min": 0.0})
    min_lr: float = field(default=5e-6, metadata={"min": 0.0})
    critic_lr: float = field(default=2e-6, metadata={"min": 0.0})   # stage dmd: about lr / 5
    warmup: int = field(default=200, metadata={"min": 1})
    beta1: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})   # DMD: 0
    beta2: float = field(default=0.999, metadata={"min": 0.0, "max": 1.0})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})
    ema: float = field(default=0.999, metadata={"min": 0.0, "max": 1.0})
    ema_start: int = field(default=200, metadata={"min": 0})
    eval_every: int = field(default=500, metadata={"min": 1})
    eval_batches: int = field(default=4, metadata={"min": 1})
    save_every: int = field(default=1000, metadata={"min": 1})
    log_every: int = field(default=25, metadata={"min": 1})
    save_int8: bool = False                     # student.safetensors with int8 weights (about half of bf16)
    seed: int = 0
    device: str = "auto"
    # Stage A only: torch.compile the student and teacher forwards (the teacher recipe ran 2.3x faster
    # compiled on the H100). Stage B's cache passes change shape every frame, so it stays eager.
    compile: bool = False
    # As the teacher recipe's: clips holding a forward break (world_model/data.py) drawn this many times as
    # often as others, in both stages. 1 = uniform.
    move_weight: float = field(default=1.0, metadata={"min": 0.01})

    def __post_init__(self) -> None:
        if self.stage == "dmd" and self.rollout.context + self.rollout.frames < 2:
            raise ValueError("rollout.context + rollout.frames must be at least 2")
        if any(s < 1 for s in self.rollout.steps) or not self.rollout.steps:
            raise ValueError(f"rollout.steps must be a non-empty list of positive ints, got {self.rollout.steps}")

    @property
    def schedules(self) -> dict[int, list[float]]:
        """The student's sampling schedules by step count: {1: [1, 0], 2: [1, t_mid, 0]}."""
        return {n: consistency_schedule(n, self.t_mid) for n in (1, 2)}


FIELDS = {
    "cm": ("step", "loss", "cm_mse", "lr", "grad_norm", "val_mse_1step", "val_mse_2step", "minutes", "frames",
           "buffer", "steps_per_s"),
    "dmd": ("step", "critic_steps", "loss_gen", "loss_critic", "dmd_grad", "real_fake_gap", "gen_std", "lr",
            "critic_lr", "grad_norm", "critic_grad_norm", "val_mse_1step", "val_mse_2step", "minutes", "frames",
            "buffer", "steps_per_s"),
}


# ---------------------------------------------------------------------------------------------------------
#                                    Pieces the tests call directly
# ---------------------------------------------------------------------------------------------------------

def is_generator_turn(iteration: int, critic_per_generator: int) -> bool:
    """Iterations run in cycles of `critic_per_generator` critic updates, then one generator update."""
    return iteration % (critic_per_generator + 1) == critic_per_generator


def rollout(session: Session, seed: Tensor, actions: Tensor, steps: int, t_mid: float, *, grad: bool,
            first_frame_steps: int = 0) -> Tensor:
    """The student plays itself: seed (B, ctx, C, h, w) real latents, actions (B, ctx + K, A) ->
    (B, ctx + K, C, h, w) = [seed | K generated frames]. With grad=True each generated frame carries the
    gradient of its last denoising pass only; the cache never does (Session re-encodes detached)."""
    ctx, K = seed.shape[1], actions.shape[1] - seed.shape[1]
    with torch.no_grad():
        session.reset(seed.float(), actions[:, :ctx])
    frames = []
    for k in range(K):
        n = first_frame_steps if k == 0 and first_frame_steps else steps
        frames.append(session.step(actions[:, ctx + k], schedule=consistency_schedule(n, t_mid), grad=grad))
    return torch.cat([seed.float().to(frames[0].device), torch.stack(frames, dim=1)], dim=1)


@torch.no_grad()
def few_step_mse(model: WorldModel, x0: Tensor, actions: Tensor, schedule: list[float],
                 generator: torch.Generator) -> float:
    """Teacher-forced next-frame quality of the consistency sampler: every frame of the clips x0 (B, T, ...)
    is generated from noise with `schedule`, given the real frames before it (packed TF), and compared with
    the real frame (latent MSE)."""
    B, T = x0.shape[:2]
    x = torch.randn(x0.shape, generator=generator, device=x0.device)
    for i, t in enumerate(schedule[:-1]):
        tt = torch.full((B, T), t, device=x0.device)
        pred = x - t * packed_velocity(model, x0, x, tt, actions).float()
        if schedule[i + 1] > 0:
            s = schedule[i + 1]
            x = (1 - s) * pred + s * torch.randn(x0.shape, generator=generator, device=x0.device)
    return float((pred - x0).pow(2).mean())


def validate(model: WorldModel, feeder: Any, cfg: DistillConfig, device: torch.device) -> dict[str, float]:
    rng = np.random.default_rng(1234)
    gen = torch.Generator(device=device).manual_seed(1234)
    clip = cfg.clip_len if cfg.stage == "cm" else cfg.rollout.context + cfg.rollout.frames
    out = {"val_mse_1step": [], "val_mse_2step": []}
    for _ in range(cfg.eval_batches):
        x, a = feeder.heldout.sample(min(cfg.batch, 16), clip, rng)
        a = action_features(model.config, a)[0]                                       # (B, T, action_inputs)
        with autocast(device):
            for n, key in ((1, "val_mse_1step"), (2, "val_mse_2step")):
                out[key].append(few_step_mse(model, x.float(), a, cfg.schedules[n], gen))
    return {k: float(np.mean(v)) for k, v in out.items()}


def save_student(path: Path, model: WorldModel, cfg: DistillConfig, meta: dict[str, str]) -> list[Path]:
    """EMA weights as kind "student"; metadata tells the player/evaluation how to sample it."""
    meta = {**meta, "recipe": "distill", "stage": cfg.stage, "sampler": "consistency", "default_steps": "1",
            "t_mid": repr(cfg.t_mid), "schedules": json.dumps({str(k): v for k, v in cfg.schedules.items()}),
            # the action guidance the student learnt from: the teacher's step (Stage A), the real score (Stage B)
            "teacher_cfg": repr(cfg.cm.teacher_cfg if cfg.stage == "cm" else cfg.dmd.real_cfg)}
    dtype = None if cfg.save_int8 else torch.bfloat16   # int8: quantize from float32, dequantize to float32
    return checkpoint.save(path, model.state_for_save(dtype), kind="student", config=model.config_dict(),
                           meta=meta, quantize_int8=cfg.save_int8)


# ---------------------------------------------------------------------------------------------------------
#                                                 Recipe
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """What the training loop mutates, kept in one place."""
    student: WorldModel
    ema: WorldModel
    teacher: WorldModel
    critic: WorldModel | None
    opts: dict[str, torch.optim.Optimizer]
    step: int = 0              # student updates
    critic_steps: int = 0
    iteration: int = 0         # student + critic updates
    minutes: float = 0.0

    def modules(self) -> dict[str, nn.Module]:
        mods = {"student": self.student, "ema": self.ema}
        return mods if self.critic is None else {**mods, "critic": self.critic}


def keep_blocks(model: WorldModel, layers: Sequence[int]) -> WorldModel:
    """A shallower copy of `model`: the same embeddings and final layer, and only the blocks `layers`, in that
    order. A student that starts from a subset of its teacher's blocks starts near the teacher's function,
    because every block is a residual update."""
    if not layers or any(not 0 <= i < model.config.depth for i in layers):
        raise ValueError(f"student_layers must name blocks 0..{model.config.depth - 1}, got {list(layers)}")
    small = WorldModel(replace(model.config, depth=len(layers))).to(next(model.parameters()).device)
    small.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}, strict=False)
    small.blocks = nn.ModuleList(copy.deepcopy(model.blocks[i]) for i in layers)
    return small


def build(cfg: DistillConfig, device: torch.device, out: Path, resume: bool, init: Path | None, log) -> Run:
    teacher = load_model(cfg.teacher).to(device).eval().requires_grad_(False)
    src = init or (Path(cfg.init) if cfg.init else Path(cfg.teacher))
    student = load_model(src).to(device).train()
    depth = len(cfg.student_layers) or teacher.config.depth
    if cfg.student_layers and student.config.depth != depth:   # not yet cut (an --init student may already be)
        student = keep_blocks(student, cfg.student_layers).train()
        log(f"student keeps blocks {list(cfg.student_layers)} of {src}")
    if student.config_dict() != {**teacher.config_dict(), "depth": depth}:
        raise checkpoint.CheckpointError(f"{src}: another model config than the teacher {cfg.teacher}"
                                         + (f" with depth {depth}" if cfg.student_layers else ""))
    ema = copy.deepcopy(student).requires_grad_(False)
    betas, fused = (cfg.beta1, cfg.beta2), device.type == "cuda"
    opts = {"opt_g": torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay,
                                       fused=fused)}
    critic = None
    if cfg.stage == "dmd":  # the fake score starts as the teacher (Causal-rCM, Self-Forcing)
        critic = copy.deepcopy(teacher).requires_grad_(True).train()
        opts["opt_c"] = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, betas=betas,
                                          weight_decay=cfg.weight_decay, fused=fused)
    run = Run(student, ema, teacher, critic, opts)
    state = out / "train_state.safetensors"
    if resume and (state.exists() or (out / "train_state.index.json").exists()):
        try:
            meta = load_state(state, run.modules(), opts, student.config_dict())
        except RuntimeError:   # the modules of another stage (a cm state has no critic)
            raise checkpoint.CheckpointError(f"{state}: does not fit a stage {cfg.stage!r} run") from None
        if meta.get("stage") != cfg.stage:
            raise checkpoint.CheckpointError(f"{state}: a stage {meta.get('stage')!r} state, this run is {cfg.stage!r}")
        run.step, run.critic_steps = int(meta["step"]), int(meta["critic_steps"])
        run.iteration, run.minutes = int(meta["iteration"]), float(meta["minutes"])
        log(f"resumed from {state} at step {run.step} (iteration {run.iteration}, {run.minutes:.1f} min)")
    else:
        log(f"student initialised from {src}")
    log(f"distill {cfg.stage}: {student.num_params() / 1e6:.2f}M params, device {device}")
    return run


def cm_step(run: Run, loss_fn: ConsistencyLoss, x: Tensor, a: Tensor, cfg: DistillConfig,
            gen: torch.Generator, device: torch.device, nets: tuple[nn.Module, nn.Module] | None = None
            ) -> dict[str, Tensor]:
    """One Stage A update. `nets` = (student, teacher) forwards to call instead, e.g. compiled wrappers that
    share the modules' parameters (the optimizer, EMA and checkpoints keep using the plain modules)."""
    student, teacher = nets or (run.student, run.teacher)
    with autocast(device):
        loss, parts = loss_fn(student, teacher, x.float(), a, gen)
    grad_norm = _update(run.opts["opt_g"], run.student, loss, cfg.grad_clip)
    run.step += 1
    run.iteration += 1
    return {**parts, "grad_norm": grad_norm}


def cycle_plan(iteration: int, cfg: DistillConfig) -> tuple[int, int]:
    """(critic updates left in the cycle that `iteration` is in, denoising steps of its rollouts). The step
    count cycles per cycle, so the generator updates alternate between 1 and 2 steps whatever the ratio."""
    length = cfg.critic_per_generator + 1
    steps = cfg.rollout.steps[(iteration // length) % len(cfg.rollout.steps)]
    return cfg.critic_per_generator - iteration % length, steps


def dmd_cycle(run: Run, loss_fn: DMDLoss, sessions: tuple[Session, Session], feeder: Any, cfg: DistillConfig,
              rng: np.random.Generator, gen: torch.Generator, device: torch.device) -> dict[str, list[Tensor]]:
    """The rest of the current cycle: its critic updates, then one generator update. sessions = (critic's
    at critic_per_generator * batch, generator's at batch). Returns the logged numbers as device tensors
    (no host sync here), one per update."""
    ro, B = cfg.rollout, cfg.batch
    critic_session, gen_session = sessions
    clip = ro.context + ro.frames
    left, steps = cycle_plan(run.iteration, cfg)
    logged: dict[str, list[Tensor]] = {}
    if left:   # one no-grad rollout serves every critic update (a resumed older state may be mid-cycle)
        x, a = feeder.train.sample(cfg.critic_per_generator * B, clip, rng, cfg.move_weight)  # (cpg * B, T, ...)
        critic_session.generator.manual_seed(cfg.seed * 7919 + run.iteration)      # resumable noise stream
        with torch.no_grad():
            clean = rollout(critic_session, x[:, :ro.context], a, steps, cfg.t_mid, grad=False,
                            first_frame_steps=ro.first_frame_steps)                   # (cpg * B, ctx + K, ...)
        for i in range(left):
            sl = slice(i * B, (i + 1) * B)
            _log(logged, critic_update(run, loss_fn, clean[sl], a[sl], cfg, gen, device))
    x, a = feeder.train.sample(B, clip, rng, cfg.move_weight)
    gen_session.generator.manual_seed(cfg.seed * 7919 + run.iteration)
    clean = rollout(gen_session, x[:, :ro.context], a, steps, cfg.t_mid, grad=True,
                    first_frame_steps=ro.first_frame_steps)                           # (B, ctx + K, C, h, w)
    _log(logged, generator_update(run, loss_fn, clean, a, cfg, gen, device))
    return logged


def critic_update(run: Run, loss_fn: DMDLoss, clean: Tensor, a: Tensor, cfg: DistillConfig,
                  gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """Flow matching of the fake score on the student's samples clean (B, ctx + K, ...)."""
    with autocast(device):
        loss, parts = loss_fn.critic(run.critic, clean, action_features(run.critic.config, a)[0], cfg.rollout.frames, gen)
    grad_norm = _update(run.opts["opt_c"], run.critic, loss, cfg.grad_clip)
    run.critic_steps += 1
    run.iteration += 1
    return {**parts, "critic_grad_norm": grad_norm}


def generator_update(run: Run, loss_fn: DMDLoss, clean: Tensor, a: Tensor, cfg: DistillConfig,
                     gen: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """The DMD step on a rollout that carries the student's gradient."""
    run.critic.requires_grad_(False)  # the critic only scores here; gradient goes to the student alone
    with autocast(device):
        loss, parts = loss_fn.generator(run.teacher, run.critic, clean, action_features(run.teacher.config, a)[0],
                                        cfg.rollout.frames, gen)
    run.critic.requires_grad_(True)
    grad_norm = _update(run.opts["opt_g"], run.student, loss, cfg.grad_clip)
    run.step += 1
    run.iteration += 1
    gen_std = clean[:, cfg.rollout.context:].detach().float().std()
    return {**parts, "grad_norm": grad_norm, "gen_std": gen_std}


def _log(logged: dict[str, list[Tensor]], parts: dict[str, Tensor]) -> None:
    for k, v in parts.items():
        logged.setdefault(k, []).append(v.detach())


def _update(opt: torch.optim.Optimizer, model: nn.Module, loss: Tensor, clip: float) -> Tensor:
    """Backward and step; returns the gradient norm as a device tensor (read only when logged: no sync)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    grad_norm = nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.zeros(())
    opt.step()
    return grad_norm.detach()


def main(cfg: DistillConfig, out: Path, resume: bool = False, init: Path | None = None,
         feeder: Any = None) -> dict:
    """Run (or continue) one stage. `feeder` replaces the collector-backed Feeder (tests)."""
    device = _device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    torch.manual_seed(cfg.seed)
    run = build(cfg, device, out, resume, init, log)
    if feeder is None:
        ae = Autoencoder.load(cfg.autoencoder, device=device)
        if tuple(ae.latent_shape) != tuple(run.student.config.latent_shape):
            raise checkpoint.CheckpointError(f"{cfg.autoencoder}: latent {tuple(ae.latent_shape)} does not match "
                                             f"the teacher's {tuple(run.student.config.latent_shape)}")
        feeder = Feeder(cfg.data, ae, device)
    metrics = Metrics(out / "metrics.csv", FIELDS[cfg.stage], resume, tensorboard=out / "tb")
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        feeder.fill(cfg.data.min_fill, log)
        summary = _loop(cfg, run, feeder, metrics, out, device, stop, log)
    finally:
        feeder.close()
        metrics.close()
        signal.signal(signal.SIGTERM, previous)
    _plot(cfg, out)
    return summary


def _loop(cfg: DistillConfig, run: Run, feeder: Any, metrics: Metrics, out: Path, device: torch.device,
          stop: dict, log) -> dict:
    cm_loss, dmd_loss = ConsistencyLoss(cfg.cm), DMDLoss(cfg.dmd)
    nets = (torch.compile(run.student), torch.compile(run.teacher)) if cfg.compile and cfg.stage == "cm" else None
    # A Session keeps its KV cache while the batch size stays (a new size reallocates it): one Session for
    # the critic's batched rollout, one for the generator's, each allocating its cache once.
    sessions = (_session(run, cfg, device, graphs=cfg.rollout.graphs), _session(run, cfg, device)
                ) if cfg.stage == "dmd" else None
    gen = torch.Generator(device=device)
    t_start, minutes0, step0 = time.perf_counter(), run.minutes, run.step
    t_log, step_log, pending = t_start, run.step, {}
    bar = _progress(cfg.steps, run.step)
    while run.step < cfg.steps and not stop["now"]:
        run.minutes = minutes0 + (time.perf_counter() - t_start) / 60
        if cfg.max_minutes and run.minutes - minutes0 >= cfg.max_minutes:
            break
        lr = lr_at(run.step, run.minutes, lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, steps=cfg.steps,
                   max_minutes=cfg.total_minutes)
        _set_lr(run, lr, cfg)
        if run.step % cfg.drain_every == 0:
            feeder.drain(cfg.data.max_chunks_per_step)
        # Streams seeded by the iteration, so a resumed run draws what an uninterrupted one would.
        rng = np.random.default_rng([cfg.seed, run.iteration])
        gen.manual_seed(cfg.seed * 104729 + run.iteration)
        if cfg.stage == "cm":
            x, a = feeder.train.sample(cfg.batch, cfg.clip_len, rng, cfg.move_weight)  # (B, T, C, h, w), (B, T, A)
            a = action_features(run.teacher.config, a)[0]                              # (B, T, action_inputs)
            parts = {k: [v] for k, v in cm_step(run, cm_loss, x, a, cfg, gen, device, nets).items()}
        else:
            parts = dmd_cycle(run, dmd_loss, sessions, feeder, cfg, rng, gen, device)
        for k, v in parts.items():
            pending.setdefault(k, []).extend(v)
        ema_update(run.ema, run.student, cfg.ema if run.step > cfg.ema_start else 0.0)
        bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == cfg.steps:
            now = time.perf_counter()
            row = {"step": run.step, "critic_steps": run.critic_steps, "lr": lr, "critic_lr": lr * _critic_ratio(cfg),
                   "minutes": run.minutes, "frames": feeder.frames, "buffer": len(feeder.train),
                   "steps_per_s": (run.step - step_log) / max(1e-9, now - t_log),
                   **{k: float(torch.stack(v).float().mean()) for k, v in pending.items()}}   # host reads here only
            t_log, step_log, pending = now, run.step, {}
            if run.step % cfg.eval_every == 0:
                row.update(validate(run.ema, feeder, cfg, device))
            metrics.write(row)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "loss_gen", "loss_critic") if k in row})
        if run.step % cfg.save_every == 0:
            _save(run, cfg, out)
    bar.close()
    run.minutes = minutes0 + (time.perf_counter() - t_start) / 60
    _save(run, cfg, out)
    summary = {"stage": cfg.stage, "step": run.step, "critic_steps": run.critic_steps, "iteration": run.iteration,
               "minutes": round(run.minutes, 2), "steps_this_run": run.step - step0,
               "params": run.student.num_params(), "frames_collected": feeder.frames,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "schedules": cfg.schedules, **validate(run.ema, feeder, cfg, device),
               **{f"teacher_{k}": v for k, v in validate(run.teacher, feeder, cfg, device).items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"distill {cfg.stage}: step {run.step}, {run.minutes:.1f} min, held-out 1-step mse "
        f"{summary['val_mse_1step']:.4f} (teacher {summary['teacher_val_mse_1step']:.4f}), 2-step "
        f"{summary['val_mse_2step']:.4f} -> {out / 'student.safetensors'}")
    return summary


def _session(run: Run, cfg: DistillConfig, device: torch.device, graphs: bool = False) -> Session:
    ro = cfg.rollout
    kw = dict(window=ro.context + ro.frames, sink=min(ro.sink, ro.context), device=device,
              dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, seed=cfg.seed,
              sampler=SamplerConfig(kind="consistency", t_mid=cfg.t_mid), check_finite=False)
    if graphs and device.type == "cuda":
        return GraphedSession(run.student, capture=True, **kw)
    return Session(run.student, **kw)


def _critic_ratio(cfg: DistillConfig) -> float:
    return cfg.critic_lr / cfg.lr if cfg.lr > 0 else 0.0


def _set_lr(run: Run, lr: float, cfg: DistillConfig) -> None:
    """The critic follows the generator's warm-up and cosine at its own scale (critic_lr / lr)."""
    for name, opt in run.opts.items():
        for g in opt.param_groups:
            g["lr"] = lr if name == "opt_g" else lr * _critic_ratio(cfg)


def _save(run: Run, cfg: DistillConfig, out: Path) -> None:
    meta = {"step": str(run.step), "critic_steps": str(run.critic_steps), "iteration": str(run.iteration),
            "minutes": f"{run.minutes:.3f}", "stage": cfg.stage}
    save_state(out / "train_state.safetensors", run.modules(), run.opts, config=run.student.config_dict(), meta=meta)
    save_student(out / "student.safetensors", run.ema, cfg, {**meta, "teacher": cfg.teacher})


def _plot(cfg: DistillConfig, out: Path) -> None:
    if cfg.stage == "cm":
        panels = {"consistency loss": (["loss"], True), "held-out TF next-frame latent MSE (EMA)":
                  (["val_mse_1step", "val_mse_2step"], False), "throughput (steps/s)": (["steps_per_s"], False)}
    else:
        panels = {"DMD losses": (["loss_gen", "loss_critic"], True),
                  "DMD gradient": (["dmd_grad", "real_fake_gap", "gen_std"], False),
                  "held-out TF next-frame latent MSE (EMA)": (["val_mse_1step", "val_mse_2step"], False)}
    plot_csv(out / "metrics.csv", out / "metrics.png", panels, title=f"distill {cfg.stage}")


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _progress(total: int, initial: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, dynamic_ncols=True, file=sys.stderr, mininterval=5.0)


def cli(argv: list[str] | None = None) -> int:
    return recipe_cli(argv, __doc__, DistillConfig, lambda cfg, a: main(cfg, a.out, resume=a.resume, init=a.init),
                      init_help="student weights to start from (default: settings init, else the teacher)")


if __name__ == "__main__":
    sys.exit(cli())
