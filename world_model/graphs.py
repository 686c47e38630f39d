"""CUDA graphs for the streaming step: a Session whose denoise, re-encode and decode passes replay as graphs.

Why: at batch 1 a one-frame forward is launch-bound (recipe.md section 4: eager ~4 ms, graph replay
~0.8-1.1 ms on an H200), so the per-tick cost is mostly kernel launches that a graph replays at once.

What lets one graph serve every tick:
- the KV cache is preallocated and masks empty slots with `valid`; slot positions, query positions, write
  indices and the frame counter are device tensors that the graph reads, and the re-encode graph also runs
  the device half of `advance` (kv_cache.py). Fill level and evictions change only buffer contents;
- inputs are copied into static buffers before each replay. Noise is drawn eagerly from the session's
  generator in Session.step (straight into those buffers once the graph exists), so the random stream is
  exactly the eager one. A host input (the played tick's action) has a page-locked buffer that the graph
  copies to the device itself;
- outputs are the graph's static tensors, cloned before they are handed out;
- one graph per (pass, schedule, sampler): the schedule's times are constants inside it.

With fuse_reencode (rollout.py) a played tick (step_decoded) replays one graph, "tick": the FUSED first
pass (which appends the previous frame and advances the cache's device tables), the schedule's remaining
READONLY passes, the decoder and the finite check. `step` alone (the evaluation's rollouts) replays
"dit-fused", the same without decoding. The plain "dit" graph serves only a step with nothing pending (e.g.
after a NonFiniteError); "reencode" only a grad step or a session without fusion; "decode" the rest.

On the CPU (or capture=False) the very same functions run eagerly on the static buffers; the tests compare
that path against Session.step at every fill level and across evictions. Graphs that point at a cache are
dropped when the session's cache object changes (a new batch size, or a restore of another shape).
"""
from __future__ import annotations

import contextlib
import gc
from typing import Any, Callable, Hashable, NamedTuple, Sequence

import torch
from torch import Tensor

from world_model.rollout import NonFiniteError, Session
from world_model.sampler import SamplerConfig


class TickOut(NamedTuple):
    """What a tick graph makes: latent (B, C, h, w), frames (B, H, W, 3) uint8 and the finite flag () on the
    device, and (CUDA) page-locked copies of the frames and the flag. step_decoded adds the graph, its noise
    count and whether it left the next pending frame in its own inputs."""
    x0: Tensor
    frames: Tensor
    ok: Tensor
    host: tuple[Tensor, ...] = ()
    fn: Any = None
    count: int = 0
    staged: bool = False


class StaticFn:
    """fn(*inputs) on fixed input buffers, captured as a CUDA graph or (capture=False) run eagerly.

    Calling it copies the arguments into the buffers, then replays; the result is the graph's own output
    tensor (overwritten by the next replay)."""

    def __init__(self, fn: Callable[..., Any], example: Sequence[Tensor], *, capture: bool,
                 pool: Any = None, warmup: int = 2):
        self.fn = fn
        # A host input of a captured graph lives in page-locked memory: the graph's copy node reads it at
        # every replay, so writing the buffer (__call__) is how the next replay gets new values.
        self.inputs = [x.detach().clone().pin_memory() if capture and x.device.type == "cpu" else x.detach().clone()
                       for x in example]
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture:
            # Lazy initialisation (cuBLAS handles, kernel selection) must happen outside the capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # No garbage collection during capture: a collection there can free an unreachable old session's
            # graphs, and destroying a graph invalidates the capture in progress ("operation not permitted
            # when stream is capturing"; torch.cuda.graph no longer collects on entry). Seen on the H100: the
            # evaluation's third rollout batch failed this way (sessions 3 and 4).
            gc.collect()
            enabled = gc.isenabled()
            gc.disable()
            try:
                with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
                    self.output = fn(*self.inputs)
            finally:
                if enabled:
                    gc.enable()

    def __call__(self, *inputs: Tensor) -> Any:
        for buf, x in zip(self.inputs, inputs, strict=True):
            if x is not buf:                 # an input written straight into its buffer needs no copy
                buf.copy_(x)
        return self.run()

    def run(self) -> Any:
        """Replay on whatever the input buffers hold now."""
        if self.graph is None:
            return self.fn(*self.inputs)
        self.graph.replay()
        return self.output


