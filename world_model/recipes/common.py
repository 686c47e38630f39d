"""Pieces every training recipe shares: schedule, EMA, resumable state, metrics CSV and plots, CLI overrides."""
from __future__ import annotations

import contextlib
import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import yaml
from torch import nn

import settings
from world_model import checkpoint


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA only: CPU runs stay in float32 so tests compare exactly."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(step: int, minutes: float, *, lr: float, min_lr: float, warmup: int, steps: int,
          max_minutes: float) -> float:
    """Linear warm-up, then cosine to min_lr over whichever runs out first: steps or minutes."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    if max_minutes > 0:
        progress = max(progress, minutes / max_minutes)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


Optimizers = torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer]


def _named(opt: Optimizers) -> Mapping[str, torch.optim.Optimizer]:
    """One optimizer is stored under the name "opt"; several (e.g. generator and critic) under their own."""
    return {"opt": opt} if isinstance(opt, torch.optim.Optimizer) else opt


def save_state(path: Path, modules: Mapping[str, nn.Module], opt: Optimizers, *, config: Any,
               meta: Mapping[str, str]) -> None:
    """Everything needed to resume (weights, EMA, optimizer moments) as one kind="train_state" checkpoint.
    `opt` is one optimizer or a {name: optimizer} mapping whose names differ from the module names."""
    tensors = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    for name, o in _named(opt).items():
        for i, state in o.state_dict()["state"].items():
            tensors.update({f"{name}.{i}.{k}": torch.as_tensor(v) for k, v in state.items()})
    checkpoint.save(path, tensors, kind="train_state", config=config, meta=dict(meta))


def load_state(path: Path, modules: Mapping[str, nn.Module], opt: Optimizers,
               config: Mapping[str, Any]) -> dict[str, str]:
    """Restore in place and return the metadata; CheckpointError if it was written for another config."""
    tensors, stored, meta = checkpoint.load(path, kind="train_state")
    if stored != config:
        raise checkpoint.CheckpointError(f"{path}: was trained with another model config")
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    for name, o in _named(opt).items():
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith(name + "."):
                _, i, key = k.split(".", 2)
                state.setdefault(int(i), {})[key] = v
        o.load_state_dict({"state": state, "param_groups": o.state_dict()["param_groups"]})
    return meta


class Metrics:
    """Append-only CSV (resume keeps the earlier rows) plus optional TensorBoard scalars."""

    def __init__(self, path: Path, fields: Iterable[str], resume: bool, tensorboard: Path | None = None):
        self.path = path
        self.fields = list(fields)
        fresh = not (resume and path.exists())
        self.file = open(path, "w" if fresh else "a", newline="")
        self.writer = csv.DictWriter(self.file, self.fields, extrasaction="ignore")
        if fresh:
            self.writer.writeheader()
        self.tb = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(tensorboard))
            except ImportError:   # tensorboard is optional on the GPU machine
                self.tb = None

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def plot_csv(csv_path: Path, png_path: Path, panels: Mapping[str, tuple[list[str], bool]], title: str = "") -> None:
    """One panel per entry: name -> (columns, log scale). Empty cells are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (name, (cols, log)) in zip(axes[0], panels.items()):
        for col in cols:
            pts = [(int(r["step"]), float(r[col])) for r in rows if r.get(col)]
            if pts:
                ax.plot(*zip(*pts), label=col, marker="o" if len(pts) < 30 else None)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def write_json(path: str | Path | None, report: Mapping[str, Any]) -> None:
    """Write a measurement report as indented JSON (parent folders made); no path, no file."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs (VALUE parsed as YAML) -> {dotted key: value}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise settings.SettingsError(f"--set {pair!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def recipe_cli(argv: list[str] | None, doc: str, config_cls: type, run, *, init_help: str,
               extra=None) -> int:
    """The command line shared by the model recipes: CONFIG --out DIR [--resume] [--init PATH] [--set K=V].
    `run(cfg, args)` does the work; settings and checkpoint problems print one line and return 1."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors if present")
    p.add_argument("--init", type=Path, help=init_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    try:
        run(settings.load(args.config, config_cls, parse_overrides(args.set)), args)
    except (settings.SettingsError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def timing_parser(doc: str, *, ticks: int, warmup: int, cpu_note: str, teacher: bool = False) -> "argparse.ArgumentParser":
    """The command line of the timing recipes (tick_host, profile_tick): the shipped checkpoints, tick counts,
    the device (cpu only checks the script: `cpu_note` says how it runs there) and a JSON file."""
    import argparse

    ckpt = Path(__file__).resolve().parents[2] / "assets" / "checkpoints"
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ckpt / "student.safetensors"))
    if teacher:
        p.add_argument("--teacher", default=str(ckpt / "teacher.safetensors"))
    p.add_argument("--autoencoder", default=str(ckpt / "autoencoder.safetensors"))
    p.add_argument("--ticks", type=int, default=ticks)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--device", default="cuda", help=f"cuda, or cpu ({cpu_note}: to check the script)")
    p.add_argument("--json")
    return p


def player_session(model: nn.Module, autoencoder: nn.Module, device: str, sampler: Any, *,
                   cpu_graphed: bool = False, seed: int = 0) -> Any:
    """A Session as the player builds it, seeded with 8 random latents (play.yaml: window 14 + sink 1,
    context 8): on CUDA bf16 weights, CUDA graphs and fused re-encode (runtime.make_session); on the CPU
    float32, eager, or with cpu_graphed the graphs' functions uncaptured. For the timing recipes."""
    from world_model.graphs import GraphedSession
    from world_model.runtime import RuntimeConfig, cast_for_inference, make_session

    rt = RuntimeConfig()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    m, a = cast_for_inference(model, autoencoder, runtime=rt, device=device, dtype=dtype)
    kw = dict(window=14, sink=1, device=device, dtype=dtype, seed=seed, autoencoder=a, sampler=sampler)
    session = (GraphedSession(m, capture=False, fuse_reencode=rt.fuse_reencode, **kw)
               if cpu_graphed and device != "cuda" else make_session(m, runtime=rt, **kw))
    g = torch.Generator().manual_seed(seed)
    session.reset(torch.randn(1, 8, *model.config.latent_shape, generator=g), torch.zeros(1, 8, 5))
    return session

