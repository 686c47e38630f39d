"""Which of the teacher's blocks a shallower student can most cheaply do without (distill's student_layers).

    python -m world_model.recipes.block_importance [--teacher assets/checkpoints/teacher.safetensors]
        [--traces heldout-10001 heldout-10002 heldout-idle-10200] [--every 72] [--reps 2] [--pairs]
        [--json FILE]

Held-out traces are replayed in the game and encoded; clips of 16 frames (one every `--every` ticks) are the
data. For the whole teacher, then with each block left out (`distill.keep_blocks`: the rest keep their order),
it reports the teacher-forcing MSE of the velocity (losses.TeacherLoss, the training objective), with the same
noise for every variant, so the differences are paired. `--pairs` also leaves out every pair of blocks (one
noise draw each). A block whose removal costs little is the one to drop first: every block is a residual
update, so a student that starts from the others starts near the teacher (docs/DISTILLATION.md).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from world_model.autoencoder import Autoencoder, frames_to_model
from world_model.game import Game, GameConfig
from world_model.losses import TeacherLoss
from world_model.model import WorldModel, action_features, load_model
from world_model.recipes.common import write_json
from world_model.recipes.distill import keep_blocks
from world_model.recipes.evaluate import play_trace
from world_model.trace import load as load_trace

ROOT = Path(__file__).resolve().parents[2]


def clips_from_traces(names: Sequence[str], ae: Autoencoder, every: int, clip_len: int = 16
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Replay each held-out trace, encode it, and cut a clip every `every` ticks that crosses no episode start:
    latents (N, T, C, h, w), actions (N, T, A)."""
    lat, act = [], []
    for name in names:
        game = Game(GameConfig())
        try:
            played = play_trace(load_trace(ROOT / "assets/traces" / f"{name}.jsonl"), name, game)
        finally:
            game.close()
        with torch.no_grad():
            z = torch.cat([ae.encode(frames_to_model(torch.from_numpy(played.frames[i:i + 64])))
                           for i in range(0, len(played.frames), 64)])                # (T, C, h, w)
        for s in range(8, len(z) - clip_len + 1, every):
            if not played.starts[s:s + clip_len].any():
                lat.append(z[s:s + clip_len])
                act.append(torch.from_numpy(played.actions[s:s + clip_len]))
    return torch.stack(lat), torch.stack(act)


@torch.no_grad()
def tf_mse(model: WorldModel, x: torch.Tensor, a: torch.Tensor, reps: int, seed: int = 100) -> float:
    """Teacher-forcing velocity MSE, mean over `reps` noise draws (the same draws for every model)."""
    loss = TeacherLoss()
    a = action_features(model.config, a)[0]                                       # (N, T, action_inputs)
    return float(np.mean([float(loss.teacher_forcing(model, x, a, torch.Generator().manual_seed(seed + r))[1])
                          for r in range(reps)]))


def drop_scores(teacher: WorldModel, x: torch.Tensor, a: torch.Tensor, reps: int, pairs: bool,
                log=print) -> dict[str, Any]:
    depth = teacher.config.depth
    out: dict[str, Any] = {"all": tf_mse(teacher, x, a, reps), "drop_one": {}, "drop_two": {}}
    log(f"all {depth} blocks: {out['all']:.4f}")
    for i in range(depth):
        out["drop_one"][str(i)] = tf_mse(keep_blocks(teacher, [j for j in range(depth) if j != i]), x, a, reps)
        log(f"without block {i}: {out['drop_one'][str(i)]:.4f}")
    if pairs:
        for d in itertools.combinations(range(depth), 2):
            keep = [j for j in range(depth) if j not in d]
            out["drop_two"][f"{d[0]},{d[1]}"] = tf_mse(keep_blocks(teacher, keep), x, a, 1)
        for k, v in sorted(out["drop_two"].items(), key=lambda kv: kv[1])[:8]:
            log(f"without blocks {k}: {v:.4f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=str(ROOT / "assets/checkpoints/teacher.safetensors"))
    p.add_argument("--autoencoder", default=str(ROOT / "assets/checkpoints/autoencoder.safetensors"))
    p.add_argument("--traces", nargs="+", default=["heldout-10001", "heldout-10002", "heldout-idle-10200"])
    p.add_argument("--every", type=int, default=72, help="ticks between clip starts")
    p.add_argument("--reps", type=int, default=2, help="noise draws per variant")
    p.add_argument("--pairs", action="store_true", help="also every pair of blocks left out")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    ae = Autoencoder.load(args.autoencoder)
    teacher = load_model(args.teacher).eval()
    x, a = clips_from_traces(args.traces, ae, args.every)
    print(f"{len(x)} clips of {x.shape[1]} frames from {', '.join(args.traces)}", flush=True)
    report = {"command": "python -m world_model.recipes.block_importance " + " ".join(sys.argv[1:] if argv is None else argv),
              "clips": len(x), **drop_scores(teacher, x, a, args.reps, args.pairs, log=lambda s: print(s, flush=True))}
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
