"""The evaluation recipe end to end on the CPU with a tiny random-weight model and autoencoder, and the
action-response score with the real game standing in for the model."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from settings import load
from world_model.actions import Action
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.game import Game
from world_model.model import ModelConfig, WorldModel, save_model
from world_model.recipes import evaluate as E
from world_model.trace import Trace, save as save_trace

ROOT = Path(__file__).resolve().parents[1]


def tiny_checkpoints(tmp: Path) -> tuple[Path, Path]:
    """tiny.yaml's model at the real latent grid (15 x 20, 4 channels) and a tiny 160x120 autoencoder."""
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, enc_channels=(8, 8, 8, 8), dec_channels=(8, 8, 8, 8),
                                       enc_blocks=0, dec_blocks=0, groups=4))
    cfg = replace(load(ROOT / "settings/model/tiny.yaml", ModelConfig), latent_h=15, latent_w=20)
    model = WorldModel(cfg)
    with torch.no_grad():
        for p in model.parameters():      # wake the zero-initialised gates so every path contributes
            p.add_(torch.randn_like(p) * 0.1)
    ae.save(tmp / "ae.safetensors")
    save_model(tmp / "teacher.safetensors", model, kind="teacher", dtype=None)
    return tmp / "teacher.safetensors", tmp / "ae.safetensors"


def short_trace(path: Path, n: int = 30, seed: int = 10_000) -> Path:
    acts = [Action(forward=1.0, turn=0.6 if i % 10 < 5 else -0.6) for i in range(n)]
    save_trace(Trace(seed=seed, actions=acts, context=8), path)
    return path


def test_recipe_runs_end_to_end_and_writes_every_output(tmp_path):
    model, ae = tiny_checkpoints(tmp_path)
    trace = short_trace(tmp_path / "heldout-a.jsonl")
    args = ["--model", str(model), "--autoencoder", str(ae), "--traces", str(trace), "--device", "cpu",
            "--quick", "--context", "3", "--window", "4"]
    E.main(args + ["--out", str(tmp_path / "a")])
    out = tmp_path / "a"
    for name in ("metrics.json", "table.md", "side_by_side.mp4", "horizon.png", "drift.png", "horizon.csv",
                 "windows.csv", "teacher_forced.csv", "probes.csv", "idle.csv", "drift.csv"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "metrics.json").read_text())
    assert res["video"] == "side_by_side.mp4"
    ar = res["autoregressive"]
    assert ar["windows"] == 2 and set(ar["horizons"]) == {"1", "2", "4"}
    for v in ar["horizons"].values():
        assert 0 < v["psnr"] < 60 and -1 <= v["ssim"] <= 1 and v["frozen_psnr"] > 0
    tf = res["teacher_forced"]
    assert tf["ticks"] == 4 and tf["psnr"] > 0 and tf["copy_last_psnr"] > tf["psnr"]   # random weights lose
    assert res["action_response"]["combined"]["scored"] >= 1
    idle = res["idle"]
    assert idle["states"] >= 1 and set(idle["horizons"]) == {"1", "3"}
    for v in idle["horizons"].values():
        assert 0 < v["psnr"] <= 60 and 0 < v["frozen_psnr"] <= 60
    assert "| idle PSNR @ 3 no-op ticks" in (out / "table.md").read_text()
    header = (out / "idle.csv").read_text().splitlines()[0]
    assert header == "trace,tick,valid,psnr_1,frozen_psnr_1,psnr_3,frozen_psnr_3"
    assert res["drift"]["ticks"] == 12 and len((out / "drift.csv").read_text().splitlines()) == 13
    assert res["drift"]["rollouts"] == 2 and len(res["drift"]["per_rollout"]) == 2   # quick: two, one batch
    assert "rollouts collapsed" in (out / "table.md").read_text()
    assert "| autoregressive PSNR @ 1 ticks |" in (out / "table.md").read_text()
    windows = (out / "windows.csv").read_text().splitlines()
    assert len(windows) == 1 + res["autoregressive"]["windows"]
    header = windows[0].split(",")
    assert header[:2] == ["trace", "start"] and {"psnr_1", "model_mean_1", "game_mean_1", "model_std_1", "game_std_1"} <= set(header)
    row = dict(zip(header, windows[1].split(",")))
    assert 0 <= float(row["model_mean_1"]) <= 255 and 0 < float(row["game_mean_1"]) <= 255
    import imageio.v2 as iio
    video = iio.mimread(out / "side_by_side.mp4")
    assert len(video) == 12 and video[0].shape == (120 + 14, 320, 3)


