import json
from pathlib import Path

import numpy as np
import pytest
import torch

import settings
from world_model import checkpoint
from world_model.autoencoder import Autoencoder, AutoencoderConfig, frames_to_model, psnr
from world_model.recipes import train_autoencoder as recipe

TINY = Path(__file__).resolve().parents[1] / "settings/train/autoencoder_tiny.yaml"


def tiny_config(**kw) -> AutoencoderConfig:
    return AutoencoderConfig(**{"latent_channels": 4, "height": 48, "width": 64, "enc_channels": (8, 8, 16, 16),
                                "dec_channels": (16, 16, 8, 8), "groups": 4, **kw})


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, h, w) in [-1, 1]: low-frequency colour fields, learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, h // 8, w // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def test_shapes_and_uint8():
    model = Autoencoder(tiny_config())
    x = smooth_images(2, 48, 64)
    z = model.encode(x)
    assert z.shape == (2, 4, 6, 8) and model.latent_shape == (4, 6, 8)
    assert model.decode(z).shape == (2, 3, 48, 64)
    frames = model.decode_uint8(z * 50)   # far out of range: must clamp, not wrap
    assert frames.shape == (2, 48, 64, 3) and frames.dtype == torch.uint8 and frames.is_contiguous()
    assert AutoencoderConfig().latent_shape == (32, 15, 20)   # the default: 160x120 -> 20x15


def test_scale_is_applied_both_ways():
    model = Autoencoder(tiny_config()).eval()
    x = smooth_images(2, 48, 64)
    y0 = model.decode(model.encode(x))
    model.scale.fill_(4.0)
    assert torch.allclose(model.encode(x), 4.0 * model.encode_raw(x))
    assert torch.allclose(model.decode(model.encode(x)), y0, atol=1e-5)


def test_inference_copy_keeps_the_scale_in_float32_and_decodes_alike():
    """The bf16 inference copy (runtime.cast_weights): weights in bf16, scale exact, float32 latents accepted,
    and the same frames up to bf16 rounding; the original is untouched."""
    model = Autoencoder(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.scale.fill_(1.2345)
        half = model.inference_copy(torch.bfloat16)
        assert half.decoder.stem.weight.dtype == torch.bfloat16 and half.scale.dtype == torch.float32
        assert half.scale.item() == model.scale.item() and model.decoder.stem.weight.dtype == torch.float32
        z = model.encode(smooth_images(2, 48, 64))
        assert half.encode(smooth_images(2, 48, 64)).dtype == torch.bfloat16
        db = psnr(frames_to_model(half.decode_uint8(z)), frames_to_model(model.decode_uint8(z)))
    assert float(db.min()) > 35


def test_config_validation():
    with pytest.raises(ValueError, match="enc_channels"):
        AutoencoderConfig(enc_channels=(32, 64))
    with pytest.raises(ValueError, match="multiples of downsample"):
        tiny_config(height=50)
    with pytest.raises(settings.SettingsError, match="model.latent_channels: must be >= 1"):
        settings.load(TINY, recipe.TrainConfig, {"model.latent_channels": 0})


def test_uint8_round_trip_and_psnr():
    frames = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    x = frames_to_model(frames)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1), frames)
    off = x + 2 / 255   # one grey level everywhere
    assert torch.allclose(psnr(off.clamp(-1, 1), x), torch.full((2,), 48.13), atol=0.5)


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = Autoencoder(tiny_config())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = smooth_images(8, 48, 64)
    cfg = recipe.LossConfig()
    losses = []
    for _ in range(30):
        loss, parts = recipe.ae_loss(model, x, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert set(parts) == {"l1", "grad", "mse", "latent_l2"}
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3])


