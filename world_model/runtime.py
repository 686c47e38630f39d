"""Which engine runs the streaming Session: eager torch, CUDA graphs, or onnxruntime.

The player reads this from the `runtime:` section of settings/play.yaml; the benchmark builds every engine
through `make_session`, so what it measures is what the player runs. Importing this file does not import
torch (app/config.py imports it to read settings).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from world_model.rollout import Session

ENGINES = ("eager", "graphs", "onnxruntime")


@dataclass(frozen=True)
class RuntimeConfig:
    engine: Literal["auto", "eager", "graphs", "onnxruntime"] = "auto"  # auto: graphs on CUDA, eager on CPU
    onnx_dir: str = "out/onnx"        # exported ONNX graphs, cached by a hash of weights and shapes
    # Re-encode each frame inside the next frame's first denoising pass (one pass fewer per tick; same
    # frames up to float rounding). eager and graphs; onnxruntime's step takes one frame, so it runs unfused.
    # On by default: the student's 1-step tick went from 4.47 to 2.83 ms on the H100 (graphs) and from 81 to
    # 64 ms on the 2-core CPU (docs/BENCHMARKS.md).
    fuse_reencode: bool = True
    # torch.compile (inductor) the model for the eager and graphs engines: fewer, fused kernels. On the H100
    # (bf16 weights) the 1-step tick falls from 2.09 to 1.71 ms (graphs, fused), but the first frame takes
    # ~51 s of compiling (14 s with inductor's on-disk cache warm; docs/BENCHMARKS.md).
    compile: bool = False
    # On CUDA with a bf16 (or fp16) session, hold the weights in that dtype instead of float32 under autocast:
    # autocast re-casts every weight in every pass, which in a launch-bound pass is many extra kernels.
    cast_weights: bool = True
    # torch.compile the decoder alone (eager and graphs engines): inductor fuses its GroupNorms, whose stock
    # kernel runs one thread block per group (8 blocks on 132 SMs) at batch 1. One frame: 0.21 ms against
    # 0.48-0.53 on an H100 and an H200 (docs/BENCHMARKS.md, sessions 9 and 10). auto: on CUDA only (on the
    # CPU inductor's C++ build would compete with the player for a few cores, for no measured gain). Off by
    # default (here and in settings/play.yaml): the background compile works on GPUs (sessions 11-12: swapped
    # in every time), but while it runs the ticks stall. Session 12, one H100, cold cache: for about 14 s the
    # ticks took 15-23 ms, up to 327 ms, against 2.3 ms, and 89 ticks were late for a 35 Hz frame. On 2 CPU
    # cores they stalled up to 0.8 s. 0.3 ms is nothing against a 28 ms tick; the benchmark turns it on with
    # --compile-decoder.
    compile_decoder: Literal["auto", "on", "off"] = "off"
    # False: a worker thread compiles the decoder while the session plays on the stock one, then swaps it in
    # (cold 12-34 s on an H100, 2-15 s with inductor's cache warm), so the first frame does not wait. True: the
    # first decode compiles it (the first frame waits that long).
    compile_decoder_wait: bool = False
    # torch.compile's mode for the decoder: "default", or "max-autotune-no-cudagraphs" (inductor times several
    # kernels for each convolution and keeps the fastest; minutes of compiling, in the background; our own
    # CUDA graphs replay the result). It does not pay: 0.229 ms against 0.218 for the default mode, after
    # 87 s of compiling instead of 34 (one H100, docs/BENCHMARKS.md, session 12).
    compile_decoder_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    # Which scaled_dot_product_attention kernel the model's passes may use (torch.nn.attention.sdpa_kernel).
    # auto: torch's choice, which on an H200 times the same as cudnn (student DiT 1.24 ms); efficient was 33%
    # slower (docs/BENCHMARKS.md, session 11). (Flash attention takes no mask, so it is not offered.)
    attention: Literal["auto", "cudnn", "efficient", "math"] = "auto"

    def decoder_compiled(self, device: Any) -> bool:
        """Whether sessions on `device` get a compiled decoder."""
        return self.compile_decoder == "on" or (self.compile_decoder == "auto" and str(device).startswith("cuda"))


def resolve_engine(engine: str, device: Any) -> str:
    """'auto' -> 'graphs' on CUDA, 'eager' on the CPU; ValueError for graphs without CUDA."""
    cuda = str(device).startswith("cuda")
    if engine == "auto":
        return "graphs" if cuda else "eager"
    if engine == "graphs" and not cuda:
        raise ValueError("runtime.engine: graphs needs a CUDA device; use eager or onnxruntime on the CPU")
    if engine not in ENGINES:
        raise ValueError(f"runtime.engine must be auto or one of {ENGINES}, got {engine!r}")
    return engine


def make_session(model: Any, *, runtime: RuntimeConfig, window: int, sink: int, device: Any,
                 onnx_dir: str | Path | None = None, **session_kw: Any) -> "Session":
    """A Session (or GraphedSession / OrtSession) for `runtime.engine`; `session_kw` as for Session.
    `onnx_dir` overrides runtime.onnx_dir (e.g. resolved against the repo root by the player)."""
    engine = resolve_engine(runtime.engine, device)
    if engine == "onnxruntime":
        if runtime.compile:
            raise ValueError("runtime.compile needs engine eager or graphs (onnxruntime has its own graph optimiser)")
        from world_model.onnx_session import OrtSession
        return OrtSession(model, window=window, sink=sink, device=device,
                          onnx_dir=onnx_dir or runtime.onnx_dir, **session_kw)
    session_kw["fuse_reencode"] = runtime.fuse_reencode
    session_kw["attention"] = runtime.attention
    if runtime.decoder_compiled(device) and session_kw.get("autoencoder") is not None:
        session_kw["autoencoder"] = session_kw["autoencoder"].with_compiled_decoder(
            background=not runtime.compile_decoder_wait,
            mode=None if runtime.compile_decoder_mode == "default" else runtime.compile_decoder_mode)
    if runtime.compile:
        import torch
        model = torch.compile(model, dynamic=False)
    if engine == "graphs":
        from world_model.graphs import GraphedSession
        return GraphedSession(model, window=window, sink=sink, device=device, capture=True, **session_kw)
    from world_model.rollout import Session
    return Session(model, window=window, sink=sink, device=device, **session_kw)


def cast_for_inference(model: Any, autoencoder: Any, *, runtime: RuntimeConfig, device: Any,
                       dtype: Any) -> tuple[Any, Any]:
    """The world model and autoencoder the way a session should run them: with runtime.cast_weights on CUDA
    and a bf16/fp16 dtype, copies with weights in that dtype (Session then runs them without autocast);
    otherwise the same world model. The autoencoder is always an `inference_copy` (its decoder in
    channels_last), in that dtype or in its own; its latent `scale` stays float32."""
    import torch

    if not (runtime.cast_weights and str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16)):
        return model, None if autoencoder is None else autoencoder.inference_copy(autoencoder.encoder.stem.weight.dtype)
    from world_model.model import WorldModel

    cast = WorldModel(model.config).to(device)
    cast.load_state_dict(model.state_dict())
    return cast.to(dtype).eval(), None if autoencoder is None else autoencoder.inference_copy(dtype)
