"""The model backend on the CPU with a tiny random-weight world model and autoencoder."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from app.backends import BackendError, GameBackend, ModelBackend, SideBySide, make_backend
from app.config import ModelPaths, PlayConfig, SessionConfig
from app.replay import replay
from world_model.actions import Action
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.model import ModelConfig, WorldModel, save_model
from world_model.rollout import NonFiniteError
from world_model.trace import Trace, save as save_trace

ROOT = Path(__file__).resolve().parents[1]


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8, 8),
                                       enc_blocks=0, dec_blocks=0, groups=4)).eval()
    model = WorldModel(ModelConfig(latent_channels=4, latent_h=15, latent_w=20, dim=32, depth=2, heads=2,
                                   mlp_ratio=2.0)).eval()
    with torch.no_grad():
        for p in model.parameters():      # wake the zero-initialised gates so every path contributes
            p.add_(torch.randn_like(p) * 0.1)
    return model, ae


CFG = PlayConfig(session=SessionConfig(context=3, window=4, sink=1, snapshot_every=2))


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def backend(models, **kw) -> ModelBackend:
    return ModelBackend(CFG, device="cpu", device_note="cpu (no GPU found)", models={"student": models, **kw})


def trace(seed: int = 5, n: int = 12) -> Trace:
    acts = [Action(forward=1.0, turn=0.5 if i % 4 < 2 else -0.5, attack=int(i == 6)) for i in range(n)]
    return Trace(seed=seed, actions=acts, context=3)


def test_replay_on_the_model_is_deterministic_with_a_seed(models, tmp_path):
    runs = []
    for i, seed in enumerate((5, 5, 6)):
        b = backend(models)
        out = replay(trace(seed), b, tmp_path / str(i), video=i == 0)
        b.close()
        assert out["ticks"] == 9
        runs.append(np.load(tmp_path / str(i) / "frames.npz")["frames"])
    assert runs[0].shape == (9, 120, 160, 3) and runs[0].dtype == np.uint8
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert (tmp_path / "0" / "video.mp4").stat().st_size > 0
    header = (tmp_path / "0" / "timing.csv").read_text().splitlines()[0]
    # model: denoise + decode (Session.step_decoded); copy: the frame to host memory
    assert header.startswith("tick,step_ms") and "model_ms" in header and "copy_ms" in header


def test_savestate_restore_replays_the_same_frames(models):
    b = backend(models)
    b.reset(1)
    for _ in range(5):                    # past the 1 + 4 cache slots: evictions happen
        b.step(Action(forward=1))
    snap = b.snapshot()
    a = [b.step(Action(turn=1)) for _ in range(3)]
    b.restore(snap)
    c = [b.step(Action(turn=1)) for _ in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, c))
    st = b.status()
    assert st.savestate and st.steps == 1 and st.cache.evictions > 0 and st.cache.window_capacity == 4
    b.close()


def test_non_finite_output_restores_last_good_snapshot(models, monkeypatch):
    b = backend(models)
    b.reset(1)
    good = [b.step(Action()) for _ in range(2)]          # snapshot_every=2: a good snapshot after tick 2
    real = b.session.step
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise NonFiniteError("nan")
        return real(*a, **k)

    monkeypatch.setattr(b.session, "step", flaky)
    b.step(Action())
    frame = b.step(Action())                             # the faulty tick shows the last good frame
    assert np.array_equal(frame, good[-1]) and b.status().faults == 1
    assert b.step(Action()).shape == (120, 160, 3)       # and play goes on
    b.close()


def test_mode_switch_teacher_missing_then_present(models, tmp_path):
    cfg = PlayConfig(session=CFG.session, models=ModelPaths(teacher=str(tmp_path / "nope.safetensors")))
    b = ModelBackend(cfg, device="cpu", device_note="cpu", models={"student": models})
    b.reset(2)
    msg = b.set_mode("teacher")
    assert "not found" in msg and "--backend game" in msg and b.mode == "1"
    assert b.set_mode("2") == "model: model student 2-step"
    b.models["teacher"] = tiny_models(1)
    assert b.set_mode("teacher") == f"model: model teacher {CFG.session.teacher_steps}-step"
    assert b.step(Action()).shape == (120, 160, 3)
    b.close()


def test_side_by_side_is_model_then_game(models):
    sbs = SideBySide(backend(models), GameBackend(CFG.game))
    first = sbs.reset(4)
    game = GameBackend(CFG.game)
    ref = game.reset(4, [Action()] * 3)
    assert first.shape == (120, 322, 3) and np.array_equal(first[:, 162:], ref)
    f = sbs.step(Action(forward=1))
    assert np.array_equal(f[:, 162:], game.step(Action(forward=1)))
    assert "| game" in sbs.status().name and not sbs.status().savestate
    sbs.close()
    game.close()


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    cfg = PlayConfig(models=ModelPaths(student=str(tmp_path / "student.safetensors"),
                                       teacher=str(tmp_path / "teacher.safetensors")))
    with pytest.raises(BackendError) as e:
        make_backend(cfg, "model", "student", "cpu")
    assert "\n" not in str(e.value) and "student.safetensors" in str(e.value)
    assert "python main.py --backend game" in str(e.value)


def test_default_student_falls_back_to_the_teacher_until_one_ships(models, tmp_path, capsys):
    model, ae = models
    save_model(tmp_path / "teacher.safetensors", model, kind="teacher", dtype=None)
    ae.save(tmp_path / "ae.safetensors")
    cfg = PlayConfig(models=ModelPaths(student=str(tmp_path / "student.safetensors"),
                                       teacher=str(tmp_path / "teacher.safetensors"),
                                       autoencoder=str(tmp_path / "ae.safetensors")))
    backend = make_backend(cfg, "model", "student", "cpu")
    try:
        assert backend.mode == "teacher"
        assert "no student checkpoint yet" in capsys.readouterr().err
    finally:
        backend.close()


def run_main(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_replay_on_saved_tiny_checkpoints_is_deterministic_and_bad_files_are_one_line(models, tmp_path):
    model, ae = models
    save_model(tmp_path / "student.safetensors", model, kind="student", dtype=None)
    ae.save(tmp_path / "ae.safetensors")
    settings = yaml.safe_load((ROOT / "settings/play.yaml").read_text())
    settings["models"] = {"student": str(tmp_path / "student.safetensors"), "teacher": str(tmp_path / "t.safetensors"),
                          "autoencoder": str(tmp_path / "ae.safetensors")}
    settings["session"].update(context=3, window=4)
    (tmp_path / "play.yaml").write_text(yaml.safe_dump(settings))
    save_trace(trace(n=6), tmp_path / "t.jsonl")
    frames = []
    for i in range(2):
        r = run_main("replay", tmp_path / "t.jsonl", "--out", tmp_path / f"o{i}", "--backend", "model",
                     "--device", "cpu", "--settings", tmp_path / "play.yaml", "--no-video")
        assert r.returncode == 0, r.stderr
        frames.append(np.load(tmp_path / f"o{i}" / "frames.npz")["frames"])
    assert np.array_equal(*frames) and frames[0].shape == (3, 120, 160, 3)
    r = run_main("play", "--headless", "--ticks", 5, "--unpaced", "--backend", "model", "--device", "cpu",
                 "--settings", tmp_path / "play.yaml")
    assert r.returncode == 0 and "ticks 5" in r.stdout and "cpu (no GPU found)" in r.stdout, r.stdout + r.stderr
    data = (tmp_path / "student.safetensors").read_bytes()
    (tmp_path / "student.safetensors").write_bytes(data[: len(data) // 2])           # truncated download
    r = run_main("replay", tmp_path / "t.jsonl", "--out", tmp_path / "o3", "--backend", "model", "--device", "cpu",
                 "--settings", tmp_path / "play.yaml")
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "student.safetensors" in r.stderr


def test_student_takes_consistency_steps_and_the_teacher_euler_steps(models):
    b = ModelBackend(CFG, device="cpu", device_note="cpu", models={"student": models, "teacher": models})
    try:
        b.reset(0)
        assert b.session.sampler.kind == "consistency"       # [1, 0] / [1, t_mid, 0] with re-noising
        b.set_mode("teacher")
        b.reset(0)
        assert b.session.sampler.kind == "euler"
    finally:
        b.close()


def test_teacher_guidance_comes_from_settings_and_the_student_never_takes_it(models):
    cfg = PlayConfig(session=SessionConfig(context=3, window=4, sink=1, teacher_cfg=2.5))
    b = ModelBackend(cfg, device="cpu", device_note="cpu", models={"student": models, "teacher": models})
    try:
        b.reset(0)
        assert b.session.sampler.cfg_scale == 1.0           # guidance is distilled into the student
        b.set_mode("teacher")
        b.reset(0)
        assert b.session.sampler.cfg_scale == 2.5
        assert b.step(Action(turn=1.0)).shape == (120, 160, 3)
    finally:
        b.close()


def test_warm_up_tick_leaves_play_unchanged(models):
    """The throw-away tick at reset (CUDA: graph capture before the first played tick) must not change
    what is played: the cache, RNG and counters come back from the snapshot."""
    cold, warm = backend(models), backend(models)
    cold.reset(3)
    warm.reset(3)
    warm._warm_up()
    a = [cold.step(Action(forward=1, turn=0.5)) for _ in range(6)]
    b = [warm.step(Action(forward=1, turn=0.5)) for _ in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert warm.status().cache.position == cold.status().cache.position
    cold.close()
    warm.close()
