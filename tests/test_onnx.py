"""ONNX export of the streaming step and decoder, and the onnxruntime Session, against torch (CPU provider)."""
from dataclasses import replace

import pytest
import torch

import settings
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.model import ModelConfig, WorldModel
from world_model.onnx_export import StreamingStep, dit_example, export_dit
from world_model.onnx_session import OrtSession, ort_session, run_bound
from world_model.rollout import Session
from world_model.sampler import SamplerConfig


def tiny_model(**options: bool) -> WorldModel:
    """The tiny model with every weight perturbed; `options` turn on config flags (action_momentum, ...)."""
    torch.manual_seed(0)
    cfg = settings.load("settings/model/tiny.yaml", ModelConfig)
    model = WorldModel(replace(cfg, **options))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")   # shared: exports of the same model are reused


def tiny_autoencoder() -> Autoencoder:
    torch.manual_seed(1)
    cfg = AutoencoderConfig(latent_channels=4, height=40, width=48, enc_channels=(8, 8, 8, 8),
                            dec_channels=(8, 8, 8, 8), groups=4)
    return Autoencoder(cfg).eval()


@pytest.mark.parametrize("patch_action", [False, True])
def test_exported_step_matches_torch_on_a_partly_filled_cache(tmp_path, patch_action):
    model = tiny_model(patch_action=patch_action)
    path = export_dit(model, tmp_path, batch=2, sink=1, window=3)
    g = torch.Generator().manual_seed(0)
    x, t, a, keep, k, v, valid, slot_pos, query_pos = dit_example(model, batch=2, sink=1, window=3)
    x, k, v = (torch.randn(y.shape, generator=g) for y in (x, k, v))
    t.fill_(0.7)
    keep[1] = False                                           # second sample: null action
    valid[:3], slot_pos[:3], query_pos[0] = True, torch.tensor([0.0, 1.0, 2.0]), 3.0
    inputs = (x, t, a, keep, k, v, valid, slot_pos, query_pos)
    with torch.no_grad():
        want = StreamingStep(model)(*inputs)
    got = {n: torch.empty_like(w) for n, w in zip(("v", "new_k", "new_v"), want)}
    run_bound(ort_session(path, torch.device("cpu")), dict(zip(
        ("x", "t", "action", "keep", "cache_k", "cache_v", "valid", "slot_pos", "query_pos"), inputs)), got)
    for w, name in zip(want, ("v", "new_k", "new_v")):
        torch.testing.assert_close(got[name], w, atol=1e-5, rtol=1e-4)
    assert export_dit(model, tmp_path, batch=2, sink=1, window=3) == path      # cached, not exported again
    assert len(list(tmp_path.glob("*.onnx"))) == 1


@pytest.mark.parametrize("sampler,steps,options", [
    (SamplerConfig(kind="consistency"), 1, {}),
    (SamplerConfig(kind="consistency", cfg_scale=1.5), 2, {}),
    (SamplerConfig(kind="consistency"), 1, {"action_momentum": True}),
    (SamplerConfig(kind="consistency", cfg_scale=1.5), 1, {"action_momentum": True, "patch_action": True})])
def test_ort_session_matches_torch_session_over_streaming_steps(onnx_dir, sampler, steps, options):
    model, ae = tiny_model(**options), tiny_autoencoder()
    kw = dict(window=3, sink=1, device="cpu", seed=4, sampler=sampler, autoencoder=ae)
    ref, ort = Session(model, **kw), OrtSession(model, onnx_dir=onnx_dir, **kw)
    g = torch.Generator().manual_seed(2)
    seed = (torch.randn((1, 3, 4, 5, 6), generator=g), torch.rand((1, 3, 5), generator=g))
    ref.reset(*seed)
    ort.reset(*seed)                                          # appended one frame at a time
    torch.testing.assert_close(ort.cache.k, ref.cache.k, atol=1e-5, rtol=1e-4)
    for i in range(10):                                      # fills the window and evicts
        a = torch.rand((1, 5), generator=g) * 2 - 1
        x_ref, x_ort = ref.step(a, steps=steps), ort.step(a, steps=steps)
        torch.testing.assert_close(x_ort, x_ref, atol=1e-4, rtol=1e-3, msg=f"tick {i}")
        f_ref, f_ort = ref.decode(x_ref), ort.decode(x_ort)
        assert f_ort.dtype == torch.uint8 and f_ort.shape == f_ref.shape == (1, 40, 48, 3)
        assert (f_ort.int() - f_ref.int()).abs().max() <= 1  # rounding boundaries only
        assert ort.cache_state() == ref.cache_state()
    assert ort.cache_state().evictions > 0


def test_ort_session_batch_is_fixed_at_export(onnx_dir):
    s = OrtSession(tiny_model(), window=3, sink=1, device="cpu", onnx_dir=onnx_dir)
    with pytest.raises(ValueError, match="exported for batch 1"):
        s.reset(torch.zeros(2, 1, 4, 5, 6), torch.zeros(2, 1, 5))


def test_runtime_setting_picks_the_engine(onnx_dir):
    from app.config import load_play
    from world_model.graphs import GraphedSession
    from world_model.runtime import RuntimeConfig, make_session

    assert load_play("settings/play.yaml").runtime == RuntimeConfig(engine="auto", onnx_dir="out/onnx")
    model = tiny_model()
    kw = dict(window=3, sink=1, device="cpu")
    assert type(make_session(model, runtime=RuntimeConfig(), **kw)) is Session           # auto on the CPU
    assert type(make_session(model, runtime=RuntimeConfig(engine="onnxruntime"), onnx_dir=onnx_dir, **kw)) is OrtSession
    with pytest.raises(ValueError, match="graphs needs a CUDA device"):
        make_session(model, runtime=RuntimeConfig(engine="graphs"), **kw)
    assert issubclass(GraphedSession, Session)
