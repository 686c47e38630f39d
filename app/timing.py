"""Timing: perf_counter phase timers, rolling percentiles, whole-run histograms, and CUDA-event timers."""
from __future__ import annotations

import gc
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np


def memory_line() -> str:
    """Host resident memory, and CUDA memory allocated / reserved when torch is using a GPU."""
    import os
    import sys

    try:
        with open("/proc/self/statm") as f:
            host = f"host {int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20:.1f} MiB"
    except OSError:     # not Linux
        host = "host memory n/a"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return f"{host}, cuda {torch.cuda.memory_allocated() / 2**20:.1f} MiB allocated, " \
               f"{torch.cuda.memory_reserved() / 2**20:.1f} MiB reserved"
    return host


class Clock:
    """Monotonic time and sleeping in one object, so tests can drive the loop with a fake clock."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Rolling:
    """The last `n` samples of one quantity, with percentiles for the HUD."""

    def __init__(self, n: int = 350):
        self.values: deque[float] = deque(maxlen=n)

    def add(self, v: float) -> None:
        self.values.append(v)

    def pct(self, q: float) -> float:
        """Linear interpolation between the nearest ranks (numpy's default method). Not np.percentile: its first
        call imports numpy.ma, which took 78 ms on the H100 machine and made the second tick late."""
        if not self.values:
            return float("nan")
        v = sorted(self.values)
        pos = (len(v) - 1) * min(max(q, 0.0), 100.0) / 100.0
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    @property
    def last(self) -> float:
        return self.values[-1] if self.values else float("nan")

    def __len__(self) -> int:
        return len(self.values)


class Histogram:
    """Every sample of a whole run in fixed log-spaced bins (1 us to 100 s, 1% wide): percentiles over
    a 10-minute or 100k-tick run in constant memory, so a soak's own bookkeeping cannot grow."""

    LO, RATIO = 1e-6, 1.01
    BINS = int(np.ceil(np.log(1e8) / np.log(1.01))) + 1

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS, dtype=np.int64)
        self.n, self.total, self.max = 0, 0.0, 0.0
        self.max_at: int | None = None       # the caller's index (the tick count) of the largest sample

    def add(self, v: float, at: int | None = None) -> None:
        i = int(np.log(max(v, self.LO) / self.LO) / np.log(self.RATIO))
        self.counts[min(i, self.BINS - 1)] += 1
        self.n += 1
        self.total += v
        if v > self.max or self.n == 1:
            self.max, self.max_at = v, at

    def pct(self, q: float) -> float:
        """Upper edge of the bin holding the q-th percentile (at most 1% above the true value)."""
        if not self.n:
            return float("nan")
        i = int(np.searchsorted(np.cumsum(self.counts), q / 100 * self.n))
        return min(self.LO * self.RATIO ** (i + 1), self.max)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")


class Series(Rolling):
    """A Rolling window for the HUD plus a Histogram of the whole run for the final report."""

    def __init__(self, n: int = 350):
        super().__init__(n)
        self.run = Histogram()

    def add(self, v: float, at: int | None = None) -> None:
        super().add(v)
        self.run.add(v, at)


