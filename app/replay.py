"""Headless replay of a trace: the evaluation contract.

    replay(trace, backend, out_dir) writes
        out_dir/frames.npz   uint8 `frames` [T, H, W, 3], one per trace tick after the context
        out_dir/timing.csv   per-tick phase times in milliseconds
        out_dir/video.mp4    the same frames at the trace's tick rate

The context ticks are played by `backend.reset` (on the real game, for every backend). Every file is
written under a temporary name and renamed into place.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from world_model.trace import Trace, TraceError

from .record import video_writer


def replay(trace: Trace, backend: Any, out_dir: Path, *, video: bool = True) -> dict[str, float]:
    """Run the trace; returns a summary (ticks, seconds, step p50/p99 in ms)."""
    if trace.extra.get("dropped_ticks"):
        raise TraceError(f"this trace lacks its first {trace.extra['dropped_ticks']} ticks after the reset (the recording "
                         f"started after more than record.history_s of play), so it cannot replay from the seed")
    out_dir.mkdir(parents=True, exist_ok=True)
    first = backend.reset(trace.seed, trace.actions[: trace.context])
    ticks = trace.actions[trace.context:]
    frames = np.empty((len(ticks), *first.shape), np.uint8)   # (T, H, W, 3)
    rows: list[dict[str, float]] = []
    t_start = time.perf_counter()
    for i, action in enumerate(ticks):
        t0 = time.perf_counter()
        frames[i] = backend.step(action)
        row = {"tick": trace.context + i, "step_ms": (time.perf_counter() - t0) * 1000}
        row.update({f"{k}_ms": v * 1000 for k, v in backend.phases.last.items()})
        rows.append(row)
    seconds = time.perf_counter() - t_start
    _write_npz(out_dir / "frames.npz", frames)
    _write_csv(out_dir / "timing.csv", rows)
    if video and len(frames):
        tmp = out_dir / "video.part.mp4"
        with video_writer(tmp, trace.tick_hz) as w:
            for f in frames:
                w.append_data(f)
        os.replace(tmp, out_dir / "video.mp4")
    steps = np.array([r["step_ms"] for r in rows]) if rows else np.zeros(1)
    return {"ticks": len(ticks), "seconds": seconds, "step_p50_ms": float(np.percentile(steps, 50)),
            "step_p99_ms": float(np.percentile(steps, 99))}


def _write_npz(path: Path, frames: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".part.npz")
    np.savez_compressed(tmp, frames=frames)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    columns = ["tick", "step_ms"] + sorted({k for r in rows for k in r} - {"tick", "step_ms"})
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if k != "tick" else v) for k, v in r.items()})
    os.replace(tmp, path)
