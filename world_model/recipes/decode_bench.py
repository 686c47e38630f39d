"""How the decoder's precision and memory layout change its per-frame cost (one latent -> one uint8 frame).

    python -m world_model.recipes.decode_bench [--autoencoder assets/checkpoints/autoencoder.safetensors]
        [--reps 500] [--json FILE]

Every variant is captured as a CUDA graph (as GraphedSession runs the decoder) and timed with CUDA events:
  fp32-autocast   float32 weights under bf16 autocast (the player before runtime.cast_weights)
  bf16            bf16 weights, NCHW
  bf16-nhwc       bf16 weights and activations in channels_last (Autoencoder.inference_copy, the player now)
  bf16-nhwc-compile     the same decoder through torch.compile (inductor fuses GroupNorm, SiLU and the
                  residual adds around cuDNN's convolutions), then captured; --no-compile leaves it out
  bf16-nhwc-autotune    the same with mode="max-autotune-no-cudagraphs" (runtime.compile_decoder_mode):
                  inductor also times candidate kernels for each convolution (its build time is the compile)
Each row also gives the PSNR of its frame against fp32-autocast's on the same latents. CUDA only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from world_model.autoencoder import Autoencoder, frames_to_model, psnr
from world_model.graphs import StaticFn
from world_model.recipes.common import write_json

ROOT = Path(__file__).resolve().parents[2]


def time_graph(fn: StaticFn, z: torch.Tensor, reps: int) -> list[float]:
    """Milliseconds of each of `reps` replays of fn(z), CUDA events around each."""
    out = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(z)
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", default=str(ROOT / "assets/checkpoints/autoencoder.safetensors"))
    p.add_argument("--reps", type=int, default=500)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("decode_bench: needs CUDA", file=sys.stderr)
        return 1
    ae = Autoencoder.load(args.autoencoder, device="cuda")
    z = torch.randn(1, *ae.latent_shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    nhwc = ae.inference_copy(torch.bfloat16)                                # channels_last decoder

    def autocast(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return ae.decode_uint8(x)

    plain = ae.inference_copy(torch.bfloat16)
    plain.decoder.to(memory_format=torch.contiguous_format)
    plain.channels_last = False
    variants = {"fp32-autocast": autocast, "bf16": plain.decode_uint8, "bf16-nhwc": nhwc.decode_uint8}
    if not args.no_compile:
        variants["bf16-nhwc-compile"] = nhwc.with_compiled_decoder().decode_uint8   # runtime.compile_decoder
        variants["bf16-nhwc-autotune"] = nhwc.with_compiled_decoder(mode="max-autotune-no-cudagraphs").decode_uint8
    rows, reference = [], None
    with torch.no_grad():
        for name, fn in variants.items():
            t0 = time.perf_counter()
            graph = StaticFn(fn, [z], capture=True, pool=torch.cuda.graph_pool_handle())
            build_s = time.perf_counter() - t0
            ms = time_graph(graph, z, args.reps)
            frame = graph(z).clone()                                                  # (1, H, W, 3) uint8
            reference = frame if reference is None else reference
            db = float(psnr(frames_to_model(frame), frames_to_model(reference))[0])
            rows.append({"variant": name, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                         "psnr_vs_fp32_autocast_db": db, "build_s": build_s})
            print(f"{name:<15} p50 {rows[-1]['p50_ms']:.3f} ms  p99 {rows[-1]['p99_ms']:.3f} ms  "
                  f"PSNR vs fp32-autocast {db:.1f} dB", flush=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "reps": args.reps, "rows": rows,
              "command": "python -m world_model.recipes.decode_bench " + " ".join(sys.argv[1:] if argv is None else argv)}
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
