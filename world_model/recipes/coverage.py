"""Coverage and throughput of the data collector.

    python -m world_model.recipes.coverage --ticks 100000 --workers 16 --out OUT

Runs the parallel collector (the same code that feeds training) for `--ticks` ticks and writes:
  OUT/coverage.png         map-visitation heat map over the map's lines
  OUT/actions.png          histograms of every action field
  OUT/coverage.json        numbers: throughput, episodes, cells and sectors reached, action stats, idle
                           (share of exact no-op ticks, the longest no-op run, runs of 35+ ticks), walls
                           (forward ticks that push into a wall; forward presses from rest that walk)
  OUT/throughput.csv       frames delivered over time
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import data
from ..actions import FIELDS
from ..collect import CollectConfig, Collector
from ..game import GameConfig, map_sectors
from ..policy import PolicyConfig, RoutePlanner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--idle-prob", type=float, default=PolicyConfig.idle_prob,
                    help="the policy's chance per tick of an idle hold (0: none, as before the holds existed)")
    ap.add_argument("--move-prob", type=float, default=PolicyConfig.move_prob,
                    help="the policy's chance per tick of a forward/backward move probe (0: none, as before)")
    ap.add_argument("--move-min-ticks", type=int, default=PolicyConfig.move_min_ticks,
                    help="the least ticks each leg of a move probe holds its direction (0: the default ranges)")
    ap.add_argument("--move-turn-prob", type=float, default=PolicyConfig.move_turn_prob,
                    help="share of move probes that also hold a turn (0: none, as before)")
    ap.add_argument("--blocked-ticks", type=int, default=PolicyConfig.blocked_ticks,
                    help="the policy backs out after this many ticks of pushing forward without moving (0: off)")
    ap.add_argument("--snap-start-prob", type=float, default=PolicyConfig.snap_start_prob,
                    help="share of idle holds that end with full forward at once")
    ap.add_argument("--open-start-prob", type=float, default=PolicyConfig.open_start_prob,
                    help="the policy's chance per cruising tick of a start from rest in the open")
    ap.add_argument("--move-weight", type=float, default=4.0,
                    help="training's weight on clips with a forward break, for held_moves' clips_* shares")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    cfg = CollectConfig(workers=args.workers, chunk_ticks=args.chunk,
                        game=GameConfig(width=args.width, height=args.height, buffers=True),
                        policy=replace(PolicyConfig(), idle_prob=args.idle_prob, move_prob=args.move_prob,
                                       move_min_ticks=args.move_min_ticks, move_turn_prob=args.move_turn_prob,
                                       blocked_ticks=args.blocked_ticks, snap_start_prob=args.snap_start_prob,
                                       open_start_prob=args.open_start_prob))
    pos, acts, starts, log = [], [], 0, []
    streams: dict[int, list] = {}   # per worker, in order: a no-op run must not join two workers' ticks
    paths: dict[int, list] = {}     # the same with positions
    t0 = time.perf_counter()
    with Collector(cfg, args.seed) as col:
        first = col.next()
        t_first = time.perf_counter() - t0
        col.ticks, col.t0 = 0, time.perf_counter()   # steady-state rate: leave start-up out
        chunk, have = first, 0
        while True:
            pos.append(chunk.pos)
            acts.append(chunk.actions[~chunk.starts])
            streams.setdefault(chunk.worker, []).append((chunk.actions, chunk.starts))   # frames not kept
            paths.setdefault(chunk.worker, []).append((chunk.pos, chunk.actions, chunk.starts))
            starts += int(chunk.starts.sum())
            have += len(chunk.starts)
            log.append((time.perf_counter() - t0, col.ticks, col.rate))
            if have >= args.ticks:
                break
            chunk = col.next()
        rate = col.rate
    print(f"collector: {rate:,.0f} frames/s steady state with {args.workers} workers at "
          f"{args.width}x{args.height} (first chunk after {t_first:.1f} s)")
    with open(out / "throughput.csv", "w") as f:
        f.write("seconds,frames,frames_per_s\n")
        f.writelines(f"{t:.3f},{n},{r:.1f}\n" for t, n, r in log)

    pos = np.concatenate(pos)
    acts = np.concatenate(acts)
    sectors = map_sectors(cfg.game)
    planner = RoutePlanner(sectors)
    step = max(1, len(pos) // 20_000)   # locating every tick is slow; a sample is enough
    reached = {planner.locate(x, y) for x, y, _ in pos[::step]}
    cells = {(int(x // 128), int(y // 128)) for x, y, _ in pos}
    stats = {
        "ticks": int(len(pos)), "workers": args.workers, "frames_per_s": round(rate, 1),
        "resolution": f"{args.width}x{args.height}", "first_chunk_s": round(t_first, 2),
        "episode_starts": starts, "cells_128u_visited": len(cells),
        "sectors_reached": len(reached), "sectors_total": len(sectors),
        "actions": {name: {"mean": float(acts[:, i].mean()), "abs_mean": float(np.abs(acts[:, i]).mean()),
                           "nonzero": float((acts[:, i] != 0).mean())} for i, name in enumerate(FIELDS)},
        "idle": idle_stats(streams),
        "forward_breaks": forward_breaks(streams),
        "walls": wall_pushes(paths),
        "held_moves": held_moves(paths, move_weight=args.move_weight),
    }
    (out / "coverage.json").write_text(json.dumps(stats, indent=2))
    plot(pos, acts, sectors, out)
    print(json.dumps(stats))


def noop_runs(actions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Lengths of the runs of consecutive exact no-op ticks in one worker's stream (T, 5). A start tick
    (its no-op is a placeholder: no action led to that frame) ends a run and is not counted."""
    noop = (actions == 0).all(1) & ~starts
    edges = np.diff(np.r_[0, noop.astype(np.int8), 0])              # +1 where a run opens, -1 after it ends
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def idle_stats(streams: dict[int, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, float | int]:
    """Exact no-op ticks (share of the non-start ticks) and their runs, over every worker's stream of
    (actions, starts) chunks."""
    runs, ticks = [], 0
    for chunks in streams.values():
        starts = np.concatenate([st for _, st in chunks])
        runs.append(noop_runs(np.concatenate([a for a, _ in chunks]), starts))
        ticks += int((~starts).sum())
    runs = np.concatenate(runs) if runs else np.zeros(0, int)
    return {"noop_fraction": float(runs.sum() / max(1, ticks)), "noop_longest_run": int(runs.max(initial=0)),
            "noop_runs_35_plus": int((runs >= 35).sum()),
            "noop_fraction_in_runs_10_plus": float(runs[runs >= 10].sum() / max(1, ticks))}


def forward_breaks(streams: dict[int, list[tuple[np.ndarray, np.ndarray]]], k: int = 8) -> dict[str, float]:
    """Shares of the ticks with k ticks of history inside one episode where the forward input breaks with the
    recent motion (world_model.data.forward_breaks: reversals and starts from rest). On these ticks the next
    frame depends on the input, not only on the momentum that the context frames show (docs/DATA.md)."""
    rev = start = total = 0
    for chunks in streams.values():
        f = np.concatenate([a[:, 0] for a, _ in chunks])
        starts = np.concatenate([st for _, st in chunks])
        r, s = data.forward_breaks(f, starts, k)
        st = np.concatenate([[0], np.cumsum(starts)])
        t = np.arange(k, len(f))
        total += int(((st[t + 1] - st[t - k + 1]) == 0).sum())
        rev, start = rev + int(r.sum()), start + int(s.sum())
    return {"reversal": float(rev / max(1, total)), "start_from_rest": float(start / max(1, total)),
            "ticks": int(total)}


def wall_pushes(paths: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]) -> dict[str, float | int]:
    """How often pressing forward goes nowhere, from every worker's stream of (pos, actions, starts) chunks:
    the share of forward ticks (> 0.1) that move the player less than 0.3 map units, and of the first forward
    presses (> 0.3) after two ticks at rest (under 0.1 units each), the share that moves at least 0.5 units
    in two ticks. In the open, full forward from rest moves 0.78 and then 1.49 units (session 15). A press
    from rest that stays put leans on a wall, and if most do, the data says forward from rest does nothing."""
    fwd = pushed = presses = moved = 0
    for chunks in paths.values():
        p = np.concatenate([c[0][:, :2] for c in chunks])
        f = np.concatenate([c[1][:, 0] for c in chunks])
        st = np.concatenate([c[2] for c in chunks])
        step = np.r_[0.0, np.linalg.norm(np.diff(p, axis=0), axis=1)]
        step[st] = np.inf                                             # an episode start is a jump, not a walk
        on = (f > 0.1) & ~st
        fwd, pushed = fwd + int(on.sum()), pushed + int((on & (step < 0.3)).sum())
        t = np.arange(2, len(f) - 1)
        first = (f[t] > 0.3) & (f[t - 1] <= 0.3) & (step[t - 2] < 0.1) & (step[t - 1] < 0.1) & ~st[t] & ~st[t + 1]
        t = t[first]
        presses, moved = presses + len(t), moved + int((step[t] + step[t + 1] >= 0.5).sum())
    return {"forward_ticks_pushing": float(pushed / max(1, fwd)), "presses_from_rest": presses,
            "presses_from_rest_that_move": float(moved / max(1, presses))}


