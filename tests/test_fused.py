"""Fused re-encode (runtime.fuse_reencode): the re-encode of frame n runs inside frame n+1's first denoising
pass. It must be the same computation as the unfused Session: the model's FUSED pass against APPEND then
READONLY (float64, at every fill level, with evictions, with and without sink frames), and the fused Session
against the plain one over rollouts, savestates, guidance, grad steps, NaN recovery and the graph path."""
import copy
import json
import math
import sys
import threading
from dataclasses import replace

import pytest
import torch

import main as cli
from app import bench
import settings
from world_model.graphs import GraphedSession
from world_model.kv_cache import CacheMode
from world_model.model import ModelConfig, WorldModel
from world_model.rollout import NonFiniteError, Session
from world_model.runtime import RuntimeConfig, make_session
from world_model.sampler import SamplerConfig

from conftest import on_meta

TOL = dict(rtol=1e-4, atol=1e-4)    # float32 on the CPU: fused and unfused differ only in reduction order


def tiny_model(dtype=torch.float32) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(settings.load("settings/model/tiny.yaml", ModelConfig)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)   # leave the zero init, so outputs depend on everything
    return model.eval()


def seed_clip(model: WorldModel, B: int = 2, T: int = 3):
    g = torch.Generator().manual_seed(5)
    return (torch.randn((B, T, *model.config.latent_shape), generator=g),
            torch.rand((B, T, 5), generator=g) * 2 - 1)


def actions(n: int, B: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.rand((B, 5), generator=g) * 2 - 1 for _ in range(n)]


def sessions(model, sampler, *, sink=1, window=3, T=3, cls=Session, **kw):
    """(unfused, fused) sessions with the same seed, reset on the same clip."""
    made = []
    for fuse in (False, True):
        s = cls(model, window=window, sink=sink, device="cpu", seed=7, sampler=sampler, fuse_reencode=fuse, **kw)
        s.reset(*seed_clip(model, T=T))
        made.append(s)
    return made


# ---- the model's FUSED pass ----

