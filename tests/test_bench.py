"""`python main.py bench` end to end on the CPU with the tiny model: the table, and JSON with every field;
checkpoints found whole or sharded."""
import json
from dataclasses import replace

import pytest
import torch

import main as cli
from app import bench
from app.bench import PHASES, PhaseTimer, stats
from app.config import load_play, resolve
from settings import load
from world_model import checkpoint
from world_model.autoencoder import Autoencoder
from world_model.model import ModelConfig, WorldModel

TINY = ["--device", "cpu", "--random", "--model-config", "settings/model/tiny.yaml", "--ticks", "3", "--warmup", "1"]


def test_bench_runs_end_to_end_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", *TINY, "--engines", "eager,graphs,onnxruntime", "--memory-ticks", "4",
                   "--onnx-dir", str(tmp_path / "onnx"), "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "student1 eager" in text and "NO STUDENT CHECKPOINT" in text and "random weights" in text
    r = json.loads(out.read_text())
    for key in ("device", "torch", "onnxruntime", "ticks", "warmup", "window", "sink", "weights", "variants",
                "memory_run", "summary", "gl"):
        assert key in r, key
    assert r["weights"]["student"].startswith("NO STUDENT CHECKPOINT")
    names = [v["name"] for v in r["variants"]]
    assert names[0] == "student1 eager"                   # the player's default on the CPU goes first
    assert {v["variant"] for v in r["variants"]} == {"student1", "student2", "teacher"}
    for v in r["variants"]:
        if v["engine"] == "graphs":
            assert v["skipped"] == "CUDA graphs need a CUDA device"
            continue
        assert "error" not in v, v.get("error")
        assert v["ticks"] == 3 and v["first_frame_s"] > 0 and v["dtype"] == "float32"
        for phase in (*PHASES, "tick", "tick_phased"):
            s = v["ms"][phase]
            assert 0 <= s["p50"] <= s["p99"] <= s["max"], (v["name"], phase)
        assert v["ms"]["tick_phased"]["p50"] >= v["ms"]["dit"]["p50"]
        assert {"before_bytes", "after_warmup_bytes", "end_bytes", "growth_bytes", "peak_bytes"} <= set(v["memory"])
    assert r["variants"][0]["load_to_first_frame_s"] > 0
    steps = {v["variant"]: v["steps"] for v in r["variants"]}
    assert steps["student1"] == 1 and steps["student2"] == 2 and steps["teacher"] == r["teacher_steps"]
    assert r["memory_run"]["ticks"] == 4 and len(r["memory_run"]["memory"]["trace"]) == 4
    s = r["summary"]
    assert s["reference_engine"] == "eager" and s["student1_tick_p50_ms"] > 0 and s["teacher_over_student1"] > 0
    assert s["graph_speedup_student1"] is None               # needs CUDA; never made up
    assert s["graph_speedup_against"] == "eager"


