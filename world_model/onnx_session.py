"""onnxruntime backend: a Session whose DiT step and decoder run as exported ONNX graphs (onnx_export.py).

    session = OrtSession(model, window=32, sink=1, device="cuda", seed=0, autoencoder=ae, onnx_dir="out/onnx")

Everything else is the torch Session: the sampler, the noise, the non-finite check, savestates, and the
KVCache, whose storage and read-time tables (computed by torch on the device) are bound to the graph as
inputs. onnxruntime reads and writes torch tensors in place through I/O binding: the CUDA execution
provider on the GPU (on torch's current stream, so no copies and no extra sync), the CPU provider on the
CPU. The graphs are float32 (the exported weights), so on the GPU this is an fp32 path.

Differences from Session: the graph takes one frame, so seed frames are appended one at a time (the same
attention as a block-causal chunk, up to rounding); and the batch size is fixed at export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from world_model.kv_cache import CacheMode, KVCache
from world_model.model import ModelConfig, WorldModel
from world_model.onnx_export import DIT_INPUTS, export_decoder, export_dit
from world_model.rollout import Session

NUMPY = {torch.float32: np.float32, torch.bool: np.bool_, torch.uint8: np.uint8, torch.int64: np.int64}


def ort_session(path: str | Path, device: torch.device) -> Any:
    """An InferenceSession on the CUDA provider (torch's stream) or the CPU provider; RuntimeError if the
    CUDA provider is wanted and onnxruntime cannot load it (e.g. plain `onnxruntime` without `-gpu`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = torch.get_num_threads()   # as many CPU threads as torch
    # Idle ORT worker threads spin by default, starving torch (sampler, cache tables) on the same cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device.type == "cuda":
        cuda = {"device_id": device.index or 0,
                "user_compute_stream": str(torch.cuda.current_stream(device).cuda_stream)}
        sess = ort.InferenceSession(str(path), opts, providers=[("CUDAExecutionProvider", cuda)])
        if "CUDAExecutionProvider" not in sess.get_providers():
            raise RuntimeError(f"onnxruntime has no usable CUDA execution provider (providers: "
                               f"{ort.get_available_providers()}); install onnxruntime-gpu")
        return sess
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_bound(sess: Any, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
    """Run with every input and output bound to a contiguous torch tensor's memory (no copies)."""
    binding = sess.io_binding()
    for bind, named in ((binding.bind_input, inputs), (binding.bind_output, outputs)):
        for name, x in named.items():
            if not x.is_contiguous():
                raise ValueError(f"{name}: onnxruntime binding needs a contiguous tensor")
            bind(name, x.device.type, x.device.index or 0, NUMPY[x.dtype], tuple(x.shape), x.data_ptr())
    sess.run_with_iobinding(binding)


class OrtWorldModel:
    """Stands in for WorldModel inside Session: one streaming frame against a KVCache, run by onnxruntime."""

    def __init__(self, model: WorldModel, *, batch: int, sink: int, window: int, device: torch.device,
                 onnx_dir: str | Path):
        self.config: ModelConfig = model.config
        self.batch, self.sink, self.window, self.device = batch, sink, window, device
        self.path = export_dit(model, onnx_dir, batch=batch, sink=sink, window=window)
        self.sess = ort_session(self.path, device)
        cfg = model.config
        new_kv = (cfg.depth, batch, cfg.heads, cfg.tokens_per_frame, cfg.head_dim)
        self.out = {"v": torch.empty(batch, 1, *cfg.latent_shape, device=device),
                    "new_k": torch.empty(new_kv, device=device), "new_v": torch.empty(new_kv, device=device)}
        self.all_keep = torch.ones(batch, 1, dtype=torch.bool, device=device)

    def new_cache(self, *, batch: int, sink: int, window: int, device: torch.device | str,
                  dtype: torch.dtype) -> KVCache:
        if (batch, sink, window) != (self.batch, self.sink, self.window):
            raise ValueError(f"the ONNX step was exported for batch {self.batch}, sink {self.sink}, window "
                             f"{self.window}; got batch {batch}, sink {sink}, window {window}")
        cfg = self.config
        return KVCache(layers=cfg.depth, batch=batch, heads=cfg.heads, head_dim=cfg.head_dim,
                       tokens_per_frame=cfg.tokens_per_frame, sink=sink, window=window, device=device,
                       dtype=torch.float32)

    def __call__(self, x: Tensor, t: Tensor, action: Tensor, action_mask: Tensor | None = None, *,
                 cache: KVCache | None = None, cache_mode: CacheMode = CacheMode.READONLY,
                 commit: bool = True, **unsupported: Any) -> Tensor:
        """WorldModel.forward for one frame (B, 1, C, h, w) with a cache; returns v (B, 1, C, h, w)."""
        if cache is None or x.shape[1] != 1 or any(v is not None for v in unsupported.values()):
            raise ValueError("the onnxruntime backend only runs one streaming frame against a KV cache")
        keep = self.all_keep if action_mask is None else action_mask
        values = (x.float(), t.float(), action.float(), keep, cache.k, cache.v, cache.valid, cache.slot_pos,
                  cache.query_positions(1))
        run_bound(self.sess, {n: v.contiguous() for n, v in zip(DIT_INPUTS, values)}, self.out)
        if cache_mode is CacheMode.APPEND:
            for layer in range(self.config.depth):
                cache.write(layer, self.out["new_k"][layer], self.out["new_v"][layer])
            if commit:
                cache.advance(1)
        return self.out["v"].clone()     # clone: guidance holds one velocity while computing the next


class OrtAutoencoder:
    """The torch autoencoder with decode_uint8 run by onnxruntime (encode stays torch: it runs at reset)."""

    def __init__(self, autoencoder: Any, *, batch: int, device: torch.device, onnx_dir: str | Path):
        self.torch_autoencoder = autoencoder
        self.config, self.latent_shape = autoencoder.config, autoencoder.latent_shape
        self.path = export_decoder(autoencoder, onnx_dir, batch=batch)
        self.sess = ort_session(self.path, device)
        cfg = autoencoder.config
        self.frames = torch.empty(batch, cfg.height, cfg.width, 3, dtype=torch.uint8, device=device)

    def encode(self, x: Tensor) -> Tensor:
        return self.torch_autoencoder.encode(x)

    def decode_uint8(self, z: Tensor) -> Tensor:
        run_bound(self.sess, {"z": z.float().contiguous()}, {"frames": self.frames})
        return self.frames.clone()


class OrtSession(Session):
    """Session on onnxruntime. Same interface; `onnx_dir` caches the exports; batch is fixed (default 1)."""

    def __init__(self, model: WorldModel, *, window: int, sink: int, device: torch.device | str,
                 autoencoder: Any = None, onnx_dir: str | Path = "out/onnx", batch: int = 1, **session_kw: Any):
        device = torch.device(device)
        session_kw["dtype"] = torch.float32          # the exported graphs are float32
        ort_model = OrtWorldModel(model, batch=batch, sink=sink, window=window, device=device, onnx_dir=onnx_dir)
        ort_ae = None if autoencoder is None else OrtAutoencoder(autoencoder, batch=batch, device=device,
                                                                 onnx_dir=onnx_dir)
        super().__init__(ort_model, window=window, sink=sink, device=device, autoencoder=ort_ae, **session_kw)

    def _append(self, latents: Tensor, actions: Tensor) -> None:
        for i in range(latents.shape[1]):            # the exported graph takes one frame
            super()._append(latents[:, i:i + 1], actions[:, i:i + 1])