@pytest.mark.parametrize("sink,window", [(0, 1), (0, 3), (1, 1), (1, 3), (2, 2)])
def test_fused_pass_equals_append_then_readonly(sink, window):
    model = tiny_model(torch.float64)
    T = sink + window + 5                                     # fills the cache, then evicts on every frame
    g = torch.Generator().manual_seed(1)
    clean, noisy = (torch.randn((2, T, *model.config.latent_shape), generator=g, dtype=torch.float64) for _ in "ab")
    a_clean, a_noisy = (torch.rand((2, T, 5), generator=g, dtype=torch.float64) for _ in "ab")
    t = torch.rand((2, T, 1), generator=g, dtype=torch.float64)
    zero = torch.zeros(2, 1, dtype=torch.float64)
    ref, fused = (model.new_cache(batch=2, sink=sink, window=window, device="cpu", dtype=torch.float64) for _ in "ab")
    for i in range(T):
        model(clean[:, i:i + 1], zero, a_clean[:, i:i + 1], cache=ref, cache_mode=CacheMode.APPEND)
        v_ref = model(noisy[:, i:i + 1], t[:, i], a_noisy[:, i:i + 1], cache=ref)                 # READONLY
        v = model(torch.stack([clean[:, i], noisy[:, i]], 1), torch.cat([zero, t[:, i]], 1),
                  torch.stack([a_clean[:, i], a_noisy[:, i]], 1), cache=fused, cache_mode=CacheMode.FUSED)
        torch.testing.assert_close(v[:, 1:], v_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(fused.k, ref.k, rtol=0, atol=1e-10)                          # same keys stored
        assert fused.position == ref.position == i + 1
        for name in ("valid", "slot_pos", "_query_pos", "_write_tok", "_pos"):
            assert torch.equal(getattr(fused, name), getattr(ref, name)), name
    assert ref.state().evictions == T - sink - window


def test_fused_pass_takes_two_frames():
    model = tiny_model()
    cache = model.new_cache(batch=1, sink=1, window=2, device="cpu", dtype=torch.float32)
    x = torch.zeros(1, 3, *model.config.latent_shape)
    with pytest.raises(ValueError, match="2 frames"):
        model(x, torch.zeros(1, 3), torch.zeros(1, 3, 5), cache=cache, cache_mode=CacheMode.FUSED)


# ---- Session ----

@pytest.mark.parametrize("sampler,steps", [(SamplerConfig(kind="consistency"), 1),
                                           (SamplerConfig(kind="consistency"), 2),
                                           (SamplerConfig(kind="consistency", cfg_scale=1.5), 2),   # null pass fused
                                           (SamplerConfig(kind="euler", steps=3), 3)])
def test_fused_session_equals_unfused_over_a_rollout_with_evictions(sampler, steps):
    model = tiny_model()
    plain, fused = sessions(model, sampler, sink=1, window=3)
    assert fused.cache_state() == replace(plain.cache_state(), pending=1)
    n = 3 * plain.cache.slots                                 # well past sink + window: evicts every tick
    for i, a in enumerate(actions(n)):
        x, y = plain.step(a, steps=steps), fused.step(a, steps=steps)
        torch.testing.assert_close(y, x, **TOL, msg=f"tick {i}")
        st, ft = plain.cache_state(), fused.cache_state()
        assert ft == replace(st, pending=1)                   # the HUD reads the same, plus pending=1
        assert fused.cache.position == plain.cache.position - 1
    assert plain.cache_state().evictions > plain.cache.slots
    assert fused.frame == plain.frame == n
    torch.testing.assert_close(fused.last_latent, plain.last_latent, **TOL)


@pytest.mark.parametrize("T", [1, 2, 6])    # one seed frame; fewer than the slots; more (reset itself evicts)
def test_fused_reset_with_any_number_of_seed_frames(T):
    model = tiny_model()
    plain, fused = sessions(model, SamplerConfig(kind="consistency"), sink=1, window=2, T=T)
    assert fused.cache.position == T - 1 and fused.cache_state() == replace(plain.cache_state(), pending=1)
    for a in actions(4):
        torch.testing.assert_close(fused.step(a, steps=1), plain.step(a, steps=1), **TOL)


def test_snapshot_with_a_pending_frame_replays_identically():
    model = tiny_model()
    sampler = SamplerConfig(kind="consistency")
    plain, fused = sessions(model, sampler, sink=1, window=2)
    acts = actions(9)
    for a in acts[:3]:
        fused.step(a, steps=2)
    snap = fused.snapshot()
    assert snap.pending is not None
    state = fused.cache_state()
    first = [fused.step(a, steps=2) for a in acts[3:]]
    fused.restore(snap)
    assert fused.cache_state() == state and fused.frame == 3
    again = [fused.step(a, steps=2) for a in acts[3:]]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    # Into a fused session that never ran, and into an unfused one (its next pass appends the pending frame).
    fresh = Session(model, window=2, sink=1, device="cpu", seed=99, sampler=sampler, fuse_reencode=True)
    fresh.restore(snap)
    assert torch.equal(fresh.step(acts[3], steps=2), first[0])
    plain.restore(snap)
    torch.testing.assert_close(plain.step(acts[3], steps=2), first[0], **TOL)
    assert plain.pending is None and plain.cache_state() == replace(fresh.cache_state(), pending=0)


def test_snapshot_is_not_aliased_by_later_steps():
    model = tiny_model()
    _, fused = sessions(model, SamplerConfig(kind="consistency"))
    snap = fused.snapshot()
    pending = [x.clone() for x in snap.pending]
    for a in actions(3):
        fused.step(a, steps=1)
    assert all(torch.equal(x, y) for x, y in zip(snap.pending, pending))


def test_non_finite_frame_leaves_the_fused_session_like_the_unfused_one():
    model = tiny_model()
    plain, fused = sessions(model, SamplerConfig(kind="consistency"), sink=1, window=2)
    acts = actions(4)
    for a in acts[:2]:
        plain.step(a, steps=1), fused.step(a, steps=1)
    good = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model.final.linear.bias.fill_(float("nan"))
    for s in (plain, fused):
        with pytest.raises(NonFiniteError):
            s.step(acts[2], steps=1)
    # The fused session appended its (finite) pending frame in that pass and holds nothing pending now.
    assert fused.pending is None and fused.cache_state() == plain.cache_state()
    model.load_state_dict(good)
    torch.testing.assert_close(fused.step(acts[3], steps=1), plain.step(acts[3], steps=1), **TOL)
    assert fused.cache_state() == replace(plain.cache_state(), pending=1)


def test_grad_step_appends_the_pending_frame_separately():
    model = tiny_model()
    plain, fused = sessions(model, SamplerConfig(kind="consistency"), sink=1, window=2)
    for i, a in enumerate(actions(5)):
        x, y = plain.step(a, steps=2, grad=True), fused.step(a, steps=2, grad=True)
        assert y.requires_grad and not fused.cache.k.requires_grad and not fused.cache.v.requires_grad
        torch.testing.assert_close(y, x, **TOL, msg=f"tick {i}")
    y.square().mean().backward()
    assert model.final.linear.weight.grad.abs().sum() > 0


# ---- CUDA-graph session (capture=False: the very functions a graph captures, run eagerly) ----

@pytest.mark.parametrize("sampler,steps", [(SamplerConfig(kind="consistency"), 1),
                                           (SamplerConfig(kind="consistency", cfg_scale=1.5), 2),
                                           (SamplerConfig(kind="euler", steps=3), 3),
                                           (SamplerConfig(kind="euler", steps=3, context_noise=0.2), 3)])
def test_graphed_fused_equals_eager_fused(sampler, steps):
    model = tiny_model()
    eager = Session(model, window=3, sink=1, device="cpu", seed=7, sampler=sampler, fuse_reencode=True)
    graphed = GraphedSession(model, window=3, sink=1, device="cpu", seed=7, sampler=sampler, fuse_reencode=True,
                             capture=False)
    for s in (eager, graphed):
        s.reset(*seed_clip(model))
    for i, a in enumerate(actions(3 * eager.cache.slots)):
        x, y = eager.step(a, steps=steps), graphed.step(a, steps=steps)
        assert torch.equal(x, y), f"tick {i}"
        assert torch.equal(eager.cache.k, graphed.cache.k) and torch.equal(eager.cache.v, graphed.cache.v)
        for name in ("valid", "slot_pos", "_query_pos", "_write_tok", "_pos", "_next_slot"):
            assert torch.equal(getattr(eager.cache, name), getattr(graphed.cache, name)), name
        assert eager.cache_state() == graphed.cache_state()
    assert set(k[0] for k in graphed._fns) == {"dit-fused"}   # one function per schedule serves every tick
    snap = graphed.snapshot()
    after = [graphed.step(a, steps=steps) for a in actions(3)]
    graphed.restore(snap)
    assert all(torch.equal(x, graphed.step(a, steps=steps)) for x, a in zip(after, actions(3)))


def test_fused_step_function_has_no_host_sync_or_data_dependent_shape():
    # On the meta device any .item(), bool(tensor) or data-dependent shape raises: what capture forbids.
    model = tiny_model()
    s = GraphedSession(model, window=3, sink=1, device="cpu", capture=False, fuse_reencode=True,
                       sampler=SamplerConfig(kind="consistency", cfg_scale=2.0))
    s, noise, a = on_meta(s, model)
    C, h, w = model.config.latent_shape
    x0 = Session._denoise(s, noise, a, [1.0, 0.5, 0.0], False, (torch.empty(1, C, h, w, device="meta"), a))
    assert x0.shape == (1, C, h, w) and x0.device.type == "meta"


# ---- runtime and bench ----

def test_make_session_passes_fuse_reencode_and_onnxruntime_runs_unfused(tmp_path):
    model = tiny_model()
    s = make_session(model, runtime=RuntimeConfig(engine="eager"), window=2, sink=1, device="cpu")
    assert type(s) is Session and s.fuse_reencode                                  # the default
    off = RuntimeConfig(engine="eager", fuse_reencode=False)
    assert not make_session(model, runtime=off, window=2, sink=1, device="cpu").fuse_reencode
    ort = make_session(model, runtime=RuntimeConfig(engine="onnxruntime"), window=2, sink=1, device="cpu",
                       onnx_dir=tmp_path)
    assert not ort.fuse_reencode
    with pytest.raises(ValueError, match="compile"):
        make_session(model, runtime=RuntimeConfig(engine="onnxruntime", compile=True), window=2, sink=1,
                     device="cpu", onnx_dir=tmp_path)


def test_runtime_compile_plays_the_same_frames_as_eager():
    import torch
    model = tiny_model()
    frames = []
    for compiled in (False, True):
        s = make_session(model, runtime=RuntimeConfig(engine="eager", compile=compiled), window=2, sink=1,
                         device="cpu", seed=3)
        C, h, w = model.config.latent_shape
        s.reset(torch.randn(1, 2, C, h, w, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 2, 5))
        frames.append(torch.stack([s.step(torch.zeros(1, 5), steps=1) for _ in range(4)]))
    assert torch.allclose(frames[0], frames[1], atol=1e-4)


def test_runtime_compile_decoder_gives_the_session_a_compiled_twin():
    from world_model.autoencoder import Autoencoder, AutoencoderConfig
    model = tiny_model()
    C, h, w = model.config.latent_shape
    ae = Autoencoder(AutoencoderConfig(latent_channels=C, height=h * 8, width=w * 8, enc_channels=(8, 8, 8, 8),
                                       dec_channels=(8, 8, 8, 8))).eval()
    plain = make_session(model, runtime=RuntimeConfig(engine="eager", compile_decoder="off"), window=2, sink=1,
                         device="cpu", autoencoder=ae)
    assert plain.autoencoder is ae
    auto = make_session(model, runtime=RuntimeConfig(engine="eager"), window=2, sink=1, device="cpu",
                        autoencoder=ae)
    assert auto.autoencoder is ae                                           # auto: compiled on CUDA only
    s = make_session(model, runtime=RuntimeConfig(engine="eager", compile_decoder="on", compile_decoder_wait=True),
                     window=2, sink=1, device="cpu", autoencoder=ae)
    assert s.autoencoder.decoder._orig_mod is ae.decoder and not hasattr(ae.decoder, "_orig_mod")
    assert s.autoencoder.decoder_compile_mode is None                       # "default": torch.compile's own
    tuned = make_session(model, runtime=RuntimeConfig(engine="eager", compile_decoder="on",
                                                      compile_decoder_mode="max-autotune-no-cudagraphs"),
                         window=2, sink=1, device="cpu", autoencoder=ae)
    assert tuned.autoencoder.decoder_compile_mode == "max-autotune-no-cudagraphs"
    assert tuned.autoencoder.decoder_compile_pending is not None            # background, waits for a frame
    z = torch.randn(1, C, h, w, generator=torch.Generator().manual_seed(0))
    diff = (s.decode(z).int() - plain.decode(z).int()).abs()                # inductor on the CPU, uint8 frames
    assert int(diff.max()) <= 1


def test_background_decoder_compile_swaps_in_mid_play_and_the_graphs_recapture():
    """runtime.compile_decoder with compile_decoder_wait false: the session decodes with the stock decoder
    until the worker thread has compiled it (here dynamo with the eager backend), then GraphedSession (eager
    on the CPU) builds a decode function for the new decoder and drops the stale one; frames stay the same.
    A compile that fails leaves the stock decoder and says why."""
    from world_model.autoencoder import Autoencoder, AutoencoderConfig
    from world_model.graphs import GraphedSession
    model = tiny_model()
    C, h, w = model.config.latent_shape
    ae = Autoencoder(AutoencoderConfig(latent_channels=C, height=h * 8, width=w * 8, enc_channels=(8, 8, 8, 8),
                                       dec_channels=(8, 8, 8, 8))).eval()
    z = torch.randn(1, C, h, w, generator=torch.Generator().manual_seed(0))
    switch = sys.getswitchinterval()
    with torch.no_grad():
        reference = ae.decode_uint8(z)
        gate = threading.Event()

        def slow_eager(gm, example_inputs):             # a backend that waits, so the swap comes mid-play
            gate.wait(30)
            return gm.forward

        twin = ae.with_compiled_decoder(backend=slow_eager, background=True)
        s = GraphedSession(model, window=2, sink=1, device="cpu", seed=0, autoencoder=twin)
        assert not twin.decoder_ready.is_set() and twin.decoder is ae.decoder
        assert twin.decoder_compile_pending is not None                     # not started before a frame
        assert torch.equal(s.decode(z), reference)                          # stock, before the compile
        assert twin.decoder_compile_pending is None and sys.getswitchinterval() <= 0.0005   # started by it
        stale = [k for k in s._fns if k[0] == "decode"]
        gate.set()
        assert twin.decoder_ready.wait(60) and twin.decoder_compile_error is None
        assert twin.decoder._orig_mod is ae.decoder and twin.decoder_compile_s > 0
        assert sys.getswitchinterval() == switch                            # restored when done
        assert torch.equal(s.decode(z), reference)                          # compiled, after the swap
        keys = [k for k in s._fns if k[0] == "decode"]
        assert len(keys) == 1 and keys != stale

        def broken(gm, example_inputs):
            raise RuntimeError("no compiler here")

        with pytest.warns(UserWarning, match="keeping the stock one"):
            failed = ae.with_compiled_decoder(backend=broken, background=True)
            failed.start_decoder_compile()
            assert failed.decoder_ready.wait(60)
        assert failed.decoder is ae.decoder and "no compiler here" in repr(failed.decoder_compile_error)
        assert torch.equal(failed.decode_uint8(z), reference)


def test_bench_times_the_fused_engines(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", "--device", "cpu", "--random", "--model-config", "settings/model/tiny.yaml", "--ticks", "3",
                   "--warmup", "1", "--variants", "student1", "--engines", "eager,eager-fused,graphs-fused",
                   "--json", str(out)])
    assert rc == 0
    assert "fused re-encode (eager-fused)" in capsys.readouterr().out
    r = json.loads(out.read_text())
    rows = {v["name"]: v for v in r["variants"]}
    assert rows["student1 graphs-fused"]["skipped"] == "CUDA graphs need a CUDA device"
    fused, plain = rows["student1 eager-fused"], rows["student1 eager"]
    assert fused["ms"]["reencode"]["max"] == 0 and plain["ms"]["reencode"]["p50"] > 0   # inside dit when fused
    f = r["summary"]["fused"]
    assert f["reference_engine"] == "eager-fused" and f["student1_tick_p50_ms"] > 0
    ratio = r["summary"]["student1_tick_p50_ms"] / f["student1_tick_p50_ms"]
    assert math.isclose(f["unfused_over_fused_student1"], ratio)


