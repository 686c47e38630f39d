"""CUDA-graph session: its static-shape step functions (the code that gets captured) equal Session.step at
every fill level and across evictions, and they contain no host sync or data-dependent shape."""
import pytest
import torch

import settings
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.graphs import GraphedSession, StaticFn
from world_model.model import ModelConfig, WorldModel
from world_model.rollout import NonFiniteError, Session
from world_model.sampler import SamplerConfig

from conftest import on_meta


def tiny_model() -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(settings.load("settings/model/tiny.yaml", ModelConfig))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)   # leave the zero init, so outputs depend on everything
    return model.eval()


def tiny_autoencoder(channels: int) -> Autoencoder:
    torch.manual_seed(1)
    cfg = AutoencoderConfig(latent_channels=channels, height=40, width=48, enc_channels=(8, 8, 8, 8),
                            dec_channels=(8, 8, 8, 8), groups=4)
    return Autoencoder(cfg).eval()


def nonfinite_tick(model, sessions, *, host: bool) -> None:
    """One played tick with the model's output bias set to NaN: each session must raise NonFiniteError."""
    with torch.no_grad():
        bias = model.final.linear.bias.clone()
        model.final.linear.bias.fill_(float("nan"))
        try:
            for sess in sessions:
                with pytest.raises(NonFiniteError):
                    sess.step_decoded(torch.zeros(1, 5), steps=1, host=host)   # a host action, as played
        finally:
            model.final.linear.bias.copy_(bias)


def pair(model, sampler, *, sink=1, window=3, B=2):
    g = torch.Generator().manual_seed(3)
    seed = (torch.randn((B, 2, *model.config.latent_shape), generator=g), torch.rand((B, 2, 5), generator=g))
    made = []
    for cls, kw in ((Session, {}), (GraphedSession, {"capture": False})):
        s = cls(model, window=window, sink=sink, device="cpu", seed=7, sampler=sampler, **kw)
        s.reset(*seed)
        made.append(s)
    return made


@pytest.mark.parametrize("sampler,steps", [(SamplerConfig(kind="consistency"), 1),
                                           (SamplerConfig(kind="consistency", cfg_scale=1.5), 2),
                                           (SamplerConfig(kind="euler", steps=3), 3),
                                           (SamplerConfig(kind="euler", steps=3, context_noise=0.2), 3)])
def test_static_step_equals_session_step_across_fill_levels_and_evictions(sampler, steps):
    model = tiny_model()
    eager, graphed = pair(model, sampler, sink=1, window=3)
    g = torch.Generator().manual_seed(11)
    for i in range(3 * eager.cache.slots + 2):            # fills the window, then evicts on every tick
        a = torch.rand((2, 5), generator=g) * 2 - 1
        x_e, x_g = eager.step(a, steps=steps), graphed.step(a, steps=steps)
        assert torch.equal(x_e, x_g), f"tick {i}"
        assert torch.equal(eager.cache.k, graphed.cache.k) and torch.equal(eager.cache.v, graphed.cache.v)
        for name in ("valid", "slot_pos", "_query_pos", "_write_tok", "_pos"):
            assert torch.equal(getattr(eager.cache, name), getattr(graphed.cache, name)), name
        assert eager.cache_state() == graphed.cache_state()
    assert graphed.cache_state().evictions > 0
    assert len(graphed._fns) == 2                          # one denoise and one re-encode function serve all


def test_static_step_survives_snapshot_restore_and_reset():
    model = tiny_model()
    sampler = SamplerConfig(kind="consistency")
    eager, graphed = pair(model, sampler, sink=0, window=2)
    a = torch.tensor([[1.0, 0, 0.5, 0, 1]])
    for s in (eager, graphed):
        for _ in range(3):
            s.step(a, steps=1)
    snaps = [eager.snapshot(), graphed.snapshot()]
    k_storage = graphed.cache.k.data_ptr()
    outs = [[s.step(a, steps=2) for _ in range(4)] for s in (eager, graphed)]
    for s, snap in zip((eager, graphed), snaps):
        s.restore(snap)
    again = [[s.step(a, steps=2) for _ in range(4)] for s in (eager, graphed)]
    assert graphed.cache.k.data_ptr() == k_storage         # restored into the storage the graphs point at
    for x, y, z in zip(outs[0], outs[1], again[1]):
        assert torch.equal(x, y) and torch.equal(y, z)
    assert all(torch.equal(x, y) for x, y in zip(again[0], again[1]))