def held_moves(paths: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]], k: int = 8,
               min_walk: float = 16.0, clip_len: int = 16, move_weight: float = 4.0) -> dict[str, float | int]:
    """How often the data holds forward or backward the way the move probe does (docs/EVALUATION.md,
    session 23: the zoom toy walks half as far as a held key unless its training clips hold keys). Over the
    k-tick windows inside one episode, from every worker's stream of (pos, actions, starts) chunks, the shares
    that hold forward (>= 0.5 on every tick) and backward (<= -0.5); of those, the shares that start against
    the recent motion (the mean forward input of the k ticks before is below 0.2 for a forward hold, at rest or
    backing, or above -0.2 for a backward one), that walk at least `min_walk` map units between the window's
    ends (not into a wall), and that do both. A reversal from full speed covers little ground in k ticks, so
    the walking share leaves most reversals out. A probe from the evaluation's states is mostly against the
    motion for backward.

    Training does not see windows but `clip_len`-tick clips, drawn `move_weight` times as often where the
    forward input breaks with the motion (world_model.data; `PART=fresh17` trains with 4). The `clips_*`
    shares are of such draws: a clip counts when it holds a key against its own earlier ticks' motion (a
    window with its k ticks of history inside the clip), which is what a model can learn the hold from."""
    out = {"forward": [0, 0, 0, 0], "backward": [0, 0, 0, 0]}
    drawn = {"forward": 0.0, "backward": 0.0}
    windows, weight = 0, 0.0
    for chunks in paths.values():
        p = np.concatenate([c[0][:, :2] for c in chunks])
        f = np.concatenate([c[1][:, 0] for c in chunks])
        st = np.concatenate([c[2] for c in chunks])
        n = len(f)
        if n < 2 * k + 1:
            continue
        t = np.arange(k, n - k + 1)                                   # window t..t+k-1, history t-k..t-1
        sc = np.r_[0, np.cumsum(st)]
        clean = (sc[t + k] - sc[t - k + 1]) == 0                      # no episode start from t-k+1 to t+k-1
        windows += int(clean.sum())
        cs = np.r_[0.0, np.cumsum(f)]
        before = (cs[t] - cs[t - k]) / k
        walk = np.linalg.norm(p[t + k - 1] - p[t - 1], axis=1)
        long = n >= clip_len >= 2 * k
        if long:
            ci = np.arange(n - clip_len + 1)                           # clip ci..ci+L-1: windows t = ci+k..ci+L-k
            w = clip_w(f, st, ci, clip_len, move_weight)
            weight += float(w.sum())
        for name, sign in (("forward", 1.0), ("backward", -1.0)):
            held = np.r_[0, np.cumsum(sign * f >= 0.5)]
            hold = clean & ((held[t + k] - held[t]) == k)
            against, walks = sign * before < 0.2, walk >= min_walk
            for i, keep in enumerate((hold, hold & against, hold & walks, hold & walks & against)):
                out[name][i] += int(keep.sum())
            if long:                                                  # window t sits at index t - k of `t`
                c = np.r_[0, np.cumsum(hold & against)]
                has = (c[ci + clip_len - 2 * k + 1] - c[ci]) > 0
                drawn[name] += float(w[has].sum())
    res: dict[str, float | int] = {"windows": windows, "ticks": k, "clip_len": clip_len, "move_weight": move_weight}
    for name, counts in out.items():
        for suffix, count in zip(("", "_against_motion", "_walking", "_walking_against_motion"), counts):
            res[f"{name}_held{suffix}"] = float(count / max(1, windows))
        res[f"clips_{name}_held_against_motion"] = drawn[name] / max(weight, 1e-9)
    return res