def test_without_imageio_ffmpeg_the_video_is_skipped_and_everything_else_written(tmp_path, monkeypatch, capsys):
    """The H100 machine has imageio but not imageio-ffmpeg: imageio's FFMPEG plugin then fails to import."""
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)            # `import imageio_ffmpeg` raises ImportError
    monkeypatch.delitem(sys.modules, "imageio.plugins.ffmpeg", raising=False)   # so the plugin re-imports it
    model, ae = tiny_checkpoints(tmp_path)
    trace = short_trace(tmp_path / "heldout-a.jsonl", n=20)
    out = tmp_path / "a"
    E.main(["--model", str(model), "--autoencoder", str(ae), "--traces", str(trace), "--device", "cpu", "--quick",
            "--context", "3", "--window", "4", "--drift-ticks", "6", "--out", str(out)])   # returns: exit status 0
    text = capsys.readouterr().out
    assert "side_by_side.mp4 skipped: imageio-ffmpeg is not installed" in text
    assert "side_by_side.mp4" not in text.splitlines()[-1]             # the "wrote ..." line lists what exists
    assert not list(out.glob("*.mp4"))
    res = json.loads((out / "metrics.json").read_text())
    assert res["video"] is None and res["drift"]["ticks"] == 6
    for name in ("table.md", "horizon.png", "drift.png", "horizon.csv", "teacher_forced.csv", "probes.csv", "drift.csv"):
        assert (out / name).stat().st_size > 0, name



def test_parts_runs_only_what_is_asked_and_says_what_was_skipped(tmp_path, capsys):
    model, ae = tiny_checkpoints(tmp_path)
    trace = short_trace(tmp_path / "heldout-a.jsonl", n=20)
    args = ["--model", str(model), "--autoencoder", str(ae), "--traces", str(trace), "--device", "cpu", "--quick",
            "--context", "3", "--window", "4"]
    E.main(args + ["--parts", "ar,response", "--out", str(tmp_path / "a")])
    out = tmp_path / "a"
    assert sorted(f.name for f in out.iterdir()) == ["horizon.csv", "horizon.png", "metrics.json", "probes.csv",
                                                     "table.md", "windows.csv"]
    res = json.loads((out / "metrics.json").read_text())
    assert res["autoregressive"]["windows"] == 2 and res["action_response"]["combined"]["scored"] >= 1
    assert res["teacher_forced"] is None and res["idle"] is None and res["drift"] is None
    text = (out / "table.md").read_text()
    assert "Skipped (--parts): teacher_forced, idle, drift." in text
    assert "| autoregressive PSNR @ 1 ticks |" in text and "| action response, move |" in text
    assert "teacher-forced" not in text and "drift over" not in text
    with pytest.raises(SystemExit, match="--parts takes"):
        E.main(args + ["--parts", "ar,bogus", "--out", str(tmp_path / "b")])


def test_seeded_rollouts_are_deterministic(tmp_path):
    model, ae = tiny_checkpoints(tmp_path)
    cfg = replace(E.EvalConfig(context=3, window=4).quick(), max_windows=1)
    m = E.load_models(model, ae, cfg, "cpu")
    with Game() as game:
        played = [E.play_trace(E.load_trace(short_trace(tmp_path / "t.jsonl", n=12)), "t", game)]
    runs = [(E.autoregressive(m, played, cfg), E.teacher_forced(m, played, cfg)[0]) for _ in range(2)]
    assert runs[0] == runs[1]
    other, _ = E.autoregressive(m, played, replace(cfg, seed=1))
    assert other["curve"]["psnr"] != runs[0][0][0]["curve"]["psnr"]      # the seed reaches the noise


def test_action_guidance_reaches_the_sampler_and_changes_the_rollout(tmp_path):
    model, ae = tiny_checkpoints(tmp_path)
    base = replace(E.EvalConfig(context=3, window=4).quick(), max_windows=1)
    with Game() as game:
        played = [E.play_trace(E.load_trace(short_trace(tmp_path / "t.jsonl", n=12)), "t", game)]
    plain, _ = E.autoregressive(E.load_models(model, ae, base, "cpu"), played, base)
    guided_cfg = replace(base, cfg_scale=3.0)
    m = E.load_models(model, ae, guided_cfg, "cpu")
    assert m.sampler.cfg_scale == 3.0
    guided, _ = E.autoregressive(m, played, guided_cfg)
    assert guided["curve"]["psnr"] != plain["curve"]["psnr"]
    assert E.autoregressive(m, played, guided_cfg)[0] == guided                 # still deterministic


