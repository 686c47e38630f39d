"""Session (the one rollout) and the samplers: determinism, savestates, gradients, the autoencoder plumbing."""
import pytest
import torch
import torch.nn.functional as F

import settings
from world_model.actions import Action
from world_model.model import ModelConfig, WorldModel
from world_model.rollout import NonFiniteError, Session
from world_model.sampler import (SamplerConfig, consistency_sample, consistency_schedule, euler_sample,
                                 guided_velocity, shifted_schedule)


def tiny_model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    model = WorldModel(settings.load("settings/model/tiny.yaml", ModelConfig))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # leave the zero init, so outputs depend on everything
    return model


def seed_clip(model: WorldModel, B: int = 2, T: int = 3):
    g = torch.Generator().manual_seed(5)
    return (torch.randn((B, T, *model.config.latent_shape), generator=g),
            torch.rand((B, T, 5), generator=g) * 2 - 1)


ACTIONS = [torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, -1.0, 0, 0]]), torch.tensor([[0, 1.0, 0, 1, 0], [0, 0, 0.5, 0, 1]])]


def run(session: Session, n: int, **kw) -> list[torch.Tensor]:
    return [session.step(ACTIONS[i % 2], **kw) for i in range(n)]


def session(model, seed=0, sink=1, window=2, **kw) -> Session:
    s = Session(model, window=window, sink=sink, device="cpu", seed=seed, **kw)
    s.reset(*seed_clip(model))
    return s


# ---- samplers ----

def test_schedules():
    assert shifted_schedule(2, 1.0) == [1.0, 0.5, 0.0]
    assert consistency_schedule(1) == [1.0, 0.0]
    assert consistency_schedule(2) == pytest.approx([1.0, 5 / 6, 0.0])
    assert consistency_schedule(2, t_mid=0.5) == [1.0, 0.5, 0.0]
    assert consistency_schedule(4) == pytest.approx([1.0, 15 / 16, 5 / 6, 5 / 8, 0.0])  # recipe's first chunk
    s = shifted_schedule(16, 3.0)
    assert s[0] == 1.0 and s[-1] == 0.0 and all(a > b for a, b in zip(s, s[1:]))


def test_samplers_are_exact_for_a_single_data_point():
    # Data = one point c: the true velocity is (x - c) / t, rectified flow paths are straight lines, so
    # Euler on any grid and a consistency step both land exactly on c.
    c = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    noise = torch.randn_like(c)
    velocity = lambda x, t, use_action: (x - c) / t
    torch.testing.assert_close(euler_sample(velocity, noise, shifted_schedule(7, 3.0)), c)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(consistency_sample(velocity, noise, [1.0, 0.6, 0.2, 0.0], generator=g), c)


def test_guidance_and_grad_only_on_last_step():
    v = lambda x, t, use_action: torch.full_like(x, 3.0 if use_action else 1.0)
    x = torch.zeros(1)
    assert guided_velocity(v, x, 0.5, 1.0).item() == 3.0
    assert guided_velocity(v, x, 0.5, 0.0).item() == 1.0
    assert guided_velocity(v, x, 0.5, 2.0).item() == 5.0  # 1 + 2 * (3 - 1)
    grad_flags = []

    def record(x, t, use_action):
        grad_flags.append(torch.is_grad_enabled())
        return x
    euler_sample(record, x, [1.0, 0.5, 0.25, 0.0], grad_last=True)
    assert grad_flags == [False, False, True]
    grad_flags.clear()
    consistency_sample(record, x, [1.0, 0.5, 0.0], generator=torch.Generator(), grad_last=False)
    assert grad_flags == [False, False]
    with pytest.raises(ValueError, match="decrease"):
        euler_sample(record, x, [1.0, 0.5])


# ---- Session ----

@pytest.mark.parametrize("sampler", [SamplerConfig(steps=3), SamplerConfig(kind="consistency", steps=2),
                                     SamplerConfig(steps=2, cfg_scale=2.0)])
def test_seeded_session_is_deterministic(sampler):
    model = tiny_model()
    a = run(session(model, seed=7, sampler=sampler), 5)  # 3 seed frames + 5 > sink 1 + window 2: evicts
    b = run(session(model, seed=7, sampler=sampler), 5)
    c = run(session(model, seed=8, sampler=sampler), 5)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.allclose(a[-1], c[-1])
    assert all(x.shape == (2, *model.config.latent_shape) and torch.isfinite(x).all() for x in a)