def test_graphed_decode_equals_eager_decode():
    model = tiny_model()
    ae = tiny_autoencoder(model.config.latent_channels)
    assert ae.latent_shape == model.config.latent_shape
    eager = Session(model, window=2, sink=1, device="cpu", autoencoder=ae)
    graphed = GraphedSession(model, window=2, sink=1, device="cpu", autoencoder=ae, capture=False)
    z = torch.randn(1, *ae.latent_shape)
    for _ in range(2):
        frames = graphed.decode(z)
        assert frames.dtype == torch.uint8 and frames.shape == (1, 40, 48, 3)
        assert torch.equal(frames, eager.decode(z))


def test_capture_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        GraphedSession(tiny_model(), window=2, sink=1, device="cpu", capture=True)


def test_static_fn_copies_inputs_into_fixed_buffers():
    fn = StaticFn(lambda x: x * 2, [torch.zeros(3)], capture=False)
    buf = fn.inputs[0]
    assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0))
    assert fn.inputs[0] is buf and torch.equal(buf, torch.ones(3))


def test_captured_functions_have_no_host_sync_or_data_dependent_shape():
    # On the meta device tensors have shapes but no data: any .item(), bool(tensor), nonzero() or
    # data-dependent shape inside the step functions raises. That is what CUDA-graph capture forbids.
    model = tiny_model()
    ae = tiny_autoencoder(model.config.latent_channels)
    s = GraphedSession(model, window=3, sink=1, device="cpu", capture=False, autoencoder=ae,
                       sampler=SamplerConfig(kind="consistency", cfg_scale=2.0))
    s, noise, a = on_meta(s, model, ae)
    x0 = Session._denoise(s, noise, a, [1.0, 0.5, 0.0], False)
    assert x0.shape == (1, *model.config.latent_shape) and x0.device.type == "meta"
    s._append_device(x0[:, None], a[:, None])
    assert Session._decode(s, x0).shape == (1, 40, 48, 3)
    # the played tick's one function (fused denoise, decode, finite flag)
    s.fuse_reencode, s._whole_tick = True, True
    x0 = s._denoise(noise, a, [1.0, 0.5, 0.0], False, (x0, a))
    assert [k[0] for k in s._fns] == ["tick"] and s._tick_out[1].shape == (1, 40, 48, 3)
    assert s._finite(x0).shape == () and s._decode(x0).device.type == "meta"


@pytest.mark.parametrize("graphed", [False, True])
@pytest.mark.parametrize("fuse,host", [(False, False), (True, False), (False, True), (True, True)])
def test_step_decoded_equals_step_then_decode_and_raises_like_step(fuse, host, graphed):
    """The player's tick (one host sync: the finite check after the decode is queued) gives the frames of
    step + decode, and on a non-finite latent leaves the session exactly as `step` raising would. Graphed
    and fused, that tick is one function ("tick": denoise, decode and check) instead of two."""
    model = tiny_model()
    ae = tiny_autoencoder(model.config.latent_channels)
    a = (GraphedSession if graphed else Session)(model, window=2, sink=1, device="cpu", seed=3, autoencoder=ae,
                                                 fuse_reencode=fuse, **({"capture": False} if graphed else {}))
    b = Session(model, window=2, sink=1, device="cpu", seed=3, autoencoder=ae, fuse_reencode=fuse)
    clip = (torch.randn(1, 3, *model.config.latent_shape), torch.zeros(1, 3, 5))
    a.reset(*clip), b.reset(*clip)
    acts = [torch.rand(1, 5) * 2 - 1 for _ in range(5)]
    for act in acts[:3]:
        x, frames = a.step_decoded(act, steps=1, host=host)
        y = b.step(act, steps=1)
        assert torch.equal(x, y) and torch.equal(frames, b.decode(y)) and frames.device.type == "cpu"
    with torch.no_grad():
        bias = model.final.linear.bias.clone()
        model.final.linear.bias.fill_(float("nan"))
        with pytest.raises(NonFiniteError):
            a.step_decoded(acts[3], steps=1, host=host)
        with pytest.raises(NonFiniteError):
            b.step(acts[3], steps=1)
        model.final.linear.bias.copy_(bias)
    assert (a.frame, a.pending, a.cache_state()) == (b.frame, b.pending, b.cache_state())
    assert torch.equal(a.last_latent, b.last_latent)
    x, _ = a.step_decoded(acts[4], steps=1)
    assert torch.equal(x, b.step(acts[4], steps=1))
    if graphed:
        kinds = {k[0] for k in a._fns}
        assert ("tick" in kinds) == fuse and "dit-fused" not in kinds   # (after the NaN: "dit" and "decode")
        assert a._tick_out is None                 # nothing of a tick outlives it


