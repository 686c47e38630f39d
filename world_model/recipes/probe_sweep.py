"""Action response alone, for several guidance scales: a quick look that fits a CPU (docs/EVALUATION.md).

    python -m world_model.recipes.probe_sweep --model teacher --scales 1,2,3 --probes 3 --device cpu

The same probes and score as evaluate.py section 3 (turn left/right, walk backward/forward from states of the
held-out traces, against the game from the same states), on `--probes` states per trace, for each scale.
"""
from __future__ import annotations

import argparse
import glob
import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from . import evaluate as E
from ..game import Game


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="teacher", help="teacher | student | a checkpoint path")
    ap.add_argument("--traces", default="assets/traces/heldout-*.jsonl")
    ap.add_argument("--scales", default="1,2,3", help="action guidance scales, comma-separated")
    ap.add_argument("--probes", type=int, default=3, help="states per trace")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    base = replace(E.EvalConfig(), max_probes=args.probes, steps=args.steps)
    with Game() as game:
        played = [E.play_trace(E.load_trace(t), t, game) for t in sorted(glob.glob(args.traces))]
    states = E.probe_states(played, base)
    game_finals, game_ok = E.game_probes(states, base)
    print(f"{len(states)} states, {int(game_ok.sum())} valid in the game", flush=True)
    for scale in (float(s) for s in args.scales.split(",")):
        cfg = replace(base, cfg_scale=scale)
        m = E.load_models(args.model, E.CHECKPOINTS / "autoencoder.safetensors", cfg, args.device)
        t0 = time.perf_counter()
        finals, _ = E.model_probes(m, states, cfg)
        r, per = E.action_response(finals, game_finals, game_ok, m.device)
        zoom = lambda k: float(np.abs(per[k][per["move_scorable"]]).mean())
        print(f"scale {scale:g}: action response {r['combined']['score']:.1%} (turn {r['turn']['correct']}/"
              f"{r['turn']['scored']}, move {r['move']['correct']}/{r['move']['scored']}); mean |zoom| model "
              f"{zoom('move_model'):.4f}, game {zoom('move_game'):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
