"""Where the host's time goes in a played tick on CUDA: the student as the player runs it (CUDA graphs, fused
re-encode, bf16 weights, `step_decoded(host=True)`), each tick cut into host segments.

    python -m world_model.recipes.tick_host [--ticks 1000] [--json FILE] [--device cpu]

Segments (median over the ticks, perf_counter): from the tick's start to the first graph launch
("pre-replay": Python, the noise draw and the input copies, while the GPU idles), the launches themselves
(`StaticFn.run`), from there to the stream sync, the sync's wait (the GPU's work still queued), and from the
sync to the return. Only "pre-replay", the launch before the GPU starts, and "after" add to the tick on top
of the GPU's time. (Session 12's rows timed `StaticFn.__call__`, whose input copies now count as
"pre-replay".) It wraps `graphs.StaticFn.run` and
`torch.cuda.Stream.synchronize` to take the times, so it measures exactly the player's code path.
`--device cpu` runs the same session uncaptured (the graphs' functions, eagerly; no sync, so those two
segments read 0): to check the script, not to measure anything.

Why (docs/BENCHMARKS.md, session 12): the benchmark's student tick on an H100 is 0.2-0.35 ms longer than its
GPU phases, which decides whether the teacher/student ratio reaches 10x.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from world_model import graphs
from world_model.autoencoder import Autoencoder
from world_model.model import load_model
from world_model.recipes.common import player_session, timing_parser, write_json
from world_model.sampler import SamplerConfig

SEGMENTS = ("tick", "pre_replay", "replay_calls", "to_sync", "sync_wait", "after")


def timed_ticks(session: Any, n: int, action: Callable[[], torch.Tensor]) -> dict[str, float]:
    """n played ticks -> median microseconds per segment."""
    marks: dict[str, float] = {}
    replay, sync = graphs.StaticFn.run, torch.cuda.Stream.synchronize

    def call(self: graphs.StaticFn) -> Any:
        marks.setdefault("replay0", time.perf_counter())
        out = replay(self)
        marks["replayed"] = time.perf_counter()
        return out

    def synchronize(self: torch.cuda.Stream) -> None:
        marks["sync0"] = time.perf_counter()
        sync(self)
        marks["sync1"] = time.perf_counter()

    rows = []
    graphs.StaticFn.run, torch.cuda.Stream.synchronize = call, synchronize
    try:
        for _ in range(n):
            a = action()
            marks.clear()
            t0 = time.perf_counter()
            with torch.no_grad():
                session.step_decoded(a, steps=1, host=True)
            t1 = time.perf_counter()
            marks.setdefault("sync0", marks["replayed"])        # the CPU has no stream to sync
            marks.setdefault("sync1", marks["sync0"])
            rows.append((t1 - t0, marks["replay0"] - t0, marks["replayed"] - marks["replay0"],
                         marks["sync0"] - marks["replayed"], marks["sync1"] - marks["sync0"], t1 - marks["sync1"]))
    finally:
        graphs.StaticFn.run, torch.cuda.Stream.synchronize = replay, sync
    return {k: statistics.median(c) * 1e6 for k, c in zip(SEGMENTS, zip(*rows))}


def main(argv: list[str] | None = None) -> int:
    args = timing_parser(__doc__, ticks=1000, warmup=100, cpu_note="uncaptured").parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("tick_host: no CUDA device (--device cpu runs it uncaptured)")
        return 1
    model = load_model(args.model).to(dev).eval()
    ae = Autoencoder.load(args.autoencoder).to(dev).eval()
    session = player_session(model, ae, dev, SamplerConfig(kind="consistency"), cpu_graphed=True)
    g = torch.Generator().manual_seed(0)
    on_host = lambda: torch.rand(1, 5, generator=g) * 2 - 1          # as the player and the benchmark pass it
    on_device = torch.zeros(1, 5, device=dev)
    timed_ticks(session, args.warmup, on_host)                         # capture and warm-up
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
                              "torch": torch.__version__, "rows": {}}
    for name, act in (("action from the host (as the player)", on_host), ("action already on the GPU", lambda: on_device),
                      ("action from the host, again", on_host)):
        r = report["rows"][name] = timed_ticks(session, args.ticks, act)
        print(f"{name:38s} tick {r['tick']:6.0f} us | " + ", ".join(f"{k} {r[k]:.0f}" for k in SEGMENTS[1:]), flush=True)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
