"""Where a played tick's GPU time goes: kernel names, counts and times per tick, from the torch profiler.

    python -m world_model.recipes.profile_tick [--model assets/checkpoints/student.safetensors]
        [--teacher assets/checkpoints/teacher.safetensors] [--ticks 20] [--json FILE]

The sessions are built as the player builds them on CUDA (bf16 weights, CUDA graphs, fused re-encode), the
student at 1 step and the teacher at its 16, seeded with random latents; every tick is `step_decoded` then the
copy to host. The profiler records the kernels inside graph replays too. Per variant it reports the wall time
per tick, the summed kernel time per tick (the gap between the two is launch and host time the GPU idles
through), the kernel count, and the kernels that take most time. Why: at batch 1 a pass is launch-bound, so
what to make faster is a question of which kernels, not of FLOPs (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Any

import torch

from world_model.autoencoder import Autoencoder
from world_model.model import load_model
from world_model.recipes.common import player_session, timing_parser, write_json
from world_model.sampler import SamplerConfig



def profile_session(session: Any, steps: int, ticks: int, warmup: int, seed: int = 0) -> dict[str, Any]:
    """Run warmup + ticks played ticks, profiling the last `ticks`; kernel table per tick (on the CPU: the
    top-level operators and their CPU time instead)."""
    cuda = session.device.type == "cuda"
    g = torch.Generator().manual_seed(seed)
    acts = [torch.rand(1, 5, generator=g) * 2 - 1 for _ in range(warmup + ticks)]
    with torch.no_grad():
        for a in acts[:warmup]:
            session.step_decoded(a, steps=steps)[1][0].cpu()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for a in acts[warmup:]:
                session.step_decoded(a, steps=steps)[1][0].cpu()
            wall_ms = (time.perf_counter() - t0) * 1000.0 / ticks
    per_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA or (not cuda and ev.cpu_parent is None):
            per_name[ev.name][0] += (ev.device_time if cuda else ev.cpu_time_total) / 1000.0      # us -> ms
            per_name[ev.name][1] += 1
    rows = sorted(({"kernel": k[:120], "ms_per_tick": v[0] / ticks, "count_per_tick": v[1] / ticks}
                   for k, v in per_name.items()), key=lambda r: -r["ms_per_tick"])
    return {"wall_ms_per_tick": wall_ms, "kernel_ms_per_tick": sum(r["ms_per_tick"] for r in rows),
            "kernels_per_tick": sum(r["count_per_tick"] for r in rows), "top": rows[:30]}


def main(argv: list[str] | None = None) -> int:
    args = timing_parser(__doc__, ticks=20, warmup=20, cpu_note="eager, float32", teacher=True).parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("profile_tick: no CUDA device (--device cpu runs it eagerly)", file=sys.stderr)
        return 1
    ae = Autoencoder.load(args.autoencoder, device=dev)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                              "command": "python -m world_model.recipes.profile_tick " + " ".join(
                                  sys.argv[1:] if argv is None else argv), "variants": {}}
    for name, path, steps, kind in (("student1", args.model, 1, "consistency"), ("teacher16", args.teacher, 16, "euler")):
        model = load_model(path).to(dev)
        session = player_session(model, ae, dev, SamplerConfig(kind=kind, steps=16))
        r = profile_session(session, steps, args.ticks, args.warmup)
        report["variants"][name] = r
        print(f"\n{name}: wall {r['wall_ms_per_tick']:.3f} ms/tick, kernels {r['kernel_ms_per_tick']:.3f} ms/tick "
              f"in {r['kernels_per_tick']:.0f} kernels", flush=True)
        for row in r["top"][:20]:
            print(f"  {row['ms_per_tick']:7.4f} ms  x{row['count_per_tick']:5.1f}  {row['kernel']}")
        del session, model
        if dev == "cuda":
            torch.cuda.empty_cache()
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