def clip_w(f: np.ndarray, st: np.ndarray, i: np.ndarray, clip_len: int, move_weight: float) -> np.ndarray:
    """Draw weight of the clips starting at i (K,) in one stream, as ClipBuffer.sample gives it: 0 for a clip
    that crosses an episode start, `move_weight` for one with a forward break on frames 1.., else 1."""
    rev, begin = data.forward_breaks(f, st)
    s = np.r_[0, np.cumsum(st)]
    clean = (s[i + clip_len] - s[i + 1]) == 0
    return np.where(clean, np.where(data.clips_with_breaks(rev | begin, i, clip_len), move_weight, 1.0), 0.0)


def plot(pos: np.ndarray, acts: np.ndarray, sectors, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    lines = np.concatenate([s.lines for s in sectors])
    fig, ax = plt.subplots(figsize=(7, 6))
    lo, hi = lines[:, :4].reshape(-1, 2).min(0) - 64, lines[:, :4].reshape(-1, 2).max(0) + 64
    bins = [np.arange(lo[0], hi[0], 32), np.arange(lo[1], hi[1], 32)]
    h, xe, ye = np.histogram2d(pos[:, 0], pos[:, 1], bins=bins)
    im = ax.pcolormesh(xe, ye, np.ma.masked_equal(h.T, 0), norm=LogNorm(), cmap="inferno_r")
    for x1, y1, x2, y2, blocking in lines:
        ax.plot([x1, x2], [y1, y2], color="k" if blocking else "0.7", lw=0.4)
    ax.set_aspect("equal")
    ax.set_title(f"E1M1 visitation, {len(pos):,} ticks (ticks per 32x32 cell)")
    fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    fig.savefig(out / "coverage.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(FIELDS), figsize=(13, 2.6))
    for i, (ax, name) in enumerate(zip(axes, FIELDS)):
        v = acts[:, i]
        ax.hist(v, bins=41 if i < 3 else [-0.5, 0.5, 1.5], range=(-1, 1) if i < 3 else None, color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(name)
    fig.suptitle(f"action histogram ({len(acts):,} ticks)")
    fig.tight_layout()
    fig.savefig(out / "actions.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
