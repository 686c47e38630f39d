"""Session: the one rollout implementation (player, evaluation and self-forcing training all use it).

    session = Session(model, window=15, sink=1, device="cuda", dtype=torch.bfloat16, seed=0, autoencoder=ae)
    session.reset_frames(seed_frames, seed_actions)     # t=0 pass over the seed frames fills the KV cache
    latent = session.step(action, steps=16)              # (B, C, h, w)
    frame = session.decode(latent)                       # (B, H, W, 3) uint8

Each step (Self-Forcing `causal_inference.py`, numbered as there):
  1. draw noise from the session's own generator (all of it up front: the start noise, then the
     consistency sampler's re-noising, in the order the sampler uses it);
  2. denoise it with the sampler; every denoising pass reads the cache and writes nothing (READONLY);
  3. re-run the clean prediction, detached, at t=0 with its action to append it to the cache (APPEND).
A frame whose prediction is not finite is never appended: the cache stays as it was (see NonFiniteError).
Steps 2 and 3 and `decode` are methods with fixed-shape inputs, which graphs.GraphedSession replays as
CUDA graphs. `timer`, when set, wraps them as phases "dit", "reencode" and "decode" (the benchmark's
CUDA-event timer).

fuse_reencode=True skips step 3: the clean frame is kept as `pending` and the next step's first denoising
pass runs over [pending clean frame at t=0 | noisy new frame] (CacheMode.FUSED, kv_cache.py), appending the
one and denoising the other in one forward. The same computation, one launch-bound pass fewer per frame.
Differences a caller can see: none in the frames (float rounding aside); reset leaves its last seed frame
pending; snapshots carry the pending frame; `cache_state()` counts it (with `pending=1`), so the HUD reads
as without fusion; `cache.position` itself is one behind. With grad=True the pending frame is appended by a
separate no-grad pass first (the fused pass would put the cache under the gradient's pass).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from world_model.actions import Action
from world_model.kv_cache import CacheMode, CacheState, KVCache
from world_model.model import WorldModel, action_features
from world_model.sampler import SamplerConfig, renoise_count, sample, schedule_for


ATTENTION = {"auto": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "math": SDPBackend.MATH}


class NonFiniteError(RuntimeError):
    """The model produced NaN/Inf. The frame was not appended, so the session is still usable; the caller
    may retry (fresh noise), restore a snapshot or reset."""


@dataclass
class SessionState:
    """Everything needed to continue a rollout bit-for-bit: a savestate."""
    cache: KVCache
    rng: Tensor
    frame: int
    last_latent: Tensor
    pending: tuple[Tensor, Tensor] | None = None   # fused: clean latent (B, C, h, w) and action (B, A) to append
    momentum: Tensor | None = None                 # action_features' running state (models with action_momentum)


class Session:
    def __init__(self, model: WorldModel, *, window: int, sink: int, device: torch.device | str,
                 dtype: torch.dtype = torch.float32, seed: int = 0, autoencoder: Any = None,
                 sampler: SamplerConfig = SamplerConfig(), check_finite: bool = True, fuse_reencode: bool = False,
                 attention: str = "auto"):
        self.model = model
        self.window, self.sink = window, sink
        self.device = torch.device(device)
        # bf16/fp16 on CUDA only; on the CPU everything runs in float32. float32 weights (training) run under
        # autocast; weights already in that dtype (the player's inference copy, runtime.make_session) run
        # natively, without autocast's per-pass weight casts.
        low = self.device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
        self.autocast = low and next(iter(model.parameters())).dtype == torch.float32
        self.dtype = dtype if low else torch.float32
        self.autoencoder = autoencoder
        self.sampler = sampler
        self.check_finite = check_finite
        self.fuse_reencode = fuse_reencode
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {sorted(ATTENTION)}, got {attention!r}")
        self.attention = attention      # runtime.attention: the SDPA kernel the passes may use
        self.generator = torch.Generator(self.device).manual_seed(seed)  # noise drawn where it is used
        self.cache: KVCache | None = None
        self.frame = 0                  # frames produced by step() since reset
        self.last_latent: Tensor | None = None
        self.pending: tuple[Tensor, Tensor] | None = None  # clean (x0, action) the next step's first pass appends
        self.momentum: Tensor | None = None   # action_features' running state: the seed's moves and every step's
        self.timer: Callable[[str], ContextManager[Any]] | None = None   # phase timer (benchmark)
        # Page-locked host buffers (CUDA): a tick's frames and finite flag come back in one sync (_to_host).
        self._host_frames: Tensor | None = None
        self._host_ok: Tensor | None = None

    # ---- setup ----

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def _kernels(self) -> contextlib.AbstractContextManager:
        """Autocast (if any) and the attention kernel choice, around every model pass (and so in its graphs)."""
        if self.attention == "auto":
            return self._autocast()
        stack = contextlib.ExitStack()
        stack.enter_context(self._autocast())
        stack.enter_context(sdpa_kernel(ATTENTION[self.attention]))
        return stack

    def _phase(self, name: str) -> ContextManager[Any]:
        return contextlib.nullcontext() if self.timer is None else self.timer(name)

    def _append(self, latents: Tensor, actions: Tensor) -> None:
        """t=0 pass over clean frames (B, F, C, h, w) that stores them in the cache."""
        self._append_device(latents, actions)
        self.cache.advance_host(latents.shape[1])

    def _append_device(self, latents: Tensor, actions: Tensor) -> None:
        """The device work of `_append` (the part a CUDA graph captures): the pass and the cache tables."""
        t = torch.full(latents.shape[:2], self.sampler.context_noise, device=self.device)
        with torch.no_grad(), self._kernels():
            self.model(latents, t, actions, cache=self.cache, cache_mode=CacheMode.APPEND, commit=False)
        self.cache.advance_device(latents.shape[1])

    def _context(self, latents: Tensor) -> Tensor:
        """Latents (B, ..., C, h, w) as the cache stores them: noised to sampler.context_noise (clean at 0)."""
        t = self.sampler.context_noise
        if t == 0.0:
            return latents
        eps = torch.randn(latents.shape, generator=self.generator, device=self.device)
        return (1 - t) * latents + t * eps.to(latents.dtype)

    def reset(self, latents: Tensor, actions: Tensor) -> None:
        """Start from seed latents (B, T, C, h, w) and the actions that produced them (B, T, A)."""
        latents = latents.to(self.device, torch.float32)
        actions = actions.to(self.device, torch.float32)
        B, T = latents.shape[:2]
        if actions.shape[:2] != (B, T):
            raise ValueError(f"actions {tuple(actions.shape)} do not match latents {tuple(latents.shape)}")
        actions, self.momentum = action_features(self.model.config, actions)     # (B, T, action_inputs)
        if self.cache is None or self.cache.batch != B:
            self.cache = self.model.new_cache(batch=B, sink=self.sink, window=self.window,
                                              device=self.device, dtype=self.dtype)
        else:
            self.cache.reset()
        # Frames go in together while nothing is evicted, then one by one so each sees what streaming gives it.
        # Fused: the last one waits for the first step's pass.
        n = T - 1 if self.fuse_reencode else T
        clean_last = latents[:, -1]
        latents = self._context(latents)
        first = min(n, self.cache.slots)
        if first:
            self._append(latents[:, :first], actions[:, :first])
        for i in range(first, n):
            self._append(latents[:, i:i + 1], actions[:, i:i + 1])
        self.pending = (latents[:, -1], actions[:, -1]) if self.fuse_reencode else None
        self.frame = 0
        self.last_latent = clean_last

    def reset_frames(self, frames: Any, actions: Any) -> None:
        """Seed from uint8 frames (T, H, W, 3) or (B, T, H, W, 3) through the autoencoder."""
        frames = torch.as_tensor(frames, device=self.device)
        if frames.dim() == 4:
            frames = frames[None]
        B, T = frames.shape[:2]
        x = frames.permute(0, 1, 4, 2, 3).flatten(0, 1).float() / 127.5 - 1            # (B*T, 3, H, W)
        with torch.no_grad(), self._autocast():
            z = self._require_autoencoder().encode(x).float()                            # (B*T, C, h, w)
        self.reset(z.unflatten(0, (B, T)), self._action_tensor(actions, B, T))

    # ---- rollout ----

    def step(self, actions: Tensor | Action | Sequence[Action], *, schedule: list[float] | None = None,
             steps: int | None = None, grad: bool = False, check: bool = True) -> Tensor:
        """Generate the next latent (B, C, h, w) given this tick's actions (B, A) or an Action (B = 1).

        `schedule` (times from high to 0) or `steps` override the sampler config for this frame. With
        grad=True only the last denoising pass carries gradient; the cache never does. check=False leaves
        the non-finite check (a host sync) to the caller: `step_decoded` runs it after queueing the decode."""
        if self.cache is None:
            raise RuntimeError("Session.step before reset")
        B = self.cache.batch
        a, momentum = action_features(self.model.config, self._action_tensor(actions, B, None)[:, None],
                                      self.momentum)
        a = a[:, 0]                                                                       # (B, action_inputs)
        times = schedule if schedule is not None else schedule_for(self.sampler, steps)
        fused = self.pending is not None and not grad                                     # 1. noise
        noise = self._noise(1 + renoise_count(self.sampler, times), times, fused=fused, grad=grad)
        pending, self.pending = self.pending, None
        if pending is not None and grad:      # no fused pass under grad: append it on its own, no grad
            with self._phase("reencode"):
                self._reencode(*pending)
            pending = None
        with self._phase("dit"):                                                          # 2. denoise
            x0 = self._denoise(noise, a, times, grad, pending)   # (fused: its first pass appends `pending`)
        if pending is not None:
            self.cache.advance_host(1)
        if self.check_finite and check and not bool(torch.isfinite(x0).all()):
            raise NonFiniteError(f"non-finite latent at frame {self.frame}; cache left unchanged")
        self.momentum = momentum
        ctx = self._context(x0.detach())                                                  # 3. re-encode at t=0
        if self.fuse_reencode:                                    # (or at context_noise)
            self.pending = (ctx, a)                               # ... inside the next step's first pass
        else:
            with self._phase("reencode"):
                self._reencode(ctx, a)
        self.frame += 1
        self.last_latent = x0.detach()
        return x0

    def _noise(self, count: int, times: list[float], *, fused: bool, grad: bool) -> list[Tensor]:
        """The step's noise: `count` tensors (B, C, h, w) from the session's generator, start noise first.
        (graphs.GraphedSession draws them straight into its graph's input buffers.)"""
        shape = (self.cache.batch, *self.model.config.latent_shape)
        return [torch.randn(shape, generator=self.generator, device=self.device) for _ in range(count)]

    def _denoise(self, noise: list[Tensor], a: Tensor, times: list[float], grad: bool,
                 pending: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """noise: start noise then re-noising, each (B, C, h, w); a (B, A) -> x0 (B, C, h, w).

        With `pending` (clean x0 (B, C, h, w), action (B, A)) the first pass is FUSED: it appends that frame
        and runs the device half of `advance` (the caller runs the host half); the others are READONLY.
        `step` passes `pending` only with grad=False (under grad it appends it separately), so the cache never
        takes gradient."""
        B = a.shape[0]
        fuse = [pending] if pending is not None else []

        def velocity(x: Tensor, t: float, use_action: bool) -> Tensor:
            tt = torch.full((B, 1), t, device=self.device)
            keep = None if use_action else torch.zeros((B, 1), dtype=torch.bool, device=self.device)
            if fuse:                                                                      # FUSED pass
                clean, clean_a = fuse.pop()
                xs = torch.stack([clean.to(x.dtype), x], dim=1)                           # (B, 2, C, h, w)
                ts = torch.cat([torch.full_like(tt, self.sampler.context_noise), tt], dim=1)  # (B, 2)
                keep2 = None if keep is None else torch.cat([torch.ones_like(keep), keep], dim=1)
                v = self.model(xs, ts, torch.stack([clean_a, a], dim=1), keep2, cache=self.cache,
                               cache_mode=CacheMode.FUSED, commit=False)[:, 1]
                self.cache.advance_device(1)
                return v
            return self.model(x[:, None], tt, a[:, None], keep, cache=self.cache)[:, 0]   # READONLY pass

        with self._kernels():
            return sample(velocity, noise[0], self.sampler, schedule=times, grad_last=grad, renoise=noise[1:])

    def _reencode(self, x0: Tensor, a: Tensor) -> None:
        """Append the clean latent x0 (B, C, h, w) with its action (B, A) to the cache."""
        self._append(x0[:, None], a[:, None])

    def step_decoded(self, actions: Tensor | Action | Sequence[Action], *, steps: int | None = None,
                     host: bool = False) -> tuple[Tensor, Tensor]:
        """One played tick: `step`, then `decode` -> (latent (B, C, h, w), uint8 frames (B, H, W, 3)).

        The non-finite check waits for the GPU, so it runs after the decode is queued: the GPU goes from the
        denoiser straight into the decoder instead of idling while the host wakes up and launches it (fused
        re-encode only: otherwise `step` appends x0 at once and has to check it first). A non-finite latent
        undoes the step's bookkeeping and raises NonFiniteError, leaving the session as `step` would.
        host=True returns the frames in host memory: they and the finite flag come back in one copy with one
        sync (phase "upload"), where a separate check and `.cpu()` would wait for the GPU twice."""
        if not self.fuse_reencode:   # step re-encodes x0 at once, so it has to check it first
            x0 = self.step(actions, steps=steps)
            frames = self.decode(x0)
            return x0, self._to_host(frames, None)[0] if host else frames
        last, momentum = self.last_latent, self.momentum
        x0 = self.step(actions, steps=steps, check=False)
        frames = self.decode(x0)
        ok = self._finite(x0) if self.check_finite else None                              # () bool, on device
        if host:
            frames, ok = self._to_host(frames, ok)
        if ok is not None and not bool(ok):
            self.frame, self.last_latent, self.pending = self.frame - 1, last, None   # as if `step` had raised
            self.momentum = momentum
            raise NonFiniteError(f"non-finite latent at frame {self.frame}; cache left unchanged")
        return x0, frames

    def _finite(self, x0: Tensor) -> Tensor:
        """() bool on the device: whether every value of the latent x0 is finite."""
        return torch.isfinite(x0).all()

    def _to_host(self, frames: Tensor, ok: Tensor | None) -> tuple[Tensor, Tensor | bool | None]:
        """Frames (B, H, W, 3) uint8 and a flag on the device -> host copies, one stream sync. On CUDA they go
        through page-locked buffers, so the copies are asynchronous DMA and the one sync waits for both (a
        pageable copy is staged through a driver buffer and waits on its own). The frames come back in a
        fresh tensor (the buffer is reused by the next tick), copied by numpy: torch splits a copy of this
        size over its intra-op threads, which took 9 ms on an H200 host busy with data collectors (session 11)."""
        if self.device.type != "cuda":
            return frames, ok
        with self._phase("upload"):
            if self._host_frames is None or self._host_frames.shape != frames.shape:
                self._host_frames = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
                self._host_ok = torch.ones((), dtype=torch.bool, pin_memory=True)
            self._host_frames.copy_(frames, non_blocking=True)
            if ok is not None:
                self._host_ok.copy_(ok, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
        host = torch.from_numpy(self._host_frames.numpy().copy())
        return host, None if ok is None else bool(self._host_ok)

    def decode(self, latent: Tensor) -> Tensor:
        """(B, C, h, w) -> uint8 frames (B, H, W, 3) on the session's device."""
        with self._phase("decode"):
            frames = self._decode(latent)
        if getattr(self.autoencoder, "decoder_compile_pending", None) is not None:
            self.autoencoder.start_decoder_compile()   # runtime.compile_decoder: after the first frame
        return frames

    def _decode(self, latent: Tensor) -> Tensor:
        with torch.no_grad(), self._autocast():
            return self._require_autoencoder().decode_uint8(latent)

    # ---- savestates and HUD ----

    def snapshot(self) -> SessionState:
        if self.cache is None:
            raise RuntimeError("Session.snapshot before reset")
        pending = None if self.pending is None else tuple(x.clone() for x in self.pending)
        return SessionState(cache=self.cache.clone(), rng=self.generator.get_state(), frame=self.frame,
                            last_latent=self.last_latent.clone(), pending=pending,
                            momentum=None if self.momentum is None else self.momentum.clone())

    def restore(self, state: SessionState) -> None:
        if self.cache is not None and self.cache.k.shape == state.cache.k.shape:
            self.cache.copy_from(state.cache)  # into the preallocated storage
        else:
            self.cache = state.cache.clone()
        self.generator.set_state(state.rng)
        self.frame = state.frame
        self.last_latent = state.last_latent.clone()
        # A pending frame is appended by the next step's first pass, fused or not (see step).
        self.pending = None if state.pending is None else tuple(x.clone() for x in state.pending)
        self.momentum = None if state.momentum is None else state.momentum.clone()

    def cache_state(self) -> CacheState | None:
        """The cache as the HUD shows it: a pending frame counts as stored (`pending` = 1 while it waits)."""
        return None if self.cache is None else self.cache.state(pending=int(self.pending is not None))

    # ---- helpers ----

    def _require_autoencoder(self) -> Any:
        if self.autoencoder is None:
            raise RuntimeError("this Session has no autoencoder; pass autoencoder= to use frames")
        return self.autoencoder

    def _action_tensor(self, actions: Any, batch: int, frames: int | None,
                       device: torch.device | None = None) -> Tensor:
        """Action, [Action], nested lists or a tensor -> float tensor (B, A) or (B, T, A) on the device
        (or on `device`)."""
        if isinstance(actions, Action):
            actions = [actions.to_list()]
        elif isinstance(actions, (list, tuple)) and actions and isinstance(actions[0], Action):
            actions = [a.to_list() for a in actions]
        # (An event-guarded page-locked upload here was slower: 25-46 us against 16, docs/BENCHMARKS.md,
        # session 11. graphs.GraphedSession uploads the played tick's action inside its graph instead.)
        a = torch.as_tensor(actions, dtype=torch.float32, device=device or self.device)
        dim = self.model.config.action_dim
        want = (batch, dim) if frames is None else (batch, frames, dim)
        if a.dim() == len(want) - 1:
            a = a[None]
        if a.shape[0] == 1 and tuple(a.shape[1:]) == want[1:]:
            a = a.expand(want)  # one action (sequence) shared by the whole batch
        if tuple(a.shape) != want:
            raise ValueError(f"actions have shape {tuple(a.shape)}, expected {want}")
        return a