def test_context_noise_stores_every_frame_noised_at_that_level(monkeypatch):
    """sampler.context_noise = t: seed and generated frames enter the cache as (1 - t) x0 + t eps with time t;
    the returned frames and last_latent stay the clean predictions; fused and unfused agree; 0 is clean."""
    model = tiny_model()
    noisy = SamplerConfig(steps=3, context_noise=0.2)
    times = []   # the time of every frame written into the cache, per model call that writes

    real_forward = model.forward

    def spy(x, t, a, keep=None, **kw):
        mode = kw.get("cache_mode")
        if mode is not None and mode.name in ("APPEND", "FUSED"):
            times.append(t[:, :1] if mode.name == "FUSED" else t)
        return real_forward(x, t, a, keep, **kw)

    monkeypatch.setattr(model, "forward", spy)
    a = run(session(model, seed=7, sampler=noisy), 5)
    assert times and all(torch.equal(t, torch.full_like(t, 0.2)) for t in times)
    monkeypatch.setattr(model, "forward", real_forward)
    b = run(session(model, seed=7, sampler=noisy), 5)
    clean = run(session(model, seed=7, sampler=SamplerConfig(steps=3)), 5)
    fused = run(session(model, seed=7, sampler=noisy, fuse_reencode=True), 5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))                 # seeded: deterministic
    assert not torch.allclose(a[-1], clean[-1], atol=1e-3)               # the noise reaches later frames
    for x, y in zip(a, fused):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    s = session(model, seed=7, sampler=noisy)
    x = s.step(ACTIONS[0], steps=3)
    assert torch.equal(s.last_latent, x)                                 # the clean frame, for decoding


def test_step_depends_on_action_schedule_and_guidance():
    model = tiny_model()
    s = session(model)
    snap = s.snapshot()
    base = s.step(ACTIONS[0], steps=3)
    for kw in [dict(steps=4), dict(schedule=[1.0, 0.3, 0.0])]:
        s.restore(snap)
        assert not torch.allclose(s.step(ACTIONS[0], **kw), base)
    s.restore(snap)
    assert not torch.allclose(s.step(ACTIONS[1], steps=3), base)
    s.restore(snap)
    assert torch.equal(s.step(ACTIONS[0], steps=3), base)
    s.restore(snap)  # one Action is shared by the whole batch
    shared = s.step(Action(forward=1.0), steps=3)
    s.restore(snap)
    assert torch.equal(shared, s.step(torch.tensor([[1.0, 0, 0, 0, 0]] * 2), steps=3))


def test_snapshot_restore_reproduces_next_frames():
    model = tiny_model()
    s = session(model, sampler=SamplerConfig(kind="consistency", steps=2))
    run(s, 2)
    snap = s.snapshot()
    state = s.cache_state()
    first = run(s, 4)
    assert s.cache_state().position == state.position + 4
    s.restore(snap)
    assert s.cache_state() == state and s.frame == 2
    again = run(s, 4)
    for x, y in zip(first, again):
        assert torch.equal(x, y)
    fresh = Session(model, window=2, sink=1, device="cpu", seed=123, sampler=SamplerConfig(kind="consistency", steps=2))
    fresh.restore(snap)  # a savestate also loads into a session that never ran
    assert torch.equal(fresh.step(ACTIONS[0]), first[0])


def test_reset_longer_than_the_cache_and_hud_state():
    model = tiny_model()
    s = Session(model, window=2, sink=1, device="cpu", seed=0)
    s.reset(*seed_clip(model, B=1, T=5))
    st = s.cache_state()
    assert (st.position, st.sink_frames, st.window_frames, st.window_capacity, st.evictions) == (5, 1, 2, 2, 2)
    s.step(Action(forward=1.0, turn=-0.5), steps=2)  # a plain Action for batch 1
    assert s.cache_state().evictions == 3 and s.frame == 1
    with pytest.raises(ValueError, match="expected"):
        s.step(torch.zeros(3, 5))


def test_grad_flows_through_last_step_but_not_into_the_cache():
    model = tiny_model()
    s = session(model)
    x1 = s.step(ACTIONS[0], steps=3, grad=True)
    x2 = s.step(ACTIONS[1], steps=3, grad=True)
    assert x2.requires_grad
    assert not s.cache.k.requires_grad and not s.cache.v.requires_grad
    # x2 depends on x1 only through the cache, which holds a detached re-encode: no path back to x1.
    assert torch.autograd.grad(x2.sum(), x1, allow_unused=True, retain_graph=True)[0] is None
    x2.square().mean().backward()
    assert model.final.linear.weight.grad is not None and model.final.linear.weight.grad.abs().sum() > 0
    assert not run(session(model), 1)[0].requires_grad  # grad=False by default