def test_tick_function_follows_the_phase_timer_and_a_swapped_decoder():
    """Phase-timed ticks run the passes as separate functions (each timed on its own); a decoder swapped in
    mid-play (runtime.compile_decoder) gets its own tick function, which replaces the old one."""
    import contextlib
    import copy

    model = tiny_model()
    ae = tiny_autoencoder(model.config.latent_channels)
    s = GraphedSession(model, window=2, sink=1, device="cpu", seed=3, autoencoder=ae, fuse_reencode=True,
                       capture=False)
    ref = Session(model, window=2, sink=1, device="cpu", seed=3, autoencoder=ae, fuse_reencode=True)
    clip = (torch.randn(1, 3, *model.config.latent_shape), torch.zeros(1, 3, 5))
    s.reset(*clip), ref.reset(*clip)
    acts = [torch.rand(1, 5) * 2 - 1 for _ in range(4)]
    timed = []
    s.timer = lambda name: (timed.append(name), contextlib.nullcontext())[1]
    for act in acts[:2]:
        assert all(torch.equal(x, y) for x, y in zip(s.step_decoded(act, steps=1), ref.step_decoded(act, steps=1)))
    assert {"dit", "decode"} <= set(timed) and {k[0] for k in s._fns} == {"dit-fused", "decode"}
    s.timer = None
    s.step_decoded(acts[2], steps=1), ref.step_decoded(acts[2], steps=1)
    ae.decoder = copy.deepcopy(ae.decoder)                   # what the background compile's swap does
    x, frames = s.step_decoded(acts[3], steps=1)
    y, ref_frames = ref.step_decoded(acts[3], steps=1)
    assert torch.equal(x, y) and torch.equal(frames, ref_frames)
    ticks = [k for k in s._fns if k[0] == "tick"]
    assert len(ticks) == 1 and ticks[0][-1] == id(ae.decoder)


