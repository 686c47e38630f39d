"""Re-save a world-model checkpoint with int8 weights, and measure what int8 changes.

    python -m world_model.recipes.quantize assets/checkpoints/teacher.safetensors --out out/teacher-int8.safetensors \
        [--compare assets/traces/heldout-10001.jsonl --ticks 24 --steps 4]

int8: every floating weight with 2+ dims is stored as int8 with one float32 scale per output channel
(checkpoint.save quantize_int8=True), quantized from the weights as loaded (float32 holding the stored bf16
values) and dequantized to float32 at load. Biases, norms and the null action stay float32. About half the
size of bf16: the 40 MiB budget of tracked model files then holds the autoencoder, the teacher and a student.

--compare plays a held-out trace on the real game, encodes its frames with the autoencoder and reports, for
the original weights against the int8 ones:
  - velocity: relative MSE of v over packed teacher-forcing clips at several noise levels,
    mean (v_int8 - v)^2 / mean v^2;
  - rollout: PSNR between the two models' decoded frames over a short autoregressive rollout from the same
    seed frames and noise (Session, `steps` denoising steps), next to each model's PSNR against the game.
Writes the numbers as JSON to stdout (and --json FILE).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from world_model import checkpoint, metrics
from world_model.autoencoder import Autoencoder, frames_to_model
from world_model.distill_losses import packed_velocity
from world_model.game import Game
from world_model.model import WorldModel, action_features, load_model
from world_model.rollout import Session
from world_model.sampler import SamplerConfig
from world_model.trace import load as load_trace


def save_int8(src: Path, dst: Path) -> list[Path]:
    """Copy checkpoint `src` (any model kind) to `dst` with int8 weights; kind, config and meta are kept."""
    tensors, config, meta = checkpoint.load(src)
    model = WorldModel.from_tensors(config, tensors)
    user = {k: v for k, v in meta.items() if k not in ("format_version", "kind", "actions", "content_hash")}
    return checkpoint.save(dst, model.state_for_save(None), kind=meta["kind"], config=config,
                           meta={**user, "int8_from": str(src)}, quantize_int8=True)


def real_clip(trace_path: Path, ae: Autoencoder, ticks: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The first `ticks` frames of a trace played on the game: uint8 (T, H, W, 3), latents (T, C, h, w),
    actions (T, 5)."""
    trace = load_trace(trace_path)
    with Game() as game:
        game.reset(trace.seed)
        frames = np.stack([game.step(a) for a in trace.actions[:ticks]])
    actions = torch.tensor([a.to_list() for a in trace.actions[:ticks]], dtype=torch.float32)
    with torch.no_grad():
        z = ae.encode(frames_to_model(torch.from_numpy(frames))).float()
    return frames, z, actions


@torch.no_grad()
def compare(ref: WorldModel, q: WorldModel, ae: Autoencoder, frames: np.ndarray, z: torch.Tensor,
            actions: torch.Tensor, steps: int, context: int = 8) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x0, a = z[None], action_features(ref.config, actions[None])[0]               # (1, T, C, h, w), (1, T, A')
    rel = {}
    for t in (0.1, 0.5, 0.9, 1.0):
        eps = torch.randn(x0.shape, generator=g)
        xt = (1 - t) * x0 + t * eps
        tt = torch.full(x0.shape[:2], t)
        v, vq = packed_velocity(ref, x0, xt, tt, a), packed_velocity(q, x0, xt, tt, a)
        rel[f"velocity_rel_mse_t{t}"] = float((vq - v).pow(2).mean() / v.pow(2).mean())
    out = {**rel, "velocity_rel_mse": float(np.mean(list(rel.values())))}
    decoded = []
    for model in (ref, q):
        s = Session(model, window=32, sink=1, device="cpu", seed=0, autoencoder=ae, sampler=SamplerConfig())
        s.reset(z[None, :context], actions[None, :context])
        decoded.append(torch.cat([s.decode(s.step(actions[None, i], steps=steps)) for i in range(context, len(z))]))
    game = torch.from_numpy(frames[context:])
    out["rollout_frames"] = len(game)
    out["rollout_psnr_int8_vs_ref_db"] = float(metrics.psnr(decoded[1], decoded[0]).mean())
    out["rollout_psnr_int8_vs_ref_min_db"] = float(metrics.psnr(decoded[1], decoded[0]).min())
    out["rollout_psnr_ref_vs_game_db"] = float(metrics.psnr(decoded[0], game).mean())
    out["rollout_psnr_int8_vs_game_db"] = float(metrics.psnr(decoded[1], game).mean())
    return out


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compare", type=Path, help="a trace (.jsonl) to measure int8 against the original on")
    p.add_argument("--autoencoder", type=Path, default=Path("assets/checkpoints/autoencoder.safetensors"))
    p.add_argument("--ticks", type=int, default=24)
    p.add_argument("--steps", type=int, default=4, help="teacher Euler steps per frame in the rollout")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    try:
        written = save_int8(args.checkpoint, args.out)
        sizes = {"ref_bytes": _size(args.checkpoint), "int8_bytes": sum(f.stat().st_size for f in written)}
        result: dict = {"int8": [str(f) for f in written], **sizes}
        if args.compare:
            ae = Autoencoder.load(args.autoencoder)
            frames, z, actions = real_clip(args.compare, ae, args.ticks)
            result.update(compare(load_model(args.checkpoint).eval(), load_model(args.out).eval(), ae, frames, z,
                                  actions, args.steps))
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


def _size(path: Path) -> int:
    index = path.with_name(path.name.removesuffix(".safetensors") + ".index.json")
    if not path.exists() and index.exists():
        shards = json.loads(index.read_text())["shards"]
        return index.stat().st_size + sum((path.parent / s["file"]).stat().st_size for s in shards)
    return path.stat().st_size


if __name__ == "__main__":
    sys.exit(cli())
