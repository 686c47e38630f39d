"""Does a world model know where each token sits in the frame? Linear probes on every block's output.

    python -m world_model.recipes.position_probe MODEL [MODEL ...] [--t 0.7] [--json OUT]

The model has no absolute position unless `model.abs_pos` is on: RoPE only tells attention the offset between
two tokens, so a token can learn its place from content and from the frame's edges alone. Walking zooms the view
about its centre, which moves patches left of the centre left and those right of it right; a model that cannot
tell left from right cannot draw that from the action alone (docs/EVALUATION.md, session 16).

Clips of 8 real frames from held-out traces (the game replays them), the last frame noised to t, one forward
pass; each block's output for the last frame's tokens is the probe's input. A ridge regression (features
standardised, penalty 10) is fitted on the first 70% of the clips to predict each token's column and row, and
scored on the rest: R^2 and mean absolute error in patches. Layer 0 is the patch embedding (plus the table
where there is one): content alone.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from world_model.autoencoder import Autoencoder, frames_to_model
from world_model.game import Game
from world_model.model import WorldModel, action_features, load_model
from world_model.trace import load as load_trace

from .common import write_json

CLIP = 8


def clips(traces: Sequence[str], ticks: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Real frames (N, CLIP, H, W, 3) uint8 and actions (N, CLIP, 5) from the first `ticks` of each trace,
    one clip every `stride` ticks."""
    frames, actions = [], []
    with Game() as game:
        for path in traces:
            trace = load_trace(path)
            game.reset(trace.seed)
            f = np.stack([game.step(a) for a in trace.actions[:ticks]])
            a = np.array([x.to_list() for x in trace.actions[:ticks]], np.float32)
            for s in range(0, len(f) - CLIP + 1, stride):
                frames.append(f[s:s + CLIP])
                actions.append(a[s:s + CLIP])
    return np.stack(frames), np.stack(actions)


def block_outputs(model: WorldModel, x0: Tensor, actions: Tensor, t: float, seed: int = 0) -> list[Tensor]:
    """Latent clips x0 (N, T, C, h, w) with the last frame noised to t -> the last frame's tokens after the
    patch embedding and after every block, each (N, P, D)."""
    outs: list[Tensor] = []
    grab = lambda module, args, out: outs.append(out[:, -1].detach().float())
    hooks = [b.register_forward_hook(grab) for b in model.blocks]
    g = torch.Generator(device=x0.device).manual_seed(seed)
    x = x0.clone()
    x[:, -1] = (1 - t) * x0[:, -1] + t * torch.randn(x0[:, -1].shape, generator=g, device=x0.device)
    tt = torch.zeros(x.shape[:2], device=x.device)
    tt[:, -1] = t
    try:
        with torch.no_grad():
            feats = action_features(model.config, actions)[0]
            outs.append(model.embed(x, feats)[:, -1].float())
            model(x, tt, feats)
    finally:
        for hook in hooks:
            hook.remove()
    return outs


def ridge_r2(h: Tensor, y: Tensor, train: int, penalty: float = 10.0) -> tuple[float, float]:
    """Fit y from h (N, P, D) on the first `train` clips, score on the rest: (R^2, mean absolute error)."""
    N, P, D = h.shape
    target = y.float().expand(N, P)
    xtr, ytr = h[:train].reshape(-1, D), target[:train].reshape(-1)
    xte, yte = h[train:].reshape(-1, D), target[train:].reshape(-1)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-5
    ones = lambda n: torch.ones(n, 1)
    xtr = torch.cat([(xtr - mu) / sd, ones(len(xtr))], 1)
    xte = torch.cat([(xte - mu) / sd, ones(len(xte))], 1)
    w = torch.linalg.solve(xtr.T @ xtr + penalty * torch.eye(D + 1), xtr.T @ ytr)
    err = xte @ w - yte
    return float(1 - err.pow(2).mean() / yte.var()), float(err.abs().mean())


def probe(model: WorldModel, x0: Tensor, actions: Tensor, t: float) -> list[dict[str, float]]:
    cfg = model.config
    col = torch.arange(cfg.tokens_per_frame) % cfg.grid_w
    row = torch.arange(cfg.tokens_per_frame) // cfg.grid_w
    train = int(0.7 * len(x0))
    rows = []
    for layer, h in enumerate(block_outputs(model, x0, actions, t)):
        (rc, ec), (rr, er) = ridge_r2(h.cpu(), col, train), ridge_r2(h.cpu(), row, train)
        rows.append({"layer": layer, "column_r2": rc, "column_mae": ec, "row_r2": rr, "row_mae": er})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="teacher or student checkpoints")
    ap.add_argument("--traces", nargs="+", default=["assets/traces/heldout-10001.jsonl", "assets/traces/heldout-10003.jsonl"])
    ap.add_argument("--ticks", type=int, default=400, help="ticks of each trace")
    ap.add_argument("--stride", type=int, default=5, help="ticks between clip starts")
    ap.add_argument("--t", type=float, default=0.7, help="noise level of the last frame")
    ap.add_argument("--autoencoder", default="assets/checkpoints/autoencoder.safetensors")
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    frames, acts = clips(args.traces, args.ticks, args.stride)
    ae = Autoencoder.load(args.autoencoder, device=dev)
    with torch.no_grad():
        flat = torch.from_numpy(frames.reshape(-1, *frames.shape[-3:]))
        z = torch.cat([ae.encode(frames_to_model(flat[i:i + 256].to(dev))).float() for i in range(0, len(flat), 256)])
    x0 = z.reshape(*frames.shape[:2], *z.shape[1:])                                      # (N, CLIP, C, h, w)
    report = {"clips": len(x0), "t": args.t, "traces": args.traces, "models": {}}
    for path in args.models:
        model = load_model(path).to(dev).eval()
        rows = report["models"][str(path)] = probe(model, x0, torch.from_numpy(acts).to(dev), args.t)
        print(f"{path}: {len(x0)} clips, t = {args.t:g}; column 0..{model.config.grid_w - 1}, "
              f"row 0..{model.config.grid_h - 1}", flush=True)
        for r in rows:
            print(f"  layer {r['layer']}: column R^2 {r['column_r2']:.3f} (error {r['column_mae']:.2f}), "
                  f"row R^2 {r['row_r2']:.3f} (error {r['row_mae']:.2f})", flush=True)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