def test_warm_tick_skips_session_step_and_stays_the_eager_session(monkeypatch):
    """Once a host tick's graph exists, the player's ticks replay it with only the bookkeeping around it
    (_replay_tick). Tick by tick it must stay the eager Session: across evictions, a snapshot restored, a
    phase-timed tick between (the pending frame then comes from elsewhere), a reset, and a non-finite frame."""
    import contextlib

    model = tiny_model()
    ae = tiny_autoencoder(model.config.latent_channels)
    kw = dict(window=2, sink=1, device="cpu", seed=3, autoencoder=ae, fuse_reencode=True,
              sampler=SamplerConfig(kind="consistency"))
    s, ref = GraphedSession(model, capture=False, **kw), Session(model, **kw)
    clip = (torch.randn(1, 3, *model.config.latent_shape), torch.zeros(1, 3, 5))
    s.reset(*clip), ref.reset(*clip)
    slow = []
    step = Session.step
    monkeypatch.setattr(Session, "step", lambda self, *a, **k: (slow.append(1), step(self, *a, **k))[1])
    g = torch.Generator().manual_seed(5)

    def tick(i: int, act=None) -> None:
        act = torch.rand(1, 5, generator=g) * 2 - 1 if act is None else act
        x, frames = s.step_decoded(act, steps=1, host=True)
        y, ref_frames = ref.step_decoded(act, steps=1, host=True)
        assert torch.equal(x, y) and torch.equal(frames, ref_frames), f"tick {i}"
        assert (s.frame, s.cache_state()) == (ref.frame, ref.cache_state()) and torch.equal(s.last_latent, x)

    for i in range(8):                                   # fills the window, then evicts
        tick(i)
    assert s.cache_state().evictions > 0 and len(slow) == 1 + 8   # the reference 8 times, s only on its first tick
    snap, ref_snap = s.snapshot(), ref.snapshot()
    tick(8), tick(9)
    s.restore(snap), ref.restore(ref_snap)
    tick(10, torch.tensor([[1.0, 0, 0, 0, 0]]))          # the restored pending frame is copied in
    s.timer = ref.timer = lambda name: contextlib.nullcontext()
    tick(11)                                             # phased: separate passes
    s.timer = ref.timer = None
    tick(12)
    s.reset(*clip), ref.reset(*clip)
    tick(13)
    slow.clear()
    tick(14)
    assert len(slow) == 1                                # the reference's only
    nonfinite_tick(model, (s, ref), host=True)
    assert (s.frame, s.pending, s.cache_state()) == (ref.frame, ref.pending, ref.cache_state())
    assert torch.equal(s.last_latent, ref.last_latent)
    tick(15), tick(16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
@pytest.mark.parametrize("host", [False, True])
def test_captured_tick_equals_eager_session_on_cuda(host):
    """On a GPU the played tick replays one captured graph that uploads the action itself (from a page-locked
    buffer) and leaves the next pending frame in its own inputs. Its frames and latents must be the eager
    Session's, tick after tick, with a new action every tick and across evictions."""
    model = tiny_model().cuda()
    ae = tiny_autoencoder(model.config.latent_channels).cuda()
    kw = dict(window=3, sink=1, device="cuda", seed=3, autoencoder=ae, fuse_reencode=True,
              sampler=SamplerConfig(kind="consistency"))
    graphed, eager = GraphedSession(model, **kw), Session(model, **kw)
    assert graphed.capture
    clip = (torch.randn(1, 3, *model.config.latent_shape), torch.zeros(1, 3, 5))
    graphed.reset(*clip), eager.reset(*clip)
    g = torch.Generator().manual_seed(11)
    for i in range(12):
        act = torch.rand(1, 5, generator=g) * 2 - 1                  # on the host, as the player passes it
        x, frames = graphed.step_decoded(act, steps=1, host=host)
        y, ref = eager.step_decoded(act, steps=1, host=host)
        assert torch.allclose(x, y, atol=1e-4, rtol=1e-4), f"tick {i}: {(x - y).abs().max()}"
        assert (frames.int() - ref.int()).abs().max() <= 1, f"tick {i}"
        assert frames.device.type == ("cpu" if host else "cuda")
    tick = next(f for k, f in graphed._fns.items() if k[0] == "tick")
    assert graphed.pending[0] is tick.inputs[-2] and graphed.pending[1] is tick.inputs[-1]
    assert tick.inputs[-3].is_pinned() and tick.graph is not None
    assert all(t.is_pinned() for t in tick.output.host)           # frames and flag copied down by the graph
    assert list(graphed._warm) == ([1] if host else [])           # host ticks after the first: _replay_tick
    assert graphed.cache_state() == eager.cache_state() and graphed.cache_state().evictions > 0
    nonfinite_tick(model, (graphed, eager), host=host)              # a non-finite frame, then play goes on
    assert (graphed.frame, graphed.pending, graphed.cache_state()) == (eager.frame, eager.pending, eager.cache_state())
    for i in range(3):
        act = torch.rand(1, 5, generator=g) * 2 - 1
        x, _ = graphed.step_decoded(act, steps=1, host=host)
        y, _ = eager.step_decoded(act, steps=1, host=host)
        assert torch.allclose(x, y, atol=1e-4, rtol=1e-4), f"after the error, tick {i}"
