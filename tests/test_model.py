"""WorldModel: masks, streaming with the KV cache against full forwards (with and without evictions),
conditioning, config loading and checkpoint round trips. Tiny config, float64 where exactness is checked."""
import math

import pytest
import torch

import settings
from world_model.kv_cache import CacheMode
from world_model.model import (ModelConfig, WorldModel, apply_rope, block_causal_mask, load_model, modulate,
                               save_model, teacher_forcing_mask, token_mask)

TINY = "settings/model/tiny.yaml"


def tiny_model(seed: int = 0, dtype=torch.float64) -> WorldModel:
    """Tiny model with the zero-initialised gates perturbed, so every path actually contributes."""
    torch.manual_seed(seed)
    model = WorldModel(settings.load(TINY, ModelConfig)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def inputs(model: WorldModel, B: int, T: int, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, T, *model.config.latent_shape), generator=g, dtype=dtype)
    a = torch.rand((B, T, 5), generator=g, dtype=dtype) * 2 - 1
    return x, a


def stream(model, x, t, a, sink, window, first_chunk=1):
    """APPEND the frames through a cache (a first chunk together, then one by one); return every output."""
    B, T = x.shape[:2]
    cache = model.new_cache(batch=B, sink=sink, window=window, device="cpu", dtype=x.dtype)
    outs = [model(x[:, :first_chunk], t[:, :first_chunk], a[:, :first_chunk], cache=cache, cache_mode=CacheMode.APPEND)]
    for i in range(first_chunk, T):
        outs.append(model(x[:, i:i + 1], t[:, i:i + 1], a[:, i:i + 1], cache=cache, cache_mode=CacheMode.APPEND))
    return torch.cat(outs, dim=1), cache


def reference_sink_window(model: WorldModel, x, t, a, sink: int, window: int):
    """Independent, naive forward of the streaming semantics: frame n attends to the first `sink` frames,
    the `window` frames before it (from frame sink on) and itself, with keys at the positions frame n sees
    (sink 0..S-1, window S.. oldest first) and the query right after them. Explicit softmax, no cache."""
    cfg, P = model.config, model.config.tokens_per_frame
    B, T = x.shape[:2]
    c = model.condition(t, a, None)                                                   # (B, T, D)
    h = model.patchify(x)                                                             # (B, T, P, D)
    for block in model.blocks:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = block.ada(c)[:, :, None].chunk(6, dim=-1)
        attn = block.attn
        qkv = attn.qkv(modulate(block.norm1(h), shift_a, scale_a)).view(B, T, P, 3, cfg.heads, cfg.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5)                                       # (B, H, T, P, Dh)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out = []
        for n in range(T):
            oldest = max(sink, n - window)
            ctx = list(range(min(n, sink))) + list(range(oldest, n)) + [n]
            pos = torch.tensor([float(m if m < sink else sink + m - oldest) for m in ctx])
            kn = apply_rope(k[:, :, ctx].flatten(2, 3), *model.rope(pos))             # (B, H, |ctx|*P, Dh)
            qn = apply_rope(q[:, :, n], *model.rope(pos[-1:]))                        # (B, H, P, Dh)
            w = torch.softmax(qn @ kn.transpose(-1, -2) / math.sqrt(cfg.head_dim), dim=-1)
            out.append(w @ v[:, :, ctx].flatten(2, 3))                                # (B, H, P, Dh)
        o = torch.stack(out, dim=2).permute(0, 2, 3, 1, 4).reshape(B, T, P, cfg.dim)
        h = h + gate_a * attn.proj(o)
        h = h + gate_m * block.mlp(modulate(block.norm2(h), shift_m, scale_m))
    return model.unpatchify(model.final(h, c))


# ---- masks ----