def test_bench_rejects_unknown_engine(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", *TINY, "--engines", "tensorrt"])
    assert "unknown variant or engine: tensorrt" in capsys.readouterr().err


def test_phase_timer_and_stats_on_cpu():
    timer = PhaseTimer(cuda=False)
    for _ in range(2):
        with timer("dit"):
            sum(range(1000))
    assert set(timer.collect()) == {"dit"} and timer.collect() == {}
    assert stats([1.0, 2.0, 3.0])["p50"] == 2.0 and stats([1.0, 5.0])["max"] == 5.0


def sharded(path, model, kind):
    """Save `model` as checkpoint.save shards it: NAME.index.json + NAME-0000i-of-0000N.safetensors, no NAME."""
    tensors = model.state_for_save(None)
    sizes = [t.numel() * t.element_size() for t in tensors.values()]
    files = checkpoint.save(path, tensors, kind=kind, config=model.config_dict(),
                            shard_bytes=2**18 + sum(sizes) // 2 + max(sizes))   # save keeps 256 KiB per shard for headers
    assert len(files) >= 3 and not path.exists() and path.with_name(f"{kind}.index.json") in files
    return model


@pytest.fixture
def sharded_pair(tmp_path):
    """A tiny teacher and student, each sharded, at the shipped autoencoder's latent grid."""
    C, h, w = Autoencoder.load(resolve(load_play(resolve("settings/play.yaml")).models.autoencoder)).latent_shape
    cfg = replace(load("settings/model/tiny.yaml", ModelConfig), latent_channels=C, latent_h=h, latent_w=w)
    torch.manual_seed(0)
    teacher = sharded(tmp_path / "teacher.safetensors", WorldModel(cfg), "teacher")
    student = sharded(tmp_path / "student.safetensors", WorldModel(cfg), "student")
    return tmp_path, teacher, student


def test_sharded_checkpoints_are_loaded_and_labelled_as_checkpoints(sharded_pair):
    d, teacher, student = sharded_pair
    for teacher_arg in (d / "teacher.safetensors", d / "teacher.index.json"):    # the name, or the index itself
        args = bench.parse_args(["--device", "cpu", "--teacher", str(teacher_arg), "--model", str(d / "student.safetensors")])
        models = bench.load_models(args, load_play(resolve(args.settings)), "cpu")
        assert models["teacher"][1] == f"checkpoint {d / 'teacher.index.json'}"
        assert models["student"][1] == f"checkpoint {d / 'student.index.json'}"
        for key, want in (("teacher", teacher), ("student", student)):
            got = models[key][0].state_dict()
            assert all(torch.equal(got[k], v) for k, v in want.state_dict().items()), key


def test_bench_times_a_sharded_teacher(sharded_pair, tmp_path, capsys):
    d, _, _ = sharded_pair
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", "--device", "cpu", "--teacher", str(d / "teacher.safetensors"), "--model",
                   str(d / "student.safetensors"), "--variants", "teacher,student1", "--engines", "eager",
                   "--ticks", "1", "--warmup", "0", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert f"teacher: checkpoint {d / 'teacher.index.json'}" in text and "random weights" not in text
    r = json.loads(out.read_text())
    assert {v["variant"]: v["weights"] for v in r["variants"]} == {
        "teacher": f"checkpoint {d / 'teacher.index.json'}", "student1": f"checkpoint {d / 'student.index.json'}"}
    assert all(v["ticks"] == 1 for v in r["variants"])


def test_a_named_checkpoint_that_is_missing_is_an_error_not_random_weights(tmp_path, capsys):
    rc = cli.main(["bench", "--device", "cpu", "--teacher", str(tmp_path / "teacher.safetensors"), "--ticks", "1"])
    assert rc == 1
    assert "--teacher" in capsys.readouterr().err


def test_profile_tick_reports_both_variants_on_the_cpu(tmp_path):
    """The profiling recipe runs the player's sessions (eager on the CPU, where it lists operators instead of
    kernels) and writes a per-tick table for the student and the teacher."""
    from world_model.recipes import profile_tick
    out = tmp_path / "profile.json"
    assert profile_tick.main(["--device", "cpu", "--ticks", "1", "--warmup", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["variants"]) == {"student1", "teacher16"}
    s, t = r["variants"]["student1"], r["variants"]["teacher16"]
    assert 0 < s["kernels_per_tick"] < t["kernels_per_tick"]          # 1 pass against 16
    assert s["top"] and all(row["ms_per_tick"] >= 0 for row in s["top"])
    assert r["command"].startswith("python -m world_model.recipes.profile_tick")


def test_bench_alternates_plain_and_phased_ticks(monkeypatch, tmp_path):
    """--ticks N runs 2N timed ticks: the even ones without the phase timer (tick), the odd ones with it
    (tick_phased and the phases), N of each; the memory soak runs its N ticks as the player does (plain)."""
    seen = []
    from world_model.rollout import Session
    orig = Session.step_decoded

    def spy(self, *a, **kw):
        seen.append(self.timer is not None)
        return orig(self, *a, **kw)

    monkeypatch.setattr(Session, "step_decoded", spy)
    out = tmp_path / "b.json"
    assert cli.main(["bench", *TINY, "--variants", "student1", "--engines", "eager", "--memory-ticks", "4",
                     "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["variants"][0]["ticks"] == 3
    # the variant: 1 warm-up tick (phased), then 3 plain and 3 phased, alternating; the soak: 1 phased + 4 plain
    assert seen == [True, False, True, False, True, False, True] + [True] + [False] * 4
    assert r["memory_run"]["ticks"] == 4 and len(r["memory_run"]["memory"]["trace"]) == 4


def test_tick_host_splits_the_played_tick_on_the_cpu(tmp_path):
    """world_model/recipes/tick_host.py runs its segments uncaptured on the CPU (the script's check; the
    numbers that matter come from CUDA)."""
    import json

    from world_model.recipes import tick_host

    out = tmp_path / "host.json"
    assert tick_host.main(["--device", "cpu", "--ticks", "2", "--warmup", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3
    for r in rows.values():
        assert set(r) == set(tick_host.SEGMENTS) and r["tick"] > 0 and r["pre_replay"] > 0 and r["sync_wait"] == 0


def test_fused_graph_speedup_falls_back_to_plain_eager_and_says_so():
    """graphs-fused is compared with eager-fused when that ran, else with plain eager, named in the summary."""
    from app.bench import engine_summary

    def row(engine: str, tick: float) -> dict:
        return {"variant": "student1", "engine": engine, "ms": {k: {"p50": tick, "p99": tick} for k in ("tick", "dit")}}

    rows = [row("eager", 17.0), row("graphs-fused", 1.5)]
    s = engine_summary(rows, cuda=True, suffix="-fused")
    assert s["graph_speedup_against"] == "eager" and abs(s["graph_speedup_student1"] - 17.0 / 1.5) < 1e-9
    s = engine_summary([*rows, row("eager-fused", 15.0)], cuda=True, suffix="-fused")
    assert s["graph_speedup_against"] == "eager-fused" and abs(s["graph_speedup_student1"] - 10.0) < 1e-9
