"""The teacher recipe on CPU: tiny configs, real collector data, resume, and DDP over gloo."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import settings
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.model import load_model
from world_model.recipes import train_teacher

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "settings/train/teacher_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, enc_channels=(8, 8, 16, 16), dec_channels=(16, 16, 8, 8),
                                       groups=4))
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    ae.save(path)
    return path


def test_recipe_trains_saves_and_resumes(tiny_ae, tmp_path):
    cfg = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae)})
    out = tmp_path / "run"
    summary = train_teacher.main(cfg, out)
    assert summary["step"] == 12
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 1 + 6
    assert (out / "metrics.png").stat().st_size > 1000 and (out / "summary.json").exists()
    teacher = load_model(out / "teacher.safetensors", kind="teacher")
    assert teacher.config_dict() == train_teacher.WorldModel(cfg.model).config_dict()
    # Resume continues the step count and appends to the CSV.
    more = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "steps": 16})
    assert train_teacher.main(more, out, resume=True)["step"] == 16
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 8


def test_mismatched_autoencoder_is_refused(tiny_ae, tmp_path):
    cfg = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "model.latent_channels": 8})
    with pytest.raises(ValueError, match="does not match"):
        train_teacher.main(cfg, tmp_path / "bad")


def test_ddp_two_processes_over_gloo(tiny_ae, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "world_model.recipes.train_teacher", str(TINY), "--out", str(tmp_path / "ddp"),
           "--set", f"autoencoder={tiny_ae}", "--set", "steps=4", "--set", "data.collect.workers=2"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 4


def test_own_rollout_keeps_the_real_start_and_continues_as_the_session_does():
    model = train_teacher.WorldModel(settings.load(TINY, train_teacher.TrainConfig).model).eval()
    cfg = settings.load(TINY, train_teacher.TrainConfig, {"clip_len": 6, "rollout_steps": 2})
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 6, *model.config.latent_shape), generator=g)
    actions = torch.rand((2, 6, 5), generator=g) * 2 - 1
    made = train_teacher.own_rollout(train_teacher.rollout_session(model, cfg, torch.device("cpu"), 0),
                                     latents, actions, 3, cfg.rollout_steps)
    assert made.shape == latents.shape and not made.requires_grad
    assert torch.equal(made[:, :3], latents[:, :3]) and not torch.allclose(made[:, 3:], latents[:, 3:])
    fresh = train_teacher.rollout_session(model, cfg, torch.device("cpu"), 0)
    fresh.reset(latents[:, :3], actions[:, :3])
    for j in range(3, 6):
        assert torch.equal(made[:, j], fresh.step(actions[:, j], steps=2))


def test_recipe_trains_on_its_own_rollouts(tiny_ae, tmp_path):
    cfg = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "rollout_rows": 2,
                                                           "rollout_from": 2, "steps": 6})
    summary = train_teacher.main(cfg, tmp_path / "roll")
    assert summary["step"] == 6
    header, *rows = (tmp_path / "roll" / "metrics.csv").read_text().splitlines()
    col = header.split(",").index("ms_rollout")
    assert all(float(r.split(",")[col]) > 0 for r in rows)        # the rollout ran on every logged step
    bad = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "rollout_rows": 3})
    with pytest.raises(ValueError, match="rollout_rows=3"):
        train_teacher.main(bad, tmp_path / "bad")


@pytest.mark.parametrize("addition", ["action_momentum", "abs_pos", "patch_action"])
def test_a_plain_teacher_continues_with_an_addition(tiny_ae, tmp_path, addition):
    """--init from a plain teacher into a config with action momentum, the absolute position table or the
    per-patch action map: what is new starts at zero (load_weights_into), training moves it, and the saved
    teacher carries the config."""
    plain = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "steps": 4})
    train_teacher.main(plain, tmp_path / "plain")
    grown = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "steps": 8,
                                                           f"model.{addition}": True})
    summary = train_teacher.main(grown, tmp_path / "grown", init=tmp_path / "plain" / "teacher.safetensors")
    assert summary["step"] == 8 and math.isfinite(summary["val_mse_tf"])
    teacher = load_model(tmp_path / "grown" / "teacher.safetensors", kind="teacher")
    assert getattr(teacher.config, addition)
    if addition == "action_momentum":
        assert teacher.action_embed[0].weight.shape[1] == 7
    else:                                                             # trained away from its zero start
        assert (teacher.pos_embed if addition == "abs_pos" else teacher.patch_action).abs().sum() > 0


def test_map_lr_mult_speeds_the_added_map_and_resumes(tiny_ae, tmp_path):
    """map_lr_mult puts the per-patch action map in its own AdamW group at that multiple of the rate: after the
    same steps from the same plain teacher it has moved several times further, and a --resume of such a run
    restores its Adam moments into the same layout."""
    plain = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "steps": 4})
    train_teacher.main(plain, tmp_path / "plain")
    moved = {}
    for mult in (1.0, 10.0):
        cfg = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "steps": 8,
                                                             "model.patch_action": True, "map_lr_mult": mult})
        train_teacher.main(cfg, tmp_path / f"x{mult:g}", init=tmp_path / "plain" / "teacher.safetensors")
        moved[mult] = load_model(tmp_path / f"x{mult:g}" / "teacher.safetensors").patch_action.abs().max().item()
    assert moved[1.0] > 0 and moved[10.0] > 3 * moved[1.0], moved
    more = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "steps": 10,
                                                          "model.patch_action": True, "map_lr_mult": 10.0})
    assert train_teacher.main(more, tmp_path / "x10", resume=True)["step"] == 10
    groups = train_teacher.param_groups(train_teacher.WorldModel(more.model), 10.0)
    assert [g["mult"] for g in groups] == [1.0, 10.0] and len(groups[1]["params"]) == 1


def test_recipe_trains_on_fork_pairs(tiny_ae, tmp_path):
    over = {"autoencoder": str(tiny_ae), "steps": 6, "pair_rows": 2, "data.collect.fork.share": 0.5,
            "data.collect.fork.prefix": 2, "data.collect.fork.branch": 2, "data.collect.fork.gap_min": 2,
            "data.collect.fork.gap_max": 4, "data.min_pairs": 2, "data.pair_capacity": 64}
    summary = train_teacher.main(settings.load(TINY, train_teacher.TrainConfig, over), tmp_path / "forks")
    assert summary["step"] == 6 and math.isfinite(summary["val_pair_effect"])
    header, *rows = (tmp_path / "forks" / "metrics.csv").read_text().splitlines()
    col = header.split(",").index("loss_pair")
    assert all(math.isfinite(float(r.split(",")[col])) for r in rows)   # pairs in every logged step
    for bad, match in [({"data.collect.fork.share": 0.0}, "needs fork pairs"),
                       ({"data.collect.fork.branch": 6}, "more than clip_len")]:
        cfg = settings.load(TINY, train_teacher.TrainConfig, {**over, **bad, "data.collect.chunk_ticks": 64})
        with pytest.raises(ValueError, match=match):
            train_teacher.main(cfg, tmp_path / "bad")


def test_guard_stops_a_run_whose_held_out_loss_rises(tiny_ae, tmp_path):
    """lr 1 wrecks the tiny model within six steps: the guard must stop it at the first validation."""
    cfg = settings.load(TINY, train_teacher.TrainConfig, {"autoencoder": str(tiny_ae), "lr": 1.0, "min_lr": 1.0,
                                                           "guard_val_tf": 0.1})
    summary = train_teacher.main(cfg, tmp_path / "guarded")
    assert summary["step"] == cfg.eval_every == 6 and summary["stopped_by_guard_at"] == 6
    assert summary["val_mse_tf"] > summary["guard_ref_val_mse_tf"] * 1.1   # the starting model, same clips
    assert load_model(tmp_path / "guarded" / "teacher.safetensors", kind="teacher") is not None
