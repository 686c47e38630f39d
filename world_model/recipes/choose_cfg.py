"""Pick the teacher's action-guidance scale from a sweep of evaluations (world_model/recipes/h100_pipeline.sh).

    python -m world_model.recipes.choose_cfg runs/eval/sweep-cfg*      # prints the scale, e.g. 2

Guidance (v_null + s (v_action - v_null)) sharpens the model's response to actions, and past some scale it
overshoots and costs image quality. So: among the evaluated scales whose autoregressive PSNR at 8 and 32
ticks stays within `tolerance` dB of the unguided run's (scale 1), take the best action-response score; ties
go to the smaller scale (fewer artefacts). Without an unguided run every scale is eligible.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence


def _ar(m: dict[str, Any], h: int) -> float:
    return float(m["autoregressive"]["horizons"][str(h)]["psnr"])


def choose(runs: Sequence[dict[str, Any]], tolerance: float = 1.0) -> float:
    """runs: evaluate.py metrics.json contents (config.cfg_scale, autoregressive, action_response)."""
    if not runs:
        return 1.0
    scale = lambda m: float(m["config"].get("cfg_scale", 1.0))
    base = [m for m in runs if scale(m) == 1.0]
    ok = [m for m in runs if not base or all(_ar(m, h) >= _ar(base[0], h) - tolerance for h in (8, 32))]
    score = lambda m: m["action_response"]["combined"]["score"]
    ok = [m for m in ok if not math.isnan(score(m))] or ok
    best = max(ok, key=lambda m: (score(m), -scale(m)))
    return scale(best)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", help="evaluation output folders (each with metrics.json)")
    ap.add_argument("--tolerance", type=float, default=1.0, help="dB of AR PSNR @8/@32 a scale may lose")
    args = ap.parse_args(argv)
    runs = [json.loads(p.read_text()) for d in args.dirs if (p := Path(d) / "metrics.json").exists()]
    print(f"{choose(runs, args.tolerance):g}")


if __name__ == "__main__":
    main()
