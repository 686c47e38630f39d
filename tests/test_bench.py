"""`python main.py bench` end to end on the CPU with the tiny model: the table, and JSON with every field."""
import json

import pytest

import main as cli
from app.bench import PHASES, PhaseTimer, stats

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
        for phase in (*PHASES, "tick"):
            s = v["ms"][phase]
            assert 0 <= s["p50"] <= s["p99"] <= s["max"], (v["name"], phase)
        assert v["ms"]["tick"]["p50"] >= v["ms"]["dit"]["p50"]
        assert {"before_bytes", "after_warmup_bytes", "end_bytes", "growth_bytes", "peak_bytes"} <= set(v["memory"])
    assert r["variants"][0]["load_to_first_frame_s"] > 0
    steps = {v["variant"]: v["steps"] for v in r["variants"]}
    assert steps["student1"] == 1 and steps["student2"] == 2 and steps["teacher"] == r["teacher_steps"]
    assert r["memory_run"]["ticks"] == 4 and len(r["memory_run"]["memory"]["trace"]) == 4
    s = r["summary"]
    assert s["reference_engine"] == "eager" and s["student1_tick_p50_ms"] > 0 and s["teacher_over_student1"] > 0
    assert s["graph_speedup_student1"] is None               # needs CUDA; never made up


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
