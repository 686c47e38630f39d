"""Train the per-frame autoencoder on frames streamed from the game.

    python -m world_model.recipes.train_autoencoder settings/train/autoencoder.yaml --out runs/ae [--resume]
        [--set max_minutes=6 --set model.latent_channels=32]

Data: a background thread pulls chunks from the parallel collector (or, with data.source=game, from
in-process games playing random actions) into a host-memory pool of frames; training samples random
batches from it while it keeps being refreshed. Chunks of the first `data.heldout_workers` workers
never enter the pool: those workers play other seeds (and, with the collector's policy mix, other
play styles), and a reservoir sample of their frames is the held-out set for PSNR.

Loss (no pretrained perceptual nets can be used here):
  * L1 on pixels -- the median-seeking loss; unlike L2 it does not average ambiguous detail into blur.
  * L1 on horizontal and vertical image gradients -- blur shrinks gradients, so this term charges
    for every softened edge and lost texture step, which is exactly what 8x compression tends to
    lose on Doom's pixel-art textures. It is the cheapest stand-in for a perceptual sharpness loss.
  * a small MSE term, because the target metric (PSNR) is MSE.
  * latent L2 and latent noise (see world_model/autoencoder.py).

Outputs under --out: metrics.csv, metrics.png, train_state*.safetensors (resume), autoencoder.safetensors
(EMA weights, latent scale set), summary.json. A time limit (`max_minutes`) or Ctrl-C stops cleanly and saves.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import yaml

import settings
from world_model import checkpoint
from world_model.actions import Action
from world_model.autoencoder import Autoencoder, AutoencoderConfig, frames_to_model, psnr
from world_model.collect import CollectConfig, Collector
from world_model.recipes.common import Metrics, ema_update, load_state, lr_at, parse_overrides, save_state


@dataclass(frozen=True)
class DataConfig:
    source: Literal["collector", "game"] = "collector"   # game: in-process random play (tests, no collector)
    seed: int = 0
    collect: CollectConfig = CollectConfig(workers=12)
    game_workers: int = field(default=2, metadata={"min": 2})   # source=game: number of in-process games
    heldout_workers: int = field(default=1, metadata={"min": 1})
    heldout_frames: int = field(default=512, metadata={"min": 1})
    pool_frames: int = field(default=50_000, metadata={"min": 16})
    min_fill: int = field(default=5_000, metadata={"min": 1})       # pool frames before training starts
    keep_every: int = field(default=2, metadata={"min": 1})         # neighbouring ticks are near duplicates
    max_fps: float = field(default=0.0, metadata={"min": 0.0})      # cap on frames read once filled; 0: none


@dataclass(frozen=True)
class LossConfig:
    l1: float = field(default=1.0, metadata={"min": 0.0})
    grad: float = field(default=0.5, metadata={"min": 0.0})
    mse: float = field(default=1.0, metadata={"min": 0.0})
    latent_l2: float = field(default=1e-4, metadata={"min": 0.0})
    latent_noise: float = field(default=0.05, metadata={"min": 0.0})   # times the batch latent std


@dataclass(frozen=True)
class TrainConfig:
    model: AutoencoderConfig = AutoencoderConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    batch: int = field(default=64, metadata={"min": 1})
    steps: int = field(default=20_000, metadata={"min": 1})
    max_minutes: float = field(default=0.0, metadata={"min": 0.0})   # total training time; 0: no limit
    lr: float = field(default=1e-3, metadata={"min": 0.0, "max": 1.0})
    min_lr: float = field(default=5e-5, metadata={"min": 0.0, "max": 1.0})
    warmup: int = field(default=300, metadata={"min": 0})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})
    ema: float = field(default=0.999, metadata={"min": 0.0, "max": 1.0})   # 0: no EMA
    eval_every: int = field(default=1000, metadata={"min": 1})
    save_every: int = field(default=2000, metadata={"min": 1})
    log_every: int = field(default=50, metadata={"min": 1})
    seed: int = 0
    device: Literal["auto", "cuda", "cpu"] = "auto"
    compile: bool = False
    timing_iters: int = field(default=200, metadata={"min": 1})


# ------------------------------------------------------------------------------------------------
# Data: a frame stream feeding a pool (training) and a reservoir (held out)
# ------------------------------------------------------------------------------------------------

Stream = Iterator[tuple[np.ndarray, int]]   # (frames uint8 (N, H, W, 3), worker index)


def collector_stream(data: DataConfig) -> Stream:
    with Collector(data.collect, seed=data.seed) as col:
        for chunk in col:
            yield chunk.frames, chunk.worker


def game_stream(data: DataConfig, height: int, width: int, chunk: int = 64) -> Stream:
    """In-process games with sticky random actions: no subprocesses, for tests and machines without the collector."""
    from world_model.game import Game, GameConfig

    games = [Game(GameConfig(width=width, height=height)) for _ in range(data.game_workers)]
    rng = np.random.default_rng(data.seed)
    try:
        frames = [g.reset(data.seed * 100_003 + w) for w, g in enumerate(games)]
        while True:
            for w, g in enumerate(games):
                out = np.empty((chunk, height, width, 3), np.uint8)
                for i in range(chunk):
                    if i % 8 == 0:   # hold an action for 8 ticks, like a person would
                        action = Action(forward=float(rng.uniform(-0.3, 1)), strafe=float(rng.uniform(-0.5, 0.5)),
                                        turn=float(rng.uniform(-1, 1)), use=int(rng.random() < 0.1))
                    out[i] = frames[w] = g.step(action)
                yield out, w
    finally:
        for g in games:
            g.close()


class FramePool:
    """Training frames in host memory. Fills in order, then new frames overwrite random slots, so
    older frames survive with geometrically decaying odds (more variety than a plain ring)."""

    def __init__(self, capacity: int, shape: tuple[int, int, int], seed: int):
        self.frames = np.zeros((capacity, *shape), np.uint8)
        self.size = 0
        self.added = 0
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()

    def add(self, frames: np.ndarray) -> None:
        with self.lock:
            for f in frames:
                if self.size < len(self.frames):
                    self.frames[self.size] = f
                    self.size += 1
                else:
                    self.frames[self.rng.integers(len(self.frames))] = f
            self.added += len(frames)

    def sample(self, n: int) -> np.ndarray:
        with self.lock:
            return self.frames[self.rng.integers(0, self.size, n)]   # (n, H, W, 3), a copy


class Reservoir(FramePool):
    """Uniform sample of every frame ever offered (Vitter's algorithm R): the held-out set."""

    def add(self, frames: np.ndarray) -> None:
        with self.lock:
            for f in frames:
                self.added += 1
                if self.size < len(self.frames):
                    self.frames[self.size] = f
                    self.size += 1
                elif (j := self.rng.integers(self.added)) < len(self.frames):
                    self.frames[j] = f

    def snapshot(self) -> np.ndarray:
        with self.lock:
            return self.frames[: self.size].copy()


class Feeder(threading.Thread):
    """Background thread: stream -> pool / reservoir, until stopped."""

    def __init__(self, stream: Stream, pool: FramePool, heldout: Reservoir, data: DataConfig):
        super().__init__(daemon=True)
        self.stream, self.pool, self.heldout, self.data = stream, pool, heldout, data
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        t0, seen = time.perf_counter(), 0
        try:
            for frames, worker in self.stream:
                if self.stop.is_set():
                    break
                kept = frames[:: self.data.keep_every]
                (self.heldout if worker < self.data.heldout_workers else self.pool).add(kept)
                seen += len(frames)
                # An in-process source would otherwise take the GIL from the training loop.
                if self.data.max_fps and self.pool.size >= self.data.min_fill:
                    time.sleep(max(0.0, seen / self.data.max_fps - (time.perf_counter() - t0)))
        except BaseException as e:   # reported by the training loop
            self.error = e
        finally:
            self.stream.close()

    def wait_for(self, frames: int, heldout: int) -> None:
        with _progress(total=frames, desc="filling pool") as bar:
            while self.pool.size < frames or self.heldout.size < heldout:
                if self.error is not None:
                    raise RuntimeError(f"frame source failed: {self.error}")
                bar.n = self.pool.size
                bar.refresh()
                time.sleep(0.2)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _progress(**kw):
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, file=sys.stderr, **kw)