def test_bench_summary_on_cuda_reports_the_fused_engines_against_the_targets():
    # The H100 path of the summary and the table, on made-up rows (no CUDA here): fused numbers are their own
    # block, the top level stays the unfused engines.
    def row(variant, engine, tick, dit):
        ms = {k: {"p50": v, "p99": 2 * v, "max": 3 * v, "mean": v} for k, v in
              {"tick": tick, "dit": dit, "reencode": 0.0, "decode": 0.5, "upload": 0.05}.items()}
        mem = {"peak_bytes": 2**20, "end_bytes": 2**20, "growth_bytes": 0}
        return {"name": f"{variant} {engine}", "variant": variant, "engine": engine, "ms": ms, "dtype": "bfloat16",
                "memory": mem, "first_frame_s": 0.5}
    results = [row("student1", "graphs", 4.0, 1.8), row("student1", "eager", 24.0, 10.0),
               row("student1", "graphs-fused", 2.5, 1.9), row("student1", "eager-fused", 13.0, 11.0),
               row("teacher", "graphs", 30.0, 28.0), row("teacher", "graphs-fused", 29.0, 28.5)]
    s = bench.summarize(results, cuda=True, memory_run=None)
    assert s["reference_engine"] == "graphs" and s["student1_tick_p50_ms"] == 4.0
    assert s["targets"]["student1_p50_ms"]["met"] is False and s["targets"]["first_frame_s"]["met"] is True
    f = s["fused"]
    assert f["reference_engine"] == "graphs-fused" and f["student1_tick_p50_ms"] == 2.5
    assert math.isclose(f["unfused_over_fused_student1"], 4.0 / 2.5)
    assert math.isclose(f["graph_speedup_student1"], 13.0 / 2.5) and math.isclose(f["teacher_over_student1"], 29.0 / 2.5)
    assert f["targets"]["student1_p99_ms"]["met"] is False and f["targets"]["graph_speedup"]["met"] is True
    report = {"device": "cuda: made up", "torch": "x", "onnxruntime": "x", "threads": 1, "ticks": 1, "warmup": 0,
              "window": 14, "sink": 1, "weights": {}, "variants": results, "summary": s}
    text = bench.table(report)
    assert "fused re-encode (graphs-fused): student 1-step tick p50 2.50 ms" in text
    assert "target student1_p50_ms (fused): 2.5 <= 2.0 -> NOT met" in text