def test_checkpoint_round_trip(tmp_path):
    model = Autoencoder(tiny_config()).eval()
    model.scale.fill_(0.37)
    model.save(tmp_path / "ae.safetensors", meta={"step": "5"})
    back = Autoencoder.load(tmp_path / "ae.safetensors")
    assert back.config == model.config and back.scale.item() == pytest.approx(0.37)
    x = smooth_images(2, 48, 64)
    assert torch.equal(back.decode(back.encode(x)), model.decode(model.encode(x)))
    model.save(tmp_path / "q.safetensors", quantize_int8=True)
    q = Autoencoder.load(tmp_path / "q.safetensors")
    assert (q(x) - model(x)).abs().max() < 0.05
    checkpoint.save(tmp_path / "t.safetensors", model.state_dict(), kind="teacher", config=model.config)
    with pytest.raises(checkpoint.CheckpointError, match="expected 'autoencoder'"):
        Autoencoder.load(tmp_path / "t.safetensors")
    bad = {**json.loads(json.dumps(settings.to_dict(model.config))), "latent_channels": 5}
    checkpoint.save(tmp_path / "b.safetensors", model.state_dict(), kind="autoencoder", config=bad)
    with pytest.raises(checkpoint.CheckpointError, match="do not match"):
        Autoencoder.load(tmp_path / "b.safetensors")


def test_pool_and_reservoir():
    pool = recipe.FramePool(4, (2, 2, 3), seed=0)
    pool.add(np.arange(6, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3))
    assert pool.size == 4 and pool.added == 6 and pool.sample(8).shape == (8, 2, 2, 3)
    res = recipe.Reservoir(3, (1, 1, 1), seed=0)
    res.add(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1))
    assert res.size == 3 and res.added == 100 and len(set(res.snapshot().ravel())) == 3


def test_recipe_end_to_end_and_resume(tmp_path):
    """Tiny config on real game frames: trains, saves, resumes, writes metrics, plot and summary."""
    cfg = settings.load(TINY, recipe.TrainConfig)
    summary = recipe.main(cfg, tmp_path)
    assert summary["step"] == 6 and np.isfinite(summary["psnr"]) and summary["decode_ms"] > 0
    for name in ("autoencoder.safetensors", "train_state.safetensors", "metrics.csv", "metrics.png", "summary.json"):
        assert (tmp_path / name).exists(), name
    model = Autoencoder.load(tmp_path / "autoencoder.safetensors")
    assert model.config == cfg.model and model.scale.item() == pytest.approx(summary["latent_scale"])
    more = settings.load(TINY, recipe.TrainConfig, {"steps": 8})
    assert recipe.main(more, tmp_path, resume=True)["step"] == 8
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and rows[-1].startswith("8,")


def test_time_limit_stops_and_saves(tmp_path):
    cfg = settings.load(TINY, recipe.TrainConfig, {"steps": 10_000, "max_minutes": 0.001})
    summary = recipe.main(cfg, tmp_path)
    assert 1 <= summary["step"] < 10_000
    assert (tmp_path / "autoencoder.safetensors").exists()


def test_compiled_decoder_twin_shares_the_weights_and_decodes_alike():
    """runtime.compile_decoder: the twin's decoder is the same module behind torch.compile (here dynamo with
    the eager backend, so the check is about the wiring, not inductor); the original stays uncompiled."""
    model = Autoencoder(tiny_config()).eval()
    with torch.no_grad():
        model.scale.fill_(1.7)
        twin = model.with_compiled_decoder(backend="eager")
        assert twin.encoder is model.encoder and twin.scale is model.scale
        assert twin.decoder._orig_mod is model.decoder and not hasattr(model.decoder, "_orig_mod")
        z = model.encode(smooth_images(2, 48, 64))
        assert torch.equal(twin.decode_uint8(z), model.decode_uint8(z))
        model.decoder.out.bias.add_(0.5)                                   # one set of weights: both see it
        assert torch.equal(twin.decode_uint8(z), model.decode_uint8(z))


def test_cast_for_inference_gives_the_cpu_a_channels_last_decoder():
    """On the CPU the world model is left as it is, and the autoencoder becomes a float32 copy whose decoder
    runs in channels_last (faster with oneDNN); same frames up to a grey level."""
    from world_model.runtime import RuntimeConfig, cast_for_inference
    model = Autoencoder(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        world = torch.nn.Linear(2, 2)
        same, ae = cast_for_inference(world, model, runtime=RuntimeConfig(), device="cpu", dtype=torch.float32)
        assert same is world and ae is not model and ae.channels_last and not model.channels_last
        assert ae.decoder.stem.weight.dtype == torch.float32
        assert ae.decoder.stem.weight.is_contiguous(memory_format=torch.channels_last)
        z = model.encode(smooth_images(2, 48, 64))
        diff = (ae.decode_uint8(z).int() - model.decode_uint8(z).int()).abs()
    assert int(diff.max()) <= 1