@pytest.mark.parametrize("sampler,steps", [("euler", 2), ("consistency", 2)])
def test_rollouts_through_the_graphed_session_equal_plain_ones(tmp_path, sampler, steps):
    """The evaluation's rollouts go through graphs.GraphedSession (captured on CUDA); on the CPU its static
    step functions run uncaptured and must give the plain Session's numbers, probes (snapshot/restore) included."""
    model, ae = tiny_checkpoints(tmp_path)
    base = replace(E.EvalConfig(context=3, window=4).quick(), max_windows=1, sampler=sampler, steps=steps)
    with Game() as game:
        played = [E.play_trace(E.load_trace(short_trace(tmp_path / "t.jsonl", n=14)), "t", game)]
    states = E.probe_states(played, base)
    out = {}
    for graphs in (False, True):
        cfg = replace(base, graphs=graphs)
        m = E.load_models(model, ae, cfg, "cpu")
        assert type(m.session(cfg, 0, rollout=True)).__name__ == ("GraphedSession" if graphs else "Session")
        finals, _ = E.model_probes(m, states, cfg)
        out[graphs] = (E.autoregressive(m, played, cfg)[0]["curve"]["psnr"], {k: v.tolist() for k, v in finals.items()})
    assert out[True] == out[False]


def test_bad_checkpoint_is_one_line(tmp_path):
    model, ae = tiny_checkpoints(tmp_path)
    trace = short_trace(tmp_path / "t.jsonl")
    with pytest.raises(SystemExit, match="error: .*autoencoder"):
        E.main(["--model", str(model), "--autoencoder", str(model), "--traces", str(trace), "--out",
                str(tmp_path / "o"), "--device", "cpu", "--quick"])


def test_teacher_forced_context_is_what_streaming_holds():
    cfg = E.EvalConfig(context=3, window=4, sink=1)
    starts = np.zeros(20, bool)
    starts[0] = starts[12] = True
    p = E.Played("p", Trace(seed=0, actions=[]), np.zeros((20, 1, 1, 3), np.uint8), np.zeros((20, 5)), starts)
    assert E.context_indices(p, 3, cfg) == [0, 1, 2]
    assert E.context_indices(p, 10, cfg) == [0, 6, 7, 8, 9]           # sink + last window
    assert E.context_indices(p, 14, cfg) == [12, 13]                   # a new episode resets the context


@pytest.fixture(scope="module")
def game_probe_frames():
    """Action probes of the real game from 6 states of a policy-like trace."""
    acts = [Action(forward=1.0, turn=0.4 * np.sin(i / 7)) for i in range(200)]
    trace = Trace(seed=10_001, actions=acts, context=8)
    cfg = E.EvalConfig(probe_stride=30, max_probes=6)
    with Game() as game:
        p = E.play_trace(trace, "probe", game)
    states = E.probe_states([p], cfg)
    finals, valid = E.game_probes(states, cfg)
    starts = np.stack([pp.frames[s - 1] for pp, s in states])
    return finals, valid, starts, p


def test_the_game_scores_itself_perfectly_and_a_frozen_model_scores_zero(game_probe_frames):
    finals, valid, starts, _ = game_probe_frames
    assert valid.all()
    perfect, _ = E.action_response(finals, finals, valid)
    assert perfect["turn"]["scored"] >= 5 and perfect["move"]["scored"] >= 4
    assert perfect["combined"]["score"] == 1.0
    frozen, _ = E.action_response({k: starts for k in finals}, finals, valid)
    assert frozen["combined"]["score"] == 0.0
    swapped = {"left": finals["right"], "right": finals["left"], "forward": finals["backward"],
               "backward": finals["forward"]}
    wrong, _ = E.action_response(swapped, finals, valid)     # a model that mixes up the directions
    assert wrong["combined"]["score"] == 0.0
    # gain: how far the model moves, as a fraction of the game: 1 itself, 0 frozen, -1 the wrong way
    for k in ("turn", "move"):
        assert (perfect[k]["gain"], frozen[k]["gain"], wrong[k]["gain"]) == (1.0, 0.0, -1.0)


