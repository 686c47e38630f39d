"""Export the streaming step to ONNX: the DiT for one frame with the KV cache as inputs, and the decoder.

DiT graph (fixed shapes: batch B, L layers, H heads, S = sink + window slots, P tokens per frame, head dim Dh):
  inputs   x (B, 1, C, h, w) f32, t (B, 1) f32, action (B, 1, A) f32, keep (B, 1) bool (False: null action),
           cache_k, cache_v (L, B, H, S*P, Dh) f32 (pre-RoPE, as KVCache stores them),
           valid (S,) bool, slot_pos (S,) f32, query_pos (1,) f32 (KVCache's read-time tables)
  outputs  v (B, 1, C, h, w), new_k, new_v (L, B, H, P, Dh): this frame's pre-RoPE keys/values.
The caller writes new_k/new_v into its cache for the t=0 re-encode (APPEND) and ignores them for the
denoising passes (READONLY), so one graph serves both and holds no scatter. The cache has a fixed capacity
and masks empty slots, so no shape in the graph depends on the data (platform.md section 3: the TorchScript
exporter, dynamo=False, opset 17).

Decoder graph: z (B, C, h, w) f32 -> frames (B, H, W, 3) uint8 (Autoencoder.decode_uint8).
Exports are cached by a hash of the weights, config and shapes, so a restart reuses them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from world_model.kv_cache import CacheMode
from world_model.model import WorldModel

OPSET = 17
DIT_INPUTS = ("x", "t", "action", "keep", "cache_k", "cache_v", "valid", "slot_pos", "query_pos")
DIT_OUTPUTS = ("v", "new_k", "new_v")


class _GraphCache:
    """What WorldModel.forward uses of a KVCache, over graph inputs; `write` collects instead of storing."""

    def __init__(self, k: Tensor, v: Tensor, valid: Tensor, slot_pos: Tensor, query_pos: Tensor):
        self.k, self.v, self.valid, self.slot_pos, self.query_pos = k, v, valid, slot_pos, query_pos
        self.new_k: list[Tensor] = []
        self.new_v: list[Tensor] = []

    def query_positions(self, frames: int) -> Tensor:
        return self.query_pos[:frames]

    def read(self, layer: int) -> tuple[Tensor, Tensor]:
        return self.k[layer], self.v[layer]

    def check_append(self, frames: int) -> None:
        if frames != 1:
            raise ValueError("the exported step takes one frame")

    def write(self, layer: int, k: Tensor, v: Tensor) -> None:
        self.new_k.append(k)
        self.new_v.append(v)


class StreamingStep(nn.Module):
    """WorldModel.forward for one frame against a cache given as tensors (the module that is exported)."""

    def __init__(self, model: WorldModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor, action: Tensor, keep: Tensor, cache_k: Tensor, cache_v: Tensor,
                valid: Tensor, slot_pos: Tensor, query_pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cache = _GraphCache(cache_k, cache_v, valid, slot_pos, query_pos)
        v = self.model(x, t, action, keep, cache=cache, cache_mode=CacheMode.APPEND, commit=False)
        return v, torch.stack(cache.new_k), torch.stack(cache.new_v)        # (B,1,C,h,w), 2 x (L,B,H,P,Dh)


class DecodeUint8(nn.Module):
    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, z: Tensor) -> Tensor:
        return self.autoencoder.decode_uint8(z)                              # (B, H, W, 3) uint8


class _RMSNorm(nn.Module):
    """nn.RMSNorm written out: opset 17 has no RMSNormalization (opset 23) and the exporter no symbol for it."""

    def __init__(self, norm: nn.RMSNorm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _exportable(module: nn.Module) -> nn.Module:
    """A CPU float32 copy with nn.RMSNorm replaced by _RMSNorm."""
    module = copy.deepcopy(module).float().cpu().eval()
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.RMSNorm):
                setattr(parent, name, _RMSNorm(child))
    return module


def dit_example(model: WorldModel, *, batch: int, sink: int, window: int) -> tuple[Tensor, ...]:
    """Zero inputs of the exported DiT step's shapes and dtypes (also what onnx_session binds)."""
    cfg = model.config
    slots = sink + window
    cache_shape = (cfg.depth, batch, cfg.heads, slots * cfg.tokens_per_frame, cfg.head_dim)
    return (torch.zeros(batch, 1, *cfg.latent_shape), torch.zeros(batch, 1), torch.zeros(batch, 1, cfg.action_inputs),
            torch.ones(batch, 1, dtype=torch.bool), torch.zeros(cache_shape), torch.zeros(cache_shape),
            torch.zeros(slots, dtype=torch.bool), torch.zeros(slots), torch.zeros(1))


def _fingerprint(module: nn.Module, config: Any, **shapes: int) -> str:
    h = hashlib.sha256()
    cfg = asdict(config) if is_dataclass(config) else config
    h.update(json.dumps({"config": cfg, "shapes": shapes, "opset": OPSET, "torch": torch.__version__},
                        sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: tuple[str, ...],
            outputs: tuple[str, ...]) -> Path:
    """TorchScript-based export of a CPU float32 copy, written atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    module = _exportable(module)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=list(outputs), do_constant_folding=True)
    os.replace(tmp, path)
    return path


def export_dit(model: WorldModel, directory: str | Path, *, batch: int, sink: int, window: int) -> Path:
    """Export (or reuse a cached export of) the one-frame streaming step; returns the .onnx path."""
    shapes = dict(batch=batch, sink=sink, window=window)
    path = Path(directory) / f"dit-{_fingerprint(model, model.config, **shapes)}.onnx"
    if path.exists():
        return path
    return _export(StreamingStep(model), dit_example(model, batch=batch, sink=sink, window=window), path,
                   DIT_INPUTS, DIT_OUTPUTS)


def export_decoder(autoencoder: nn.Module, directory: str | Path, *, batch: int) -> Path:
    """Export (or reuse) Autoencoder.decode_uint8 for a fixed batch; returns the .onnx path."""
    path = Path(directory) / f"decoder-{_fingerprint(autoencoder, autoencoder.config, batch=batch)}.onnx"
    if path.exists():
        return path
    z = torch.zeros(batch, *autoencoder.latent_shape)
    return _export(DecodeUint8(autoencoder), (z,), path, ("z",), ("frames",))