# ------------------------------------------------------------------------------------------------
# Loss, schedule, EMA
# ------------------------------------------------------------------------------------------------

def ae_loss(model: Autoencoder, x: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x (B, 3, H, W) in [-1, 1] -> (total loss, detached parts). No .item() here: no sync per step."""
    z = model.encode_raw(x)                                                   # (B, C, h, w)
    noisy = z + cfg.latent_noise * z.detach().float().std() * torch.randn_like(z)
    y = model.decoder(noisy).float()                                          # (B, 3, H, W)
    l1 = (y - x).abs().mean()
    mse = (y - x).pow(2).mean()
    gx = ((y[..., :, 1:] - y[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])).abs().mean()
    gy = ((y[..., 1:, :] - y[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean()
    zl2 = z.float().pow(2).mean()
    total = cfg.l1 * l1 + cfg.grad * (gx + gy) + cfg.mse * mse + cfg.latent_l2 * zl2
    parts = {"l1": l1, "grad": gx + gy, "mse": mse, "latent_l2": zl2}
    parts = {k: v.detach() for k, v in parts.items()}
    return total, parts


def lr_for(cfg: TrainConfig, step: int, minutes: float) -> float:
    return lr_at(step, minutes, lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup, steps=cfg.steps,
                 max_minutes=cfg.max_minutes)


# ------------------------------------------------------------------------------------------------
# Evaluation and timing
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: Autoencoder, frames: np.ndarray, device: torch.device, dtype: torch.dtype | None,
             batch: int = 64) -> float:
    """Mean per-frame PSNR (dB) of encode -> decode over uint8 frames (N, H, W, 3)."""
    model.eval()
    scores = []
    for i in range(0, len(frames), batch):
        x = frames_to_model(torch.from_numpy(frames[i:i + batch]).to(device))   # (B, 3, H, W)
        with _autocast(device, dtype):
            y = model.decode(model.encode(x))
        scores.append(psnr(y, x))
    model.train()
    return torch.cat(scores).mean().item()


@torch.no_grad()
def latent_std(model: Autoencoder, pool: FramePool, device: torch.device, batches: int = 8) -> float:
    model.eval()
    zs = [model.encode_raw(frames_to_model(torch.from_numpy(pool.sample(32)).to(device))).float() for _ in range(batches)]
    model.train()
    return torch.cat(zs).std().item()


@torch.inference_mode()
def time_decode(model: Autoencoder, device: torch.device, iters: int) -> dict[str, float]:
    """Median ms to decode one frame to uint8 (B=1). CUDA: bf16 weights, CUDA events; also with a CUDA graph."""
    if device.type != "cuda":
        dec = copy.deepcopy(model).float().eval()
        z = torch.randn(1, *dec.latent_shape)
        for _ in range(3):
            dec.decode_uint8(z)
        times = []
        for _ in range(max(3, iters // 10)):
            t0 = time.perf_counter()
            dec.decode_uint8(z)
            times.append((time.perf_counter() - t0) * 1e3)
        return {"decode_ms": float(np.median(times))}
    dec = copy.deepcopy(model).to(torch.bfloat16).eval()
    z = torch.randn(1, *dec.latent_shape, device=device, dtype=torch.bfloat16)
    out = {"decode_ms": _cuda_median(lambda: dec.decode_uint8(z), iters)}
    try:
        for _ in range(3):
            dec.decode_uint8(z)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            dec.decode_uint8(z)
        out["decode_ms_cuda_graph"] = _cuda_median(graph.replay, iters)
    except RuntimeError as e:   # informational only
        print(f"cuda graph timing skipped: {e}", file=sys.stderr)
    return out


def _cuda_median(fn: Callable[[], object], iters: int) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


# ------------------------------------------------------------------------------------------------
# Train state (resume)
# ------------------------------------------------------------------------------------------------

def _modules(model: Autoencoder, ema: Autoencoder | None) -> dict[str, torch.nn.Module]:
    return {"model": model} if ema is None else {"model": model, "ema": ema}


def _config(model: Autoencoder) -> dict:
    return json.loads(json.dumps(asdict(model.config)))


def save_ae_state(path: Path, model: Autoencoder, ema: Autoencoder | None, opt: torch.optim.Optimizer,
                  step: int, minutes: float) -> None:
    save_state(path, _modules(model, ema), opt, config=model.config,
               meta={"step": str(step), "minutes": f"{minutes:.4f}"})


def load_ae_state(path: Path, model: Autoencoder, ema: Autoencoder | None, opt: torch.optim.Optimizer
                  ) -> tuple[int, float]:
    """Restore in place; returns (step, minutes trained). CheckpointError if it does not fit."""
    meta = load_state(path, _modules(model, ema), opt, _config(model))
    return int(meta["step"]), float(meta["minutes"])


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------

FIELDS = ("step", "loss", "l1", "grad", "mse", "latent_l2", "psnr", "lr", "minutes", "frames_seen")


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "l1", "grad"):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r[key]]
        if pts:
            a.plot(*zip(*pts), label=key)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_title("training loss")
    if a.lines:
        a.legend()
    pts = [(int(r["step"]), float(r["psnr"])) for r in rows if r["psnr"]]
    if pts:
        b.plot(*zip(*pts), marker="o", label="EMA model")
    b.axhline(32, color="gray", linestyle="--", label="target 32 dB")
    b.set_xlabel("step")
    b.set_ylabel("dB")
    b.set_title("held-out PSNR")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def main(cfg: TrainConfig, out: Path, resume: bool = False, stream: Stream | None = None) -> dict:
    """Train, save, evaluate; returns the summary. `stream` replaces the configured frame source."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if cfg.device == "cuda" or cfg.device == "auto" and torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None   # bf16 autocast on CUDA only
    (out / "config.yaml").write_text(yaml.safe_dump(settings.to_dict(cfg), sort_keys=False))

    model = Autoencoder(cfg.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    state_path = out / "train_state.safetensors"
    step, minutes = 0, 0.0
    if resume and (state_path.exists() or (out / "train_state.index.json").exists()):
        step, minutes = load_ae_state(state_path, model, ema, opt)
        print(f"resumed from {state_path} at step {step} ({minutes:.1f} min trained)", file=sys.stderr)
    step_fn = torch.compile(ae_loss) if cfg.compile else ae_loss

    data = cfg.data
    shape = (cfg.model.height, cfg.model.width, 3)
    pool = FramePool(data.pool_frames, shape, cfg.seed)
    heldout = Reservoir(data.heldout_frames, shape, cfg.seed + 1)
    if stream is None:
        stream = collector_stream(data) if data.source == "collector" else game_stream(data, *shape[:2])
    feeder = Feeder(stream, pool, heldout, data)
    feeder.start()
    metrics = Metrics(out / "metrics.csv", FIELDS, resume)
    try:
        feeder.wait_for(min(data.min_fill, data.pool_frames), min(data.heldout_frames, 64))
        step, minutes = _train(cfg, model, ema, opt, step_fn, pool, heldout, feeder, metrics, device, amp,
                               step, minutes, state_path)
    finally:
        feeder.stop.set()
        metrics.close()
    feeder.join(timeout=30)   # frees the CPU for the final evaluation and timing
    return _finish(cfg, out, model, ema, pool, heldout, device, amp, step, minutes)


def _train(cfg, model, ema, opt, step_fn, pool, heldout, feeder, metrics, device, amp, step, minutes, state_path):
    """The loop; returns (step, minutes). Stops at cfg.steps, cfg.max_minutes or Ctrl-C, after saving."""
    model.train()
    t_start = time.perf_counter() - minutes * 60
    bar = _progress(total=cfg.steps, initial=step, desc="autoencoder")
    try:
        while step < cfg.steps and not (cfg.max_minutes and minutes >= cfg.max_minutes):
            if feeder.error is not None:
                raise RuntimeError(f"frame source failed: {feeder.error}")
            lr = lr_for(cfg, step, minutes)
            for g in opt.param_groups:
                g["lr"] = lr
            frames = torch.from_numpy(pool.sample(cfg.batch))
            if device.type == "cuda":
                frames = frames.pin_memory().to(device, non_blocking=True)
            x = frames_to_model(frames)                                           # (B, 3, H, W)
            with _autocast(device, amp):
                loss, parts = step_fn(model, x, cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if ema is not None:
                ema_update(ema, model, min(cfg.ema, (1 + step) / (10 + step)))   # warm-up: no bias to the init
            step += 1
            minutes = (time.perf_counter() - t_start) / 60
            bar.update(1)
            row = None
            if step % cfg.log_every == 0:
                row = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}, "lr": lr,
                       "minutes": minutes,
                       "frames_seen": pool.added}
            if step % cfg.eval_every == 0:
                row = row or {"step": step, "lr": lr, "minutes": minutes, "frames_seen": pool.added}
                row["psnr"] = evaluate(ema or model, heldout.snapshot(), device, amp)
                bar.set_postfix(psnr=f"{row['psnr']:.2f}", loss=f"{loss.item():.4f}")
            if row:
                metrics.write(row)
            if step % cfg.save_every == 0:
                save_ae_state(state_path, model, ema, opt, step, minutes)
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {step}; saving", file=sys.stderr)
    finally:
        bar.close()
    save_ae_state(state_path, model, ema, opt, step, minutes)
    return step, minutes


def _finish(cfg, out, model, ema, pool, heldout, device, amp, step, minutes) -> dict:
    """Set the latent scale, save the final model, evaluate, time decoding, plot, write the summary."""
    final = copy.deepcopy(ema or model).eval()
    final.scale.fill_(1.0 / max(latent_std(final, pool, device), 1e-6))
    final.save(out / "autoencoder.safetensors", meta={"step": str(step), "minutes": f"{minutes:.2f}"})
    frames = heldout.snapshot()
    summary = {
        "step": step,
        "minutes": round(minutes, 3),
        "psnr": evaluate(final, frames, device, None),
        "psnr_bf16": evaluate(final, frames, device, amp) if amp is not None else None,
        "heldout_frames": len(frames),
        "params": sum(p.numel() for p in final.parameters()),
        "decoder_params": sum(p.numel() for p in final.decoder.parameters()),
        "latent_shape": list(final.latent_shape),
        "latent_scale": final.scale.item(),
        "frames_seen": pool.added + heldout.added,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        **time_decode(final, device, cfg.timing_iters),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(out)
    print(f"autoencoder: held-out PSNR {summary['psnr']:.2f} dB, decode {summary['decode_ms']:.3f} ms/frame "
          f"({summary['device']}), {summary['params'] / 1e6:.2f}M params, latent {tuple(summary['latent_shape'])}, "
          f"step {step}, {minutes:.1f} min -> {out / 'autoencoder.safetensors'}")
    return summary


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from --out/train_state.safetensors")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)   # a killed job saves like Ctrl-C does
    try:
        cfg = settings.load(args.config, TrainConfig, parse_overrides(args.set))
        main(cfg, args.out, resume=args.resume)
    except (settings.SettingsError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
