"""Timing: perf_counter phase timers, rolling percentiles, and CUDA-event timers for GPU work."""
from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator

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
        return float(np.percentile(np.fromiter(self.values, float), q)) if self.values else float("nan")

    @property
    def last(self) -> float:
        return self.values[-1] if self.values else float("nan")

    def __len__(self) -> int:
        return len(self.values)


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


class Stats:
    """Everything the HUD and the headless report show, measured by the loop. Times in seconds."""

    def __init__(self, history: int = 350):
        self.tick = Rolling(history)         # whole tick: input + backend step + upload
        self.model = Rolling(history)        # backend work (GPU time via CUDA events on CUDA)
        self.interval = Rolling(history)     # between tick starts -> tick rate
        self.frame = Rolling(history)        # between presented display frames -> display FPS
        self.latency = Rolling(history)      # input poll -> frame presented
        self.ticks = 0
        self.late = 0                        # ticks that ended after their slot (no catch-up is queued)
        self.frames = 0

    @staticmethod
    def rate(r: Rolling) -> float:
        m = float(np.mean(np.fromiter(r.values, float))) if r.values else 0.0
        return 1.0 / m if m > 0 else 0.0