def test_non_finite_frame_is_not_appended():
    model = tiny_model()
    s = session(model)
    position = s.cache_state().position
    k = s.cache.k.clone()
    with torch.no_grad():
        model.final.linear.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError):
        s.step(ACTIONS[0], steps=2)
    assert s.cache_state().position == position and torch.equal(s.cache.k, k)


class PoolAutoencoder:
    """Duck-typed stand-in with the Autoencoder interface: 8x average pooling to 4 channels."""
    def __init__(self, channels: int):
        self.channels = channels

    def encode(self, x):
        z = F.avg_pool2d(x, 8)                                   # (B, 3, H/8, W/8)
        return torch.cat([z, z[:, :1]], dim=1)[:, :self.channels]

    def decode(self, z):
        return F.interpolate(z[:, :3], scale_factor=8)

    def decode_uint8(self, z):
        return ((self.decode(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def test_reset_frames_and_decode_through_an_autoencoder():
    model = tiny_model()
    cfg = model.config
    H, W = cfg.latent_h * 8, cfg.latent_w * 8
    frames = torch.randint(0, 256, (3, H, W, 3), dtype=torch.uint8)
    s = Session(model, window=2, sink=1, device="cpu", seed=0, autoencoder=PoolAutoencoder(cfg.latent_channels))
    s.reset_frames(frames, [Action()] * 3)
    assert s.cache_state().position == 3
    ae = PoolAutoencoder(cfg.latent_channels)
    expected = ae.encode(frames.permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.allclose(s.last_latent[0], expected[-1])
    img = s.decode(s.step(Action(turn=1.0), steps=2))
    assert img.shape == (1, H, W, 3) and img.dtype == torch.uint8
    with pytest.raises(RuntimeError, match="autoencoder"):
        Session(model, window=2, sink=1, device="cpu").reset_frames(frames, [Action()] * 3)


# ---- action momentum (ModelConfig.action_momentum) ----

def momentum_model(seed: int = 0) -> WorldModel:
    from dataclasses import replace
    torch.manual_seed(seed)
    model = WorldModel(replace(settings.load("settings/model/tiny.yaml", ModelConfig), action_momentum=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_action_features_are_the_decayed_average_of_the_moves():
    from world_model.model import MOVE_DECAY, action_features
    cfg = momentum_model().config
    assert cfg.action_inputs == 7
    a = torch.zeros(1, 6, 5)
    a[0, :, 2] = 0.7                                                          # turning has no momentum
    a[0, :3, 0], a[0, 3:, 0] = 1.0, -1.0                                       # forward, then backward
    f, state = action_features(cfg, a)
    assert f.shape == (1, 6, 7) and torch.equal(f[..., :5], a)
    assert torch.allclose(f[0, :3, 5], torch.ones(3)) and torch.all(f[..., 6] == 0)   # a constant stays itself
    w = MOVE_DECAY ** torch.arange(4.0)                                        # tick 3: weights d^3 .. d^0
    assert torch.isclose(f[0, 3, 5], (w[1:].sum() - w[0]) / w.sum())
    assert torch.all(f[0, 3:, 5].diff() < 0)                                   # turning round: it falls
    head, s = action_features(cfg, a[:, :2])                                   # in pieces, the same
    tail, s = action_features(cfg, a[:, 2:], s)
    assert torch.allclose(torch.cat([head, tail], 1), f) and torch.allclose(s, state)
    off = settings.load("settings/model/tiny.yaml", ModelConfig)
    assert action_features(off, a) == (a, None) and off.action_inputs == 5


def test_momentum_session_carries_it_through_steps_and_savestates():
    """The Session feeds the model what action_features gives over the seed and every step since, and a
    savestate (or a failed step) keeps it."""
    from world_model.model import action_features
    model = momentum_model()
    s = session(model, sampler=SamplerConfig(kind="consistency", steps=1), fuse_reencode=True)
    seed_a = seed_clip(model)[1]
    run(s, 3)
    _, expect = action_features(model.config, torch.cat([seed_a, torch.stack([ACTIONS[i % 2] for i in range(3)], 1)], 1))
    assert torch.allclose(s.momentum, expect)
    snap = s.snapshot()
    first = run(s, 3)
    s.restore(snap)
    assert torch.allclose(s.momentum, expect)
    for x, y in zip(first, run(s, 3)):
        assert torch.equal(x, y)
    # The momentum changes the frame: the same cache, forward against backward momentum.
    a, b = session(model, seed=1), session(model, seed=1)
    a.momentum = torch.tensor([[5.0, 0, 1.0]] * 2)
    b.momentum = torch.tensor([[-5.0, 0, 1.0]] * 2)
    assert not torch.allclose(a.step(ACTIONS[0]), b.step(ACTIONS[0]))


def test_momentum_model_starts_from_a_plain_one_unchanged():
    """load_weights_into: the two new action inputs start at zero weight, so the copy predicts what the
    plain model does; other config differences are refused."""
    from dataclasses import replace
    from world_model.checkpoint import CheckpointError
    from world_model.model import action_features, load_weights_into
    plain = tiny_model()
    moving = WorldModel(replace(plain.config, action_momentum=True))
    load_weights_into(moving, plain)
    assert torch.all(moving.action_embed[0].weight[:, 5:] == 0)
    x, a = seed_clip(plain, T=4)
    t = torch.rand(2, 4)
    with torch.no_grad():
        assert torch.allclose(moving(x, t, action_features(moving.config, a)[0]), plain(x, t, a), atol=1e-6)
    with pytest.raises(CheckpointError, match="another model config"):
        load_weights_into(WorldModel(replace(plain.config, depth=plain.config.depth + 1)), plain)
    with pytest.raises(CheckpointError, match="another model config"):
        load_weights_into(plain, moving)


@pytest.mark.parametrize("addition", ["abs_pos", "patch_action"])
def test_added_table_starts_from_a_plain_model_unchanged_and_streams_like_its_full_forward(addition):
    """abs_pos and patch_action: the new table starts at zero (same predictions as the plain source; the reverse
    copy is refused); once it is not zero it changes the frame, and streaming through the cache still equals
    the block-causal forward, since each frame's addition depends only on that frame and its action."""
    from dataclasses import replace
    from world_model.checkpoint import CheckpointError
    from world_model.kv_cache import CacheMode
    from world_model.model import load_weights_into
    plain = tiny_model()
    placed = WorldModel(replace(plain.config, **{addition: True}))
    load_weights_into(placed, plain)
    table = placed.pos_embed if addition == "abs_pos" else placed.patch_action
    P, D, A = plain.config.tokens_per_frame, plain.config.dim, plain.config.action_inputs
    assert table.shape == ((P, D) if addition == "abs_pos" else (P, A, D))
    assert torch.all(table == 0)
    x, a = seed_clip(plain, T=4)
    t = torch.rand(2, 4)
    with torch.no_grad():
        assert torch.allclose(placed(x, t, a), plain(x, t, a), atol=1e-6)
        table.normal_()
        full = placed(x, torch.zeros(2, 4), a)                                  # (B, T, C, h, w)
        assert not torch.allclose(full, plain(x, torch.zeros(2, 4), a), atol=1e-3)
        cache = placed.new_cache(batch=2, sink=1, window=3, device="cpu", dtype=torch.float32)
        streamed = torch.cat([placed(x[:, i:i + 1], torch.zeros(2, 1), a[:, i:i + 1], cache=cache,
                                     cache_mode=CacheMode.APPEND) for i in range(4)], 1)
    assert torch.allclose(streamed, full, atol=1e-4)
    with pytest.raises(CheckpointError, match="another model config"):
        load_weights_into(plain, placed)


def test_patch_action_is_silent_under_the_null_action_and_grows_with_momentum():
    """The per-patch action map reads the action, so a masked (null) action adds nothing: action guidance's
    unconditional pass sees no action through it. Adding momentum later widens it with zero rows."""
    from dataclasses import replace
    from world_model.model import load_weights_into
    plain = tiny_model()
    cfg = replace(plain.config, patch_action=True)
    model = WorldModel(cfg)
    load_weights_into(model, plain)
    with torch.no_grad():
        model.patch_action.normal_()
    x, a = seed_clip(model, T=3)
    t, off = torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, a), model(x, t, -a), atol=1e-4)
        torch.testing.assert_close(model(x, t, a, off), model(x, t, -a, off))
        moving = WorldModel(replace(cfg, action_momentum=True))
        load_weights_into(moving, model)
    assert moving.patch_action.shape[1] == cfg.action_inputs + 2
    torch.testing.assert_close(moving.patch_action[:, :cfg.action_inputs], model.patch_action)
    assert torch.all(moving.patch_action[:, cfg.action_inputs:] == 0)


def test_attention_kernel_choice_gives_the_same_frames_and_rejects_unknown_names():
    """runtime.attention restricts the SDPA kernel of every pass; the math kernel matches torch's own choice."""
    model = tiny_model()
    a, b = session(model), session(model, attention="math")
    for x, y in zip(run(a, 4, steps=2), run(b, 4, steps=2)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attention must be one of"):
        Session(model, window=2, sink=1, device="cpu", attention="flash")
