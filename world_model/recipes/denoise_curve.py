"""How well a teacher denoises at each noise level: teacher-forced clips of a trace, one fixed t at a time.

    python -m world_model.recipes.denoise_curve MODEL [MODEL ...] --trace assets/traces/heldout-10001.jsonl

For every t it prints the velocity MSE and the clean-frame MSE |x0_hat - x0|^2 (x0_hat = x_t - t v) in
unit-std latents, over 16-tick clips of the game's frames (clean context, all frames noised at t, the same
noise for every model). Why: the training log's held-out MSE is one number over the sampled t, and a model
can lose the middle of the range, where its samples get their detail, while the ends hide it (session 14's
fork-pair teacher, docs/EVALUATION.md). CPU is enough: a few clips, one pass per t.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from world_model.autoencoder import Autoencoder, frames_to_model
from world_model.game import Game, GameConfig
from world_model.model import WorldModel, action_features, load_model, teacher_forcing_mask
from world_model.recipes.evaluate import play_trace
from world_model.trace import load as load_trace

TIMES = (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


@torch.no_grad()
def curve(model: WorldModel, x0: torch.Tensor, actions: torch.Tensor, times: Sequence[float] = TIMES,
          seed: int = 0) -> list[dict[str, float]]:
    """x0 (B, T, C, h, w) clean latents, actions (B, T, 5) -> per t: velocity and clean-frame MSE."""
    B, T = x0.shape[:2]
    a = action_features(model.config, actions)[0]
    rows = []
    for t in times:
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
        xt = (1 - t) * x0 + t * eps
        packed = torch.cat([x0, xt], 1)                                                 # (B, 2T, C, h, w)
        t_packed = torch.cat([torch.zeros(B, T), torch.full((B, T), float(t))], 1).to(x0.device)
        keep = torch.ones((B, 2 * T), dtype=torch.bool, device=x0.device)
        v = model(packed, t_packed, a.repeat(1, 2, 1), keep, frame_pos=torch.arange(T, device=x0.device).repeat(2),
                  mask=teacher_forcing_mask(T, x0.device))[:, T:]                       # (B, T, C, h, w)
        rows.append({"t": float(t), "v_mse": float((v - (eps - x0)).pow(2).mean()),
                     "x0_mse": float((xt - t * v - x0).pow(2).mean())})
    return rows


def trace_clips(trace: str | Path, ae: Autoencoder, starts: Sequence[int], length: int = 16
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Replay the trace on the game (evaluate.play_trace); clips of `length` ticks from each start: latents
    and actions."""
    with Game(GameConfig()) as game:
        played = play_trace(load_trace(trace), Path(trace).stem, game)
    with torch.no_grad():
        x0 = torch.stack([ae.encode(frames_to_model(torch.from_numpy(played.frames[s:s + length]))) for s in starts])
    return x0, torch.from_numpy(np.stack([played.actions[s:s + length] for s in starts]))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="teacher or student checkpoints")
    ap.add_argument("--trace", default="assets/traces/heldout-10001.jsonl")
    ap.add_argument("--starts", default="40,140,240,340", help="first tick of each 16-tick clip")
    ap.add_argument("--autoencoder", default="assets/checkpoints/autoencoder.safetensors")
    ap.add_argument("--json", help="write the curves here")
    args = ap.parse_args(argv)
    ae = Autoencoder.load(args.autoencoder)
    x0, actions = trace_clips(args.trace, ae, [int(s) for s in args.starts.split(",")])
    report = {}
    for path in args.models:
        rows = curve(load_model(path).eval(), x0, actions)
        report[path] = rows
        print(path)
        print("  t       " + " ".join(f"{r['t']:>6.2f}" for r in rows))
        print("  v MSE   " + " ".join(f"{r['v_mse']:>6.3f}" for r in rows))
        print("  x0 MSE  " + " ".join(f"{r['x0_mse']:>6.3f}" for r in rows))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