def test_drift_check_passes_the_game_and_fails_frozen_and_gray_rollouts(game_probe_frames):
    p = game_probe_frames[3]
    game, actions = p.frames[8:], p.actions[8:]
    real = E.drift_stats(game, game, actions, len(game))
    assert not real["collapsed"] and real["in_range"] == 1.0 and real["motion_ratio"] == 1.0
    frozen = E.drift_stats(np.repeat(game[:1], len(game), 0), game, actions, len(game))
    assert frozen["collapsed"] and not frozen["checks"]["not_frozen"]
    gray = E.drift_stats(np.full_like(game, 128), game, actions, len(game))
    assert gray["collapsed"] and not gray["checks"]["in_range"]
    assert real["mean_excess_max"] == 0 and real["longest_out_of_range_ticks"] == 0
    assert gray["longest_out_of_range_ticks"] == len(game) and gray["mean_excess_max"] > 20
    white = game.copy()
    white[100:130] = 255                                               # a 30-tick blow-up to white
    blown = E.drift_stats(white, game, actions, len(game))
    assert blown["longest_out_of_range_ticks"] == 30 and blown["mean_excess_max"] > 100
    short = E.drift_stats(game[:50], game, actions, len(game))    # a NaN cut the rollout short
    assert short["collapsed"] and not short["checks"]["finite"]
    # Several rollouts: one collapsing is enough to fail; shares are averaged, the worst spell kept.
    both = E.drift_summary([real, gray])
    assert both["collapsed"] and both["collapsed_rollouts"] == 1 and both["rollouts"] == 2
    assert both["in_range"] == 0.5 and (both["in_range_min"], both["in_range_max"]) == (0.0, 1.0)
    assert both["longest_out_of_range_ticks"] == len(game) and both["per_rollout"] == [real, gray]
    assert not E.drift_summary([real, real])["collapsed"]


def test_idle_stability_scores_the_game_perfectly_and_a_last_frame_model_as_the_frozen_baseline(game_probe_frames):
    _, _, last, p = game_probe_frames
    cfg = E.EvalConfig(probe_stride=30, max_probes=6)                  # horizons 1, 8, 35, 70
    states = E.probe_states([p], cfg)
    game, valid = E.game_idle(states, cfg)
    K = len(cfg.idle_horizons)
    assert game.shape == (len(states), K, 120, 160, 3) and valid.all()
    finite = np.full(len(states), max(cfg.idle_horizons))
    psnr = lambda frames, ok=finite: E.idle_stats(frames, game, last, valid, ok, cfg.idle_horizons)[0]["horizons"]
    # the player stops after moving: the image still slides for a while, then settles
    settle = [float(E.M.psnr(game[:, k], game[:, -1]).mean()) for k in range(K)]
    assert settle[0] < settle[2] < settle[3] == 60.0
    perfect, still = psnr(game), psnr(np.repeat(last[:, None], K, 1))
    assert set(perfect) == {"1", "8", "35", "70"}
    for h in perfect:
        assert perfect[h]["psnr"] == 60.0 and perfect[h]["frozen_psnr"] < 30
        assert still[h]["psnr"] == pytest.approx(still[h]["frozen_psnr"])   # returns the last frame: the baseline
    broken = psnr(game, np.full(len(states), 8))                       # NaN from tick 9 on: those frames score 0
    assert broken["8"]["psnr"] == 60.0 and broken["35"]["psnr"] == broken["70"]["psnr"] == 0.0
    invalid = valid.copy()
    invalid[0] = False                                                 # a state whose game episode ended
    stats, per = E.idle_stats(np.repeat(last[:, None], K, 1), game, last, invalid, finite, cfg.idle_horizons)
    assert stats["states"] == len(states) - 1 and per["psnr_70"].shape == (len(states),)
    assert stats["horizons"]["70"]["psnr"] == pytest.approx(float(per["psnr_70"][1:].mean()))


def test_choose_cfg_takes_the_best_response_that_keeps_image_quality(tmp_path, capsys):
    from world_model.recipes import choose_cfg

    def run(scale, ar8, ar32, score):
        return {"config": {"cfg_scale": scale}, "action_response": {"combined": {"score": score}},
                "autoregressive": {"horizons": {"8": {"psnr": ar8}, "32": {"psnr": ar32}}}}
    runs = [run(1.0, 21.0, 19.0, 0.40), run(2.0, 20.5, 18.4, 0.70), run(3.0, 19.0, 17.5, 0.90)]
    assert choose_cfg.choose(runs) == 2.0                 # 3 is better at responding, but loses 2 dB @8
    assert choose_cfg.choose(runs, tolerance=3.0) == 3.0
    assert choose_cfg.choose([run(1.0, 21, 19, 0.5), run(2.0, 21, 19, 0.5)]) == 1.0   # tie: the smaller
    assert choose_cfg.choose([]) == 1.0
    for r in runs:
        d = tmp_path / f"cfg{r['config']['cfg_scale']}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(r))
    choose_cfg.main([str(tmp_path / "cfg1.0"), str(tmp_path / "cfg2.0"), str(tmp_path / "cfg3.0"), str(tmp_path / "none")])
    assert capsys.readouterr().out.strip() == "2"


def test_probe_sweep_scores_each_scale(capsys):
    from world_model.recipes import probe_sweep
    probe_sweep.main(["--model", "teacher", "--traces", "assets/traces/heldout-10001.jsonl", "--scales", "1,2",
                      "--probes", "1", "--steps", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("1 states") and len(lines) == 3
    assert lines[1].startswith("scale 1: action response") and lines[2].startswith("scale 2: action response")
