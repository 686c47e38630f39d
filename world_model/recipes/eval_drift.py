"""The drift check's statistics (evaluate.py part 5): does a long rollout stay in the game's range, keep
moving and not freeze? Pure functions of frames, so they also score the game against itself (tests) and
read any saved rollout. docs/EVALUATION.md explains every number."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .. import metrics as M

# A rollout has collapsed unless all of these hold (docs/EVALUATION.md):
IN_RANGE_MIN = 0.95        # fraction of frames whose mean and std lie within the game's range (+10% margin)
HIST_TV_MAX = 0.5          # histogram distance to the game over the last quarter
MOTION_RATIO_MIN = 0.3     # model/game mean |frame difference| over moving ticks, last quarter
FROZEN_MAX = 0.2           # fraction of moving ticks (last quarter) where the model's image stands still



def drift_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several rollouts' drift_stats -> one record: the means of the shares (in range, histogram, motion,
    frozen), the worst excess and spell, and collapsed if any rollout collapsed; each rollout's own record
    under "per_rollout"."""
    def values(k: str) -> list[float]:
        return [r[k] for r in runs if k in r]

    out: dict[str, Any] = {"ticks": runs[0]["ticks"], "rollouts": len(runs),
                           "collapsed_rollouts": sum(r["collapsed"] for r in runs),
                           "collapsed": any(r["collapsed"] for r in runs),
                           "nonfinite": any(r["nonfinite"] for r in runs), "per_rollout": list(runs)}
    for k in ("in_range", "hist_tv_all", "hist_tv_last_quarter", "motion_ratio", "motion_ratio_last_quarter",
              "frozen_fraction_last_quarter", "psnr_last_quarter"):
        if values(k):
            out[k] = float(np.nanmean(values(k))) if not all(math.isnan(v) for v in values(k)) else float("nan")
    if values("in_range"):
        out["in_range_min"], out["in_range_max"] = min(values("in_range")), max(values("in_range"))
    for k in ("mean_excess_max", "longest_out_of_range_ticks"):
        if values(k):
            out[k] = max(values(k))
    for k in ("game_mean_range", "game_std_range"):
        if values(k):
            out[k] = values(k)[0]
    return out


def drift_stats(model: np.ndarray, game: np.ndarray, actions: np.ndarray, ticks: int) -> dict[str, Any]:
    """Collapse checks of a model rollout (N, H, W, 3) against the game's frames over the same ticks."""
    n = len(model)
    out: dict[str, Any] = {"ticks": ticks, "ticks_finite": n, "nonfinite": n < ticks}
    if n < 2:
        return {**out, "collapsed": True}
    g, md = M.frame_stats(game[:n]), M.frame_stats(model)
    inside = torch.ones(n, dtype=torch.bool)
    for k in ("mean", "std"):
        lo, hi = float(g[k].min()), float(g[k].max())
        margin = max(2.0, 0.1 * (hi - lo))
        inside &= (md[k] >= lo - margin) & (md[k] <= hi + margin)
        out[f"game_{k}_range"] = [lo, hi]
        out[f"model_{k}_range"] = [float(md[k].min()), float(md[k].max())]
    # Not checks, for reading in_range: a blow-up to white and a steady brightness offset can leave the
    # range equally often; how far the mean gets outside it and the longest spell outside tell them apart.
    excess = torch.clamp(torch.maximum(md["mean"] - out["game_mean_range"][1], out["game_mean_range"][0] - md["mean"]), min=0)
    spells = np.diff(np.flatnonzero(np.concatenate([[True], inside.numpy(), [True]])))   # gaps between inside ticks
    out["mean_excess_max"] = float(excess.max())                       # grey levels beyond the game's range
    out["longest_out_of_range_ticks"] = int(spells.max() - 1)
    q = slice(n - max(2, n // 4), n)                   # the last quarter
    moving = (np.abs(actions[1:n, :3]).max(1) > 0.1)   # diff i compares frames i and i+1; action i+1 made it
    dg, dm = M.mean_abs_diff(game[:n]).numpy(), M.mean_abs_diff(model).numpy()
    live = moving & (dg >= 2.0)                        # ticks where the game's image really moved
    last = np.zeros(n - 1, bool)
    last[q.start:] = True
    out.update({
        "in_range": float(inside.float().mean()),
        "hist_tv_all": M.histogram_distance(model, game[:n]),
        "hist_tv_last_quarter": M.histogram_distance(model[q], game[q]),
        "hist_tv_game_first_vs_last_quarter": M.histogram_distance(game[:max(2, n // 4)], game[q]),
        "motion_ratio": float(dm[live].mean() / dg[live].mean()) if live.any() else float("nan"),
        "motion_ratio_last_quarter": float(dm[live & last].mean() / dg[live & last].mean()) if (live & last).any() else float("nan"),
        "frozen_fraction_last_quarter": float((dm[live & last] < 0.5).mean()) if (live & last).any() else float("nan"),
        "psnr_last_quarter": float(M.psnr(model[q], game[q]).mean()),
    })
    checks = {"finite": not out["nonfinite"], "in_range": out["in_range"] >= IN_RANGE_MIN,
              "histogram": out["hist_tv_last_quarter"] <= HIST_TV_MAX,
              "moves": not out["motion_ratio_last_quarter"] < MOTION_RATIO_MIN,      # NaN (no motion) passes
              "not_frozen": not out["frozen_fraction_last_quarter"] > FROZEN_MAX}
    return {**out, "checks": checks, "collapsed": not all(checks.values())}