def test_masks():
    assert torch.equal(block_causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    tf = teacher_forcing_mask(3).int()
    #                          clean 0 1 2 | noisy 0 1 2
    assert tf.tolist() == [[1, 0, 0, 0, 0, 0],   # clean 0
                           [1, 1, 0, 0, 0, 0],   # clean 1
                           [1, 1, 1, 0, 0, 0],   # clean 2
                           [0, 0, 0, 1, 0, 0],   # noisy 0: no history, itself
                           [1, 0, 0, 0, 1, 0],   # noisy 1: clean 0, itself
                           [1, 1, 0, 0, 0, 1]]   # noisy 2: clean 0-1, itself
    assert token_mask(block_causal_mask(2), 3).shape == (6, 6)
    assert token_mask(block_causal_mask(2), 3)[2, 3].item() is False and token_mask(block_causal_mask(2), 3)[3, 2]


# ---- shapes, init, conditioning ----

def test_rope_rotates_each_pair_by_its_angle():
    """apply_rope's three-kernel form equals the textbook pairwise rotation with the angles Rope builds:
    frame position times the temporal frequencies, then row and column times the spatial ones."""
    cfg = settings.load(TINY, ModelConfig)
    model = WorldModel(cfg).double()
    pos = torch.tensor([0, 3, 7])
    cos, sin = model.rope(pos)                                                         # (F*P, Dh) each
    dt, dh, dw = cfg.rope_dims
    freqs = lambda d: cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    P = cfg.tokens_per_frame
    f, p = torch.arange(3 * P) // P, torch.arange(3 * P) % P
    angles = torch.cat([pos[f, None] * freqs(dt), (p // cfg.grid_w)[:, None] * freqs(dh),
                        (p % cfg.grid_w)[:, None] * freqs(dw)], dim=-1)                  # (F*P, Dh/2)
    x = torch.randn(2, cfg.heads, 3 * P, cfg.head_dim, dtype=torch.float64)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = angles.cos(), angles.sin()
    want = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    torch.testing.assert_close(apply_rope(x, cos.double(), sin.double()), want, rtol=1e-5, atol=1e-5)


def test_shapes_padding_and_zero_init():
    model = WorldModel(settings.load(TINY, ModelConfig))
    cfg = model.config
    assert cfg.latent_h % cfg.patch != 0  # the tiny config exercises the padding
    x = torch.randn(2, 3, *cfg.latent_shape)
    v = model(x, torch.rand(2, 3), torch.randn(2, 3, 5))
    assert v.shape == x.shape and v.dtype == x.dtype
    assert torch.all(v == 0)  # adaLN-Zero and a zero output layer: the untrained model predicts v = 0
    assert torch.equal(model.unpatchify(model.final.linear.weight.new_zeros(2, 3, cfg.tokens_per_frame,
                                                                              cfg.patch ** 2 * cfg.latent_channels)),
                       torch.zeros_like(x))


def test_patchify_unpatchify_round_trip():
    model = tiny_model()
    cfg = model.config
    x = torch.randn(2, 3, *cfg.latent_shape, dtype=torch.float64)
    with torch.no_grad():
        model.patch_embed.weight.copy_(torch.eye(cfg.dim, cfg.patch ** 2 * cfg.latent_channels))
        model.patch_embed.bias.zero_()
    tokens = model.patchify(x)[..., :cfg.patch ** 2 * cfg.latent_channels]
    assert torch.equal(model.unpatchify(tokens), x)


def test_action_mask_selects_null_action():
    model = tiny_model()
    x, a = inputs(model, 2, 3)
    t = torch.full((2, 3), 0.5, dtype=torch.float64)
    cond = model(x, t, a)
    assert torch.equal(cond, model(x, t, a, torch.ones(2, 3, dtype=torch.bool)))
    null = model(x, t, a, torch.zeros(2, 3, dtype=torch.bool))
    assert not torch.allclose(cond, null)
    assert torch.allclose(null, model(x, t, torch.randn_like(a), torch.zeros(2, 3, dtype=torch.bool)))


def test_teacher_config_size():
    cfg = settings.load("settings/model/teacher.yaml", ModelConfig)
    n = WorldModel(cfg).num_params()
    assert 10e6 <= n <= 14e6, n           # bf16 teacher stays under ~28 MB
    assert cfg.tokens_per_frame == 80 and cfg.grid_h == 8


def test_bad_config_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("dim: 30\nheads: 4\n")
    with pytest.raises(settings.SettingsError, match="divisible by heads"):
        settings.load(path, ModelConfig)


# ---- streaming equals full forwards ----

def test_streaming_equals_block_causal_forward():
    model = tiny_model()
    x, a = inputs(model, 2, 6)
    t = torch.zeros(2, 6, dtype=torch.float64)
    full = model(x, t, a)
    streamed, cache = stream(model, x, t, a, sink=1, window=5, first_chunk=3)   # capacity 6: no eviction
    assert cache.state().evictions == 0
    torch.testing.assert_close(streamed, full, rtol=0, atol=1e-10)
    # A READONLY denoising pass of a noisy next frame equals the full forward's output for that frame.
    x_next, a_next = inputs(model, 2, 1, seed=2)
    t_next = torch.full((2, 1), 0.7, dtype=torch.float64)
    before = cache.k.clone()
    v = model(x_next, t_next, a_next, cache=cache)
    assert torch.equal(cache.k, before) and cache.position == 6                  # READONLY wrote nothing
    full = model(torch.cat([x, x_next], 1), torch.cat([t, t_next], 1), torch.cat([a, a_next], 1))
    torch.testing.assert_close(v, full[:, -1:], rtol=0, atol=1e-10)


def test_streaming_with_evictions_no_sink_equals_sliding_window_forward():
    model = tiny_model()
    T, W = 9, 3
    x, a = inputs(model, 2, T)
    t = torch.rand(2, T, dtype=torch.float64)
    streamed, cache = stream(model, x, t, a, sink=0, window=W)
    assert cache.state().evictions == T - W
    n = torch.arange(T)
    sliding = (n[None, :] <= n[:, None]) & (n[None, :] >= n[:, None] - W)   # itself and the W frames before
    torch.testing.assert_close(streamed, model(x, t, a, mask=sliding), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sink,window,first_chunk", [(1, 3, 2), (2, 2, 4), (1, 1, 1)])
def test_streaming_with_sink_and_evictions_equals_reference(sink, window, first_chunk):
    model = tiny_model()
    T = 10
    x, a = inputs(model, 2, T)
    t = torch.rand(2, T, dtype=torch.float64)
    streamed, cache = stream(model, x, t, a, sink=sink, window=window, first_chunk=first_chunk)
    assert cache.state().evictions == T - sink - window
    with torch.no_grad():
        torch.testing.assert_close(streamed, reference_sink_window(model, x, t, a, sink, window), rtol=0, atol=1e-10)


def test_streaming_float32_within_tolerance():
    model = tiny_model(dtype=torch.float32)
    x, a = inputs(model, 1, 8, dtype=torch.float32)
    t = torch.zeros(1, 8)
    streamed, _ = stream(model, x, t, a, sink=1, window=3)
    with torch.no_grad():
        torch.testing.assert_close(streamed, reference_sink_window(model, x, t, a, 1, 3), rtol=1e-4, atol=1e-4)


# ---- teacher forcing ----

def test_teacher_forcing_noisy_frames_ignore_the_future_and_match_streaming():
    model = tiny_model()
    T = 5
    x0, a = inputs(model, 2, T)
    xt, _ = inputs(model, 2, T, seed=3)
    t = torch.full((2, T), 0.6, dtype=torch.float64)
    pos = torch.arange(T).repeat(2)

    def tf_forward(x0, xt, a):
        packed, tp = torch.cat([x0, xt], 1), torch.cat([torch.zeros_like(t), t], 1)
        return model(packed, tp, a.repeat(1, 2, 1), frame_pos=pos, mask=teacher_forcing_mask(T))[:, T:]

    out = tf_forward(x0, xt, a)
    k = 2  # change everything from frame k + 1 on, clean and noisy: outputs up to k must not move
    x0b, xtb, ab = x0.clone(), xt.clone(), a.clone()
    x0b[:, k + 1:] += 1.0
    xtb[:, k + 1:] -= 1.0
    ab[:, k + 1:] = -ab[:, k + 1:]
    changed = tf_forward(x0b, xtb, ab)
    torch.testing.assert_close(changed[:, :k + 1], out[:, :k + 1], rtol=0, atol=1e-12)
    assert not torch.allclose(changed[:, k + 1:], out[:, k + 1:])
    x0c = x0.clone()
    x0c[:, k] += 1.0  # clean frame k is history for noisy frames after k only
    moved = tf_forward(x0c, xt, a)
    torch.testing.assert_close(moved[:, :k + 1], out[:, :k + 1], rtol=0, atol=1e-12)
    assert not torch.allclose(moved[:, k + 1], out[:, k + 1])
    # Noisy frame n in the packed sequence sees exactly what streaming gives it: clean 0..n-1 and itself.
    for n in range(T):
        ref = model(torch.cat([x0[:, :n], xt[:, n:n + 1]], 1),
                    torch.cat([torch.zeros(2, n, dtype=torch.float64), t[:, n:n + 1]], 1), a[:, :n + 1])
        torch.testing.assert_close(out[:, n], ref[:, -1], rtol=0, atol=1e-10)


# ---- checkpoints ----

def test_state_round_trip_and_checkpoint(tmp_path):
    model = tiny_model(dtype=torch.float32)
    x, a = inputs(model, 1, 3, dtype=torch.float32)
    t = torch.rand(1, 3)
    again = WorldModel.from_tensors(model.config_dict(), model.state_for_save())
    assert torch.equal(again(x, t, a), model(x, t, a))
    save_model(tmp_path / "teacher.safetensors", model, kind="teacher", dtype=torch.float32, meta={"step": "7"})
    loaded = load_model(tmp_path / "teacher.safetensors", kind="teacher")
    assert loaded.config == model.config and torch.equal(loaded(x, t, a), model(x, t, a))
    save_model(tmp_path / "bf16.safetensors", model)  # default: bf16 weights
    close = load_model(tmp_path / "bf16.safetensors")(x, t, a)
    torch.testing.assert_close(close, model(x, t, a), rtol=0.05, atol=0.05)


def test_position_probe_reads_a_column_that_is_there_and_not_one_that_is_not():
    """recipes/position_probe: the ridge probe recovers the column from features that hold it and scores
    about 0 on noise; block_outputs gives the table-added embedding and every block's tokens."""
    from dataclasses import replace
    from world_model.recipes.position_probe import block_outputs, ridge_r2
    g = torch.Generator().manual_seed(0)
    N, P, D = 40, 80, 16
    col = torch.arange(P) % 10
    noise = torch.randn(N, P, D, generator=g)
    holds = noise.clone()
    holds[..., 0] += col.float() * 3
    r2, err = ridge_r2(holds, col, train=28)
    assert r2 > 0.95 and err < 0.5
    assert ridge_r2(noise, col, train=28)[0] < 0.1
    cfg = replace(settings.load("settings/model/tiny.yaml", ModelConfig), abs_pos=True)
    model = WorldModel(cfg).eval()
    with torch.no_grad():
        model.pos_embed.normal_()
    x0 = torch.randn(3, 4, *cfg.latent_shape)
    outs = block_outputs(model, x0, torch.zeros(3, 4, 5), t=0.0)          # t = 0: the last frame as given
    assert len(outs) == cfg.depth + 1 and all(o.shape == (3, cfg.tokens_per_frame, cfg.dim) for o in outs)
    assert torch.allclose(outs[0], model.patchify(x0)[:, -1] + model.pos_embed)