class Phases:
    """Per-tick phase durations in seconds: `with phases("step"): ...`, read with `.last`."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def clear(self) -> None:
        self.last = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.last[name] = self.last.get(name, 0.0) + time.perf_counter() - t0


class GpuTimer:
    """Times GPU work with CUDA events (no sync until read); on the CPU it is a perf_counter timer.

    `start()` / `stop()` bracket the work; `elapsed()` waits for the stop event and returns seconds.
    """

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        if self.cuda:
            import torch
            self._a = torch.cuda.Event(enable_timing=True)
            self._b = torch.cuda.Event(enable_timing=True)
        self._t0 = self._t1 = 0.0

    def start(self) -> None:
        if self.cuda:
            self._a.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self._b.record()
        else:
            self._t1 = time.perf_counter()

    def elapsed(self) -> float:
        if self.cuda:
            self._b.synchronize()
            return self._a.elapsed_time(self._b) / 1000.0
        return self._t1 - self._t0


class GcPauses:
    """Times Python's cyclic garbage collections through gc.callbacks. A full collection walks every live
    container object (torch, pygame and numpy bring hundreds of thousands), which can stall the loop for
    longer than a 28.6 ms tick; the run report shows how long they took."""

    SLOW_S = 0.005

    def __init__(self) -> None:
        self.count = 0
        self.slow = 0                        # collections of SLOW_S or more
        self.max_s = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        took = time.perf_counter() - self._start
        self.count += 1
        self.slow += took >= self.SLOW_S
        self.max_s = max(self.max_s, took)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


class Stats:
    """Everything the HUD and the headless report show, measured by the loop. Times in seconds."""

    def __init__(self, history: int = 350):
        self.tick = Series(history)          # whole tick: input + backend step + upload
        self.model = Series(history)         # backend work (GPU time via CUDA events on CUDA)
        self.interval = Series(history)      # between tick starts -> tick rate
        self.frame = Series(history)         # between presented display frames -> display FPS
        self.latency = Series(history)       # input poll -> frame presented
        self.ticks = 0
        self.late = 0                        # ticks that ended after their slot (no catch-up is queued)
        self.late_at: list[tuple[int, float]] = []   # (tick, seconds past its slot) of the first LATE_KEPT
        self.frames = 0
        self.hidden_s = 0.0                  # time the loop spent minimized/hidden (ticks wait, none count late)
        self.gc = GcPauses()

    LATE_KEPT = 100

    def count_late(self, over: float) -> None:
        self.late += 1
        if len(self.late_at) < self.LATE_KEPT:
            self.late_at.append((self.ticks, over))

    @staticmethod
    def rate(r: Rolling) -> float:
        m = float(np.mean(np.fromiter(r.values, float))) if r.values else 0.0
        return 1.0 / m if m > 0 else 0.0


def run_report(stats: Stats) -> dict[str, Any]:
    """Whole-run numbers (not the HUD's rolling window), in ms where a time: the headless/--ticks report."""
    rep: dict[str, Any] = {"ticks": stats.ticks, "late": stats.late, "frames": stats.frames,
                           "late_at": [[tick, round(over * 1e3, 2)] for tick, over in stats.late_at],
                           "gc": {"collections": stats.gc.count, "slow": stats.gc.slow,
                                  "max_ms": round(stats.gc.max_s * 1e3, 2)}}
    iv = stats.interval.run
    rep["tick_hz"] = 1.0 / iv.mean if iv.n else 0.0
    for name in ("tick", "model", "interval", "latency", "frame"):
        h = getattr(stats, name).run
        if h.n:
            rep.update({f"{name}_p50_ms": h.pct(50) * 1e3, f"{name}_p99_ms": h.pct(99) * 1e3,
                        f"{name}_max_ms": h.max * 1e3})
            if h.max_at is not None:
                rep[f"{name}_max_at_tick"] = h.max_at
    rep["hidden_s"] = round(stats.hidden_s, 3)
    return rep


def format_report(rep: dict[str, Any]) -> str:
    parts = [f"ticks {rep['ticks']}  late {rep['late']}  rate {rep['tick_hz']:.2f} Hz"]
    for name, label in (("tick", "tick"), ("model", "model"), ("latency", "input->present"), ("frame", "display frame")):
        if f"{name}_p50_ms" in rep:
            parts.append(f"{label} p50 {rep[f'{name}_p50_ms']:.2f} p99 {rep[f'{name}_p99_ms']:.2f} "
                         f"max {rep[f'{name}_max_ms']:.2f} ms")
    if "gc" in rep:
        parts.append(f"gc {rep['gc']['collections']} collections, {rep['gc']['slow']} >= 5 ms, max {rep['gc']['max_ms']:.2f} ms")
    if rep.get("late_at"):
        parts.append("late at tick " + ", ".join(f"{t} (+{ms:.1f} ms)" for t, ms in rep["late_at"][:5]))
    return "  ".join(parts)