class GraphedSession(Session):
    """Session with the no-grad streaming passes replayed as CUDA graphs (eager on the CPU).

    Same constructor and interface as Session, plus `capture` (default: True on CUDA). Graphs are built
    on first use of each (pass, schedule); that first tick is slower (warm-up and capture)."""

    def __init__(self, model: Any, *, capture: bool | None = None, **session_kw: Any):
        super().__init__(model, **session_kw)
        self.capture = self.device.type == "cuda" if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {self.device}")
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None  # one pool for all graphs
        self._fns: dict[Hashable, StaticFn] = {}
        self._graphed_cache: Any = None
        # Inside step_decoded (see there): the fused pass also decodes; the action goes up inside that graph;
        # the frames go to the host (no clone needed); and what the tick's graph made (TickOut).
        self._whole_tick = self._action_in_graph = self._frames_to_host = False
        self._tick_out: TickOut | None = None
        # Tick graphs a played tick can replay straight away (_replay_tick): steps -> (graph, noise count,
        # the decoder and sampler it was built with). Emptied whenever graphs are dropped.
        self._warm: dict[int | None, tuple[StaticFn, int, Any, SamplerConfig]] = {}

    def _autocast(self) -> contextlib.AbstractContextManager:
        # No autocast weight cache: the casts are replayed inside the graph, nothing may outlive it.
        if self.autocast:
            return torch.autocast("cuda", dtype=self.dtype, cache_enabled=False)
        return contextlib.nullcontext()

    def _static(self, key: Hashable, fn: Callable[..., Any], example: Sequence[Tensor], *,
                writes_cache: bool = False) -> StaticFn:
        if self._graphed_cache is not self.cache:   # graphs read the old cache's storage: rebuild them
            self._fns = {k: f for k, f in self._fns.items() if k[0] == "decode"}
            self._graphed_cache = self.cache
            self._warm.clear()
        if key not in self._fns:
            # The warm-up runs before capture execute for real; undo what they write into the cache.
            saved = self.cache.clone() if writes_cache and self.capture else None
            with torch.no_grad():
                self._fns[key] = StaticFn(fn, example, capture=self.capture, pool=self._pool)
            if saved is not None:
                self.cache.copy_from(saved)
        return self._fns[key]

    # ---- one graph per played tick ----

    def step_decoded(self, actions: Any, *, steps: int | None = None, host: bool = False) -> tuple[Tensor, Tensor]:
        """Session.step_decoded, with the tick in one graph where it can be: with fused re-encode and a
        pending frame, the denoising graph also decodes the frame and computes the finite flag ("tick"), and
        `decode` and `_finite` then hand out what it made. With a phase timer (the benchmark's phased ticks)
        the passes run as separate graphs, so each can be timed.

        Why: at batch 1 the GPU idles through every host step before the graph's launch (docs/BENCHMARKS.md,
        session 12: 50-200 us a tick on an H100 host). So the tick's graph also does what was launched
        around it: it copies the action up from a page-locked buffer (a pageable upload holds the host
        17-50 us), leaves this frame and action in its own pending-frame inputs for the next tick, and copies
        the frames and the flag down into page-locked buffers. The action buffer may be rewritten only once
        the last replay has read it; every tick here ends in a sync (the finite check, or the copy to host),
        so that holds. Once a host tick's graph exists, the next ones skip Session.step's layers
        (_replay_tick)."""
        warm = self._warm.get(steps) if host and self.timer is None else None
        if warm is not None and self._can_replay(warm, actions):
            return self._replay_tick(warm[0], warm[1], actions)
        self._whole_tick = self.fuse_reencode and self.timer is None and self.autoencoder is not None
        # (Only where the tick graph runs, i.e. with a pending frame: the plain "dit" graph after a
        # NonFiniteError takes its action on the device.)
        self._action_in_graph = (self._whole_tick and self.pending is not None and (host or self.check_finite)
                                 and self.sampler.context_noise == 0.0 and not self.model.config.action_momentum)
        self._frames_to_host = host and self.device.type == "cuda"
        try:
            x0, frames = super().step_decoded(actions, steps=steps, host=host)
            out = self._tick_out
            if out is not None and out.staged:
                self.pending = (out.fn.inputs[-2], out.fn.inputs[-1])   # the values step set, where the graph reads
                if host and self._action_in_graph:
                    self._warm[steps] = (out.fn, out.count, self.autoencoder.decoder, self.sampler)
            return x0, frames
        finally:
            self._whole_tick = self._action_in_graph = self._frames_to_host = False
            self._tick_out = None

    def _can_replay(self, warm: tuple[StaticFn, int, Any, SamplerConfig], actions: Any) -> bool:
        """Whether the tick graph `warm` still does exactly what Session.step_decoded would now."""
        fn, _, decoder, sampler = warm
        return (self.pending is not None and self.fuse_reencode and self._graphed_cache is self.cache
                and sampler is self.sampler and self.autoencoder is not None and self.autoencoder.decoder is decoder
                and not (isinstance(actions, Tensor) and actions.device.type != "cpu"))

    def _replay_tick(self, fn: StaticFn, count: int, actions: Any) -> tuple[Tensor, Tensor]:
        """One played tick on an existing tick graph, with only the host work a tick needs: what
        Session.step_decoded(host=True) does (fused pass, clean context, no momentum), bookkept here and
        computed in the graph. The same noise draws, cache, counters and error behaviour; the tests compare
        it with the eager Session tick by tick.

        Why: the layers of Session.step cost 50-150 us of Python per tick on the H100 hosts, all of it before
        the launch while the GPU idles (docs/BENCHMARKS.md, session 12), and the student's tick is 1.5 ms."""
        act, px, pa = fn.inputs[count:]                                # (B, A) page-locked, pending frame
        act.copy_(actions if isinstance(actions, Tensor) and actions.shape == act.shape
                  else self._action_tensor(actions, act.shape[0], None, act.device))
        for buf in fn.inputs[:count]:
            buf.normal_(generator=self.generator)                      # Session._noise's draws, in place
        if self.pending[0] is not px:                                  # after a reset, restore or timed tick
            px.copy_(self.pending[0])
            pa.copy_(self.pending[1])
        out = fn.run()
        # Host work the GPU need not wait for, while it runs the graph:
        self.cache.advance_host(1)                                     # the fused pass appended the pending frame
        x0 = out.x0.clone()                                            # the graph's buffer is overwritten next tick
        if getattr(self.autoencoder, "decoder_compile_pending", None) is not None:
            self.autoencoder.start_decoder_compile()                   # as Session.decode
        if out.host:
            torch.cuda.current_stream(self.device).synchronize()
        if self.check_finite and not bool(out.host[1] if out.host else out.ok):
            self.pending = None                                        # frame and latent unchanged: as step raising
            raise NonFiniteError(f"non-finite latent at frame {self.frame}; cache left unchanged")
        self.pending, self.frame, self.last_latent = (px, pa), self.frame + 1, x0
        frames = torch.from_numpy(out.host[0].numpy().copy()) if out.host else out.frames.cpu()
        return x0, frames

    def _action_tensor(self, actions: Any, batch: int, frames: int | None,
                       device: torch.device | None = None) -> Tensor:
        on_device = isinstance(actions, Tensor) and actions.device.type != "cpu"
        if self._action_in_graph and frames is None and not on_device:   # the tick's graph uploads it
            return super()._action_tensor(actions, batch, frames, torch.device("cpu"))
        return super()._action_tensor(actions, batch, frames, device)

    def _dit_key(self, times: list[float], count: int, fused: bool) -> tuple:
        if not fused:
            return ("dit", tuple(times), self.sampler, count)
        if self._whole_tick:   # the decoder is part of the graph: a compiled one swapped in needs a new capture
            return ("tick", tuple(times), self.sampler, count, id(self._require_autoencoder().decoder))
        return ("dit-fused", tuple(times), self.sampler, count)

    def _noise(self, count: int, times: list[float], *, fused: bool, grad: bool) -> list[Tensor]:
        # Drawn straight into the graph's input buffers (the same numbers: torch.randn is normal_ on a new
        # tensor): no copies to launch before the graph. Not under grad, where the pass keeps them for backward.
        fn = None if grad else self._fns.get(self._dit_key(times, count, fused))
        if fn is None:
            return super()._noise(count, times, fused=fused, grad=grad)
        return [buf.normal_(generator=self.generator) for buf in fn.inputs[:count]]

    # ---- the three passes (Session.step and Session.decode call these) ----

    def _denoise(self, noise: list[Tensor], a: Tensor, times: list[float], grad: bool,
                 pending: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if grad:
            return super()._denoise(noise, a, times, grad, pending)
        key = self._dit_key(times, len(noise), pending is not None)
        if pending is None:
            def denoise(*xs: Tensor) -> Tensor:      # xs = (*noise, a)
                return Session._denoise(self, list(xs[:-1]), xs[-1], times, False)

            return self._static(key, denoise, [*noise, a])(*noise, a).clone()

        # The FUSED first pass appends the pending frame (and runs the device half of advance) in the graph.
        if key[0] == "dit-fused":
            def fused(*xs: Tensor) -> Tensor:        # xs = (*noise, a, pending x0, pending a)
                return Session._denoise(self, list(xs[:-3]), xs[-3], times, False, (xs[-2], xs[-1]))

            return self._static(key, fused, [*noise, a, *pending], writes_cache=True)(*noise, a, *pending).clone()

        # With clean context (context_noise 0) the next pending frame is x0 itself, so the graph can leave it
        # (and the action) in its own pending inputs.
        stage = self.sampler.context_noise == 0.0
        host: list[Tensor] = []    # page-locked copies of the frames and the flag, written by the graph (CUDA)

        def tick(*xs: Tensor) -> TickOut:     # the same, then decode and check
            noise, act, (px, pa) = list(xs[:-3]), xs[-3], xs[-2:]
            if act.device != px.device:                 # the action's upload, as a copy node of the graph
                act = act.to(px.device, non_blocking=True)
            x0 = Session._denoise(self, noise, act, times, False, (px, pa))
            frames, ok = Session._decode(self, x0), torch.isfinite(x0).all()
            if self.capture:                            # made by the first warm-up run, before the capture
                host[:] = host or [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in (frames, ok)]
                host[0].copy_(frames, non_blocking=True)
                host[1].copy_(ok, non_blocking=True)
            if stage:                                   # after the fused pass has read them
                px.copy_(x0)
                pa.copy_(act)
            return TickOut(x0, frames, ok, tuple(host))

        if key not in self._fns:   # a tick graph with another decoder in it is stale (see _dit_key)
            self._fns = {k: f for k, f in self._fns.items() if k[0] != "tick" or k[:4] != key[:4]}
            self._warm.clear()
        fn = self._static(key, tick, [*noise, a, *pending], writes_cache=True)
        out = fn(*noise, a, *pending)
        x0 = out.x0.clone()
        self._tick_out = out._replace(x0=x0, fn=fn, count=len(noise), staged=stage)
        return x0

    def _finite(self, x0: Tensor) -> Tensor:
        if self._tick_out is not None and self._tick_out.x0 is x0:
            return self._tick_out.ok       # the graph's own buffer: read before the next replay (step_decoded)
        return super()._finite(x0)

    def _to_host(self, frames: Tensor, ok: Tensor | None) -> tuple[Tensor, Tensor | bool | None]:
        out = self._tick_out
        if out is None or not out.host or frames is not out.frames:
            return super()._to_host(frames, ok)
        with self._phase("upload"):                 # the graph has copied them down: wait for it
            torch.cuda.current_stream(self.device).synchronize()
        return torch.from_numpy(out.host[0].numpy().copy()), None if ok is None else bool(out.host[1])

    def _reencode(self, x0: Tensor, a: Tensor) -> None:
        def reencode(x: Tensor, act: Tensor) -> None:
            self._append_device(x[:, None], act[:, None])   # forward (APPEND) + device half of advance

        self._static(("reencode", self.sampler.context_noise), reencode, [x0, a], writes_cache=True)(x0, a)
        self.cache.advance_host(1)

    def _decode(self, latent: Tensor) -> Tensor:
        if self._tick_out is not None and self._tick_out.x0 is latent:   # decoded inside the tick's graph
            # Going to the host, the frames are copied out before the next replay; else a copy to hand out.
            return self._tick_out.frames if self._frames_to_host else self._tick_out.frames.clone()
        # The decoder object is part of the key: a decoder compiled in the background (runtime.compile_decoder)
        # replaces the stock one mid-play, and its graph is captured then; the stale graph is dropped.
        key = ("decode", tuple(latent.shape), id(self._require_autoencoder().decoder))
        if key not in self._fns:
            self._fns = {k: f for k, f in self._fns.items() if k[0] != "decode" or k[1] != key[1]}
        fn = self._static(key, lambda z: Session._decode(self, z), [latent])
        return fn(latent).clone()
