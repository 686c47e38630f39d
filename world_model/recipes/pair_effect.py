"""How much of each action's effect a model draws: fork pairs of the real game, per kind and branch tick.

    python -m world_model.recipes.pair_effect MODEL [MODEL ...] --pairs 24 --seed 20000 [--json OUT]

Plays fork pairs (world_model/forks.py) in one game: the same 8 ticks of policy play, then 8 ticks of
forward against backward, forward against stop, turn left against right, or strafe left against right. Both
clips of a pair are shown to the model with real context (teacher forcing) and the same noise, at noise
level t; the pair effect is the share of the game's difference between the two clips that the difference of
the model's two predictions gets right: 1 - |dv - (x_B - x_A)|^2 / |x_B - x_A|^2 (0: the model ignores the
action, 1: it draws the game's difference, below 0: it parts them the wrong way). At t = 1 the noisy frames
are the same pure noise, so only the context and the action tell the clips apart, and the prediction is the
model's one-step guess of the frame (what a 1-step student draws).

Branch tick 1 is the first frame after the actions part: its context is the shared prefix, so it answers the
action alone. With --rest, each kind is also played from a still player (forks.fork_pair's `rest`): the
evaluation's probe from a standing start, which the collector's play rarely holds (docs/DATA.md, "Walls"). Later ticks also see the branch's earlier real frames. Cheap enough for the CPU: 24 pairs of each
kind take about a minute to play and a few seconds per model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from world_model.autoencoder import Autoencoder, frames_to_model
from world_model.forks import KINDS, ForkConfig, fork_pair
from world_model.game import Game, GameConfig, map_sectors
from world_model.losses import pair_errors
from world_model.model import WorldModel, action_features, load_model
from world_model.policy import ExplorerPolicy, PolicyConfig, RoutePlanner

TICKS = (1, 2, 4, 8)   # branch ticks reported


def play_pairs(kind: str, n: int, seed: int, cfg: ForkConfig = ForkConfig(),
               rest: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """n fork pairs of one kind from policy play (with `rest`, from a still player: forks.fork_pair):
    frames (n, 2, T, H, W, 3) uint8, actions (n, 2, T, 5)."""
    gc = GameConfig(buffers=True)
    rng = np.random.default_rng(seed)
    frames, actions = [], []
    with Game(gc) as game:
        frame = game.reset(seed)
        policy = ExplorerPolicy(PolicyConfig(), seed, RoutePlanner(map_sectors(gc, game.workdir)))
        while len(frames) < n:
            for _ in range(int(rng.integers(cfg.gap_min, cfg.gap_max + 1))):
                frame = game.step(policy.act(frame, game.tick_info))
            pair, frame = fork_pair(game, policy, frame, cfg, rng, kind, rest=rest)
            if pair is not None:
                frames.append(pair.frames)
                actions.append(pair.actions)
    return np.stack(frames), np.stack(actions)


@torch.no_grad()
def effects(model: WorldModel, x0: torch.Tensor, actions: torch.Tensor, t: float, prefix: int,
            seed: int = 0) -> dict[str, float]:
    """x0 (P, 2, T, C, h, w), actions (P, 2, T, 5) -> pair effect over all branch ticks and at each of TICKS."""
    P = x0.shape[0]
    a = action_features(model.config, actions.flatten(0, 1))[0].unflatten(0, (P, 2))
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    _, diff, zero = pair_errors(model, x0, a, torch.full((P,), float(t), device=x0.device), gen)
    diff, zero = diff[:, prefix:], zero[:, prefix:]                                 # (P, L) branch ticks
    out = {"all": float(1 - diff.sum() / zero.sum().clamp(min=1e-12))}
    for k in TICKS:
        if k <= diff.shape[1]:
            out[f"tick{k}"] = float(1 - diff[:, k - 1].sum() / zero[:, k - 1].sum().clamp(min=1e-12))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="teacher or student checkpoints")
    ap.add_argument("--pairs", type=int, default=24, help="pairs of each kind")
    ap.add_argument("--seed", type=int, default=20000, help="game and policy seed (training uses small seeds)")
    ap.add_argument("--times", default="1.0,0.9", help="noise levels t")
    ap.add_argument("--rest", action="store_true",
                    help="also pairs from a still player (no input for 35 ticks, a prefix of no-ops)")
    ap.add_argument("--autoencoder", default="assets/checkpoints/autoencoder.safetensors")
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    cfg = ForkConfig()
    dev = torch.device(args.device)
    ae = Autoencoder.load(args.autoencoder, device=dev)
    data = {}
    for rest in (False, True) if args.rest else (False,):
        for i, (kind, _) in enumerate(KINDS):
            frames, acts = play_pairs(kind, args.pairs, args.seed + i, cfg, rest=rest)
            with torch.no_grad():
                x0 = ae.encode(frames_to_model(torch.from_numpy(frames.reshape(-1, *frames.shape[-3:])).to(dev))).float()
            name = f"{kind} from rest" if rest else kind
            data[name] = (x0.reshape(*frames.shape[:3], *x0.shape[1:]), torch.from_numpy(acts).to(dev))
            print(f"played and encoded {args.pairs} {name} pairs", flush=True)
    report = {"pairs_per_kind": args.pairs, "seed": args.seed, "prefix": cfg.prefix, "branch": cfg.branch, "models": {}}
    for path in args.models:
        model = load_model(path).to(dev).eval()
        rows = report["models"][path] = {}
        for t in (float(x) for x in args.times.split(",")):
            for kind, (x0, acts) in data.items():
                rows[f"{kind} t={t:g}"] = effects(model, x0, acts, t, cfg.prefix)
        print(path, flush=True)
        print(f"  {'pair, t':<26}" + "".join(f"{k:>8}" for k in ("all", *(f"tick{k}" for k in TICKS))))
        for name, r in rows.items():
            print(f"  {name:<26}" + "".join(f"{r[k]:>8.3f}" for k in ("all", *(f"tick{k}" for k in TICKS)) if k in r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
