"""Per-frame autoencoder: 160x120 RGB <-> (C, 15, 20) latents, 8x down, no temporal compression.

Why a plain deterministic autoencoder and not a VAE: the world model needs latents it can predict
and a decoder that is fast and sharp. A VAE's KL term trades reconstruction for a Gaussian prior
that a diffusion model on top does not need; what it does need -- latents of bounded, known scale
and a decoder that tolerates small errors in them -- comes more simply from
  * a small L2 penalty on the raw latents (keeps them near zero, bounded), and
  * Gaussian noise added to the latents during training, relative to their batch std (the decoder
    learns to decode slightly wrong latents, which is what the DiT will hand it),
  * a stored `scale` (1 / latent std, measured after training) so `encode` returns ~unit std.

Encoder and decoder are plain conv stacks (GroupNorm, SiLU, 3x3 convs, residual blocks, nearest
upsampling), no attention: the decoder must run one frame in about 1 ms, and at 8x the latent grid
(20x15) is small enough that convs see the whole frame after a few layers. The encoder may be
wider than the decoder: only decoding runs every tick during play.
"""
from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from settings import SettingsError, from_dict

from . import checkpoint


@dataclass(frozen=True)
class AutoencoderConfig:
    latent_channels: int = field(default=32, metadata={"min": 1, "max": 256})
    downsample: int = field(default=8, metadata={"choices": (2, 4, 8, 16)})
    height: int = field(default=120, metadata={"min": 8})
    width: int = field(default=160, metadata={"min": 8})
    # Channels per resolution level, full resolution first (encoder) / latent resolution first (decoder).
    # len == log2(downsample) + 1.
    enc_channels: tuple[int, ...] = (32, 64, 128, 128)
    dec_channels: tuple[int, ...] = (128, 128, 64, 32)
    enc_blocks: int = field(default=1, metadata={"min": 0, "max": 4})   # residual blocks per level
    dec_blocks: int = field(default=1, metadata={"min": 0, "max": 4})
    groups: int = field(default=8, metadata={"min": 1})                 # GroupNorm groups

    def __post_init__(self) -> None:
        levels = int(math.log2(self.downsample)) + 1
        for name in ("enc_channels", "dec_channels"):
            chans = getattr(self, name)
            if len(chans) != levels:
                raise ValueError(f"{name}: needs {levels} entries for downsample {self.downsample}, got {list(chans)}")
            if any(c <= 0 or c % self.groups for c in chans):
                raise ValueError(f"{name}: every entry must be a positive multiple of groups={self.groups}")
        if self.height % self.downsample or self.width % self.downsample:
            raise ValueError(f"height/width {self.height}x{self.width} must be multiples of downsample {self.downsample}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.height // self.downsample, self.width // self.downsample)


class ResBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)   # each block starts as the identity: stable without warm-up tricks
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.enc_channels
        self.stem = nn.Conv2d(3, ch[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, c in enumerate(ch):
            blocks = [ResBlock(c, cfg.groups) for _ in range(cfg.enc_blocks)]
            if i + 1 < len(ch):
                blocks.append(nn.Conv2d(c, ch[i + 1], 3, stride=2, padding=1))   # halve H and W
            self.levels.append(nn.Sequential(*blocks))
        self.norm = nn.GroupNorm(cfg.groups, ch[-1])
        self.out = nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)                          # (B, c0, H, W)
        for level in self.levels:
            h = level(h)                          # (B, c_last, H/8, W/8) after the last level
        return self.out(F.silu(self.norm(h)))     # (B, C, H/8, W/8)


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.dec_channels
        self.stem = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, c in enumerate(ch):
            blocks = [ResBlock(c, cfg.groups) for _ in range(cfg.dec_blocks)]
            if i + 1 < len(ch):
                # nearest 2x then a 3x3 conv: no checkerboard artifacts of transposed convs
                blocks += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, ch[i + 1], 3, padding=1)]
            self.levels.append(nn.Sequential(*blocks))
        self.norm = nn.GroupNorm(cfg.groups, ch[-1])
        self.out = nn.Conv2d(ch[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.stem(z)                          # (B, c0, h, w)
        for level in self.levels:
            h = level(h)                          # (B, c_last, H, W) after the last level
        return self.out(F.silu(self.norm(h)))     # (B, 3, H, W)


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # encode() returns raw * scale. 1.0 until the training recipe measures the latent std.
        self.register_buffer("scale", torch.ones(()))
        self.channels_last = False   # decoder weights and activations in channels_last (inference_copy)
        # with_compiled_decoder(background=True): set when the worker is done, its time, why it failed
        self.decoder_ready: threading.Event | None = None
        self.decoder_compile_s: float | None = None
        self.decoder_compile_error: BaseException | None = None
        self.decoder_compile_pending: threading.Thread | None = None   # the worker, until started
        self.decoder_compile_mode: str | None = None                    # torch.compile's mode, if any

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> unscaled latents (B, C, H/8, W/8). Training uses this."""
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> z (B, C, H/8, W/8) with ~unit std (in the encoder's dtype)."""
        return self.encoder(x.to(self.encoder.stem.weight.dtype)) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, H/8, W/8) as returned by encode -> x (B, 3, H, W), about [-1, 1], not clamped."""
        z = (z / self.scale).to(self.decoder.stem.weight.dtype)
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        return self.decoder(z)

    def inference_copy(self, dtype: torch.dtype) -> "Autoencoder":
        """A copy for playing: encoder and decoder weights in `dtype` (bf16 on CUDA, float32 on the CPU), the
        decoder in channels_last; `scale` stays float32."""
        copy = Autoencoder(self.config).to(self.scale.device)
        copy.load_state_dict(self.state_dict())
        copy.encoder.to(dtype)
        # channels_last: the decoder took 0.49 ms against 0.54 in NCHW on the H100 (bf16), same frames
        # (docs/metrics/decode-h100-4.json), and 50 ms against 59 on the 2-core CPU (float32, session 9); its
        # uint8 output is then already (B, H, W, 3) in memory.
        copy.decoder.to(dtype, memory_format=torch.channels_last)
        copy.channels_last = True
        return copy.eval()

    def with_compiled_decoder(self, backend: Any = "inductor", background: bool = False,
                              batch: int = 1, mode: str | None = None) -> "Autoencoder":
        """A twin sharing these weights whose decoder runs through torch.compile (`backend` other than
        inductor only for tests; `mode` is torch.compile's, e.g. "max-autotune-no-cudagraphs": inductor
        times candidate kernels for each convolution, which makes the compile minutes long).

        background=False: compiled on the first decode (the first frame waits ~12 s on an H100, ~2 s with
        inductor's on-disk cache warm). background=True: a worker thread compiles it on a latent batch of
        `batch` and swaps it in when it is ready (`decoder_ready` is then set, `decoder_compile_s` says how
        long it took, `decoder_compile_error` holds an exception that kept the stock decoder); until then
        the twin decodes with the stock decoder, so the first frame does not wait. The worker starts at
        `start_decoder_compile()`, which Session.decode calls once the first frame is decoded: started at
        once, it held the GIL through the session's first tick and its CUDA-graph captures, and the first
        frame came only as the compile ended (11-17 s on an H200, session 11)."""
        twin = Autoencoder(self.config).to(self.scale.device)
        twin.encoder, twin.scale, twin.channels_last = self.encoder, self.scale, self.channels_last
        twin.decoder_compile_mode = mode
        options = {"dynamic": False, "backend": backend, **({"mode": mode} if mode else {})}
        if not background:
            twin.decoder = torch.compile(self.decoder, **options)
            return twin.eval()
        twin.decoder = self.decoder
        twin.decoder_ready = threading.Event()
        example = torch.zeros(batch, *self.latent_shape, device=self.scale.device, dtype=self.decoder.stem.weight.dtype)
        if self.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)   # as decode() hands it over
        twin.decoder_compile_pending = threading.Thread(target=_compile_decoder, daemon=True, name="compile-decoder",
                                                        args=(twin, self.decoder, options, example))
        return twin.eval()

    def start_decoder_compile(self) -> None:
        """Start the background compile of with_compiled_decoder(background=True), once; otherwise nothing.

        While it runs, the interpreter hands the GIL between threads every 0.5 ms instead of 5: the compile
        is pure Python for seconds, and each time the player's thread gives the GIL up (a CUDA sync, a graph
        replay) it would otherwise wait up to the full interval to get it back, every tick."""
        worker, self.decoder_compile_pending = self.decoder_compile_pending, None
        if worker is not None:
            _short_switch_interval(+1)
            worker.start()

    def decode_uint8(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, h, w) -> frames (B, H, W, 3) uint8 on z's device, contiguous for one copy to host."""
        x = self.decode(z)                                                     # (B, 3, H, W)
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous()                              # (B, H, W, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self, path: str | Path, meta: dict[str, str] | None = None, quantize_int8: bool = False) -> list[Path]:
        return checkpoint.save(path, self.state_dict(), kind="autoencoder", config=self.config, meta=meta,
                               quantize_int8=quantize_int8)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> "Autoencoder":
        """Build from a kind="autoencoder" checkpoint; CheckpointError if it does not fit."""
        tensors, config, _ = checkpoint.load(path, kind="autoencoder", dtype=dtype)
        try:
            model = cls(from_dict(config, AutoencoderConfig, source=str(path), prefix="config."))
        except (SettingsError, ValueError) as e:
            raise checkpoint.CheckpointError(str(e).splitlines()[0]) from None
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError:
            raise checkpoint.CheckpointError(f"{path}: tensors do not match the stored autoencoder config") from None
        return model.to(device=device, dtype=dtype).eval()


def _compile_decoder(twin: Autoencoder, decoder: nn.Module, options: dict[str, Any], example: torch.Tensor) -> None:
    """Worker thread of with_compiled_decoder(background=True): compile by calling, then swap.

    Even `torch.compile(...)` itself runs here: its first call in a process imports dynamo, 5 s on the CPU
    here, and done in the main thread it held back the first frame (8 s on an H200, session 11).

    Runs on its own CUDA stream so that its kernels do not queue behind (or between) the player's graph
    replays; the player's graph captures use capture_error_mode="thread_local" (graphs.py), which lets this
    thread use CUDA meanwhile. Assigning `twin.decoder` is one atomic attribute store: a decode in flight
    finishes with the module it started with, and GraphedSession re-captures its decode graph when it
    sees another decoder object."""
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(decoder, **options)
        stream = torch.cuda.Stream(example.device) if example.is_cuda else None
        with torch.no_grad(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
            for _ in range(2):                 # the second call checks the guards hold: no recompile later
                compiled(example)
        if stream is not None:
            stream.synchronize()
        twin.decoder = compiled
    except Exception as e:                     # keep playing on the stock decoder; the caller can look
        twin.decoder_compile_error = e
        warnings.warn(f"compiling the decoder failed, keeping the stock one: {e!r}")
    twin.decoder_compile_s = time.perf_counter() - t0
    _short_switch_interval(-1)
    twin.decoder_ready.set()


_compiles = {"running": 0, "interval": 0.005}   # background compiles under way; the interval before them
_compiles_lock = threading.Lock()


def _short_switch_interval(change: int) -> None:
    """The GIL switch interval is 0.5 ms while any background compile runs (see start_decoder_compile)."""
    with _compiles_lock:
        if _compiles["running"] == 0:
            _compiles["interval"] = sys.getswitchinterval()
        _compiles["running"] += change
        sys.setswitchinterval(min(_compiles["interval"], 0.0005) if _compiles["running"] else _compiles["interval"])


def frames_to_model(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] (on the frames' device)."""
    return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two (B, 3, H, W) images in [-1, 1], measured on the 0..255 uint8 grid."""
    a = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
    b = ((y.float().clamp(-1, 1) + 1) * 127.5).round()
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0**2 / mse)
