"""Issue 7, checkpoints: bad files given to `main.py --model PATH` are one line and a non-zero exit, and the
checkpoint loader survives 1,000 mutated files with nothing but CheckpointError.

Most CLI cases call main.main() in this process (a subprocess costs a torch import); one case runs the real
command line in a subprocess to show the same through the shell.
"""
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import main
from app.backends import BackendError, load_models
from app.config import ModelPaths, PlayConfig
from test_app_model import tiny_models
from world_model import checkpoint
from world_model.actions import NOOP
from world_model.checkpoint import CheckpointError
from world_model.model import ModelConfig, WorldModel, save_model
from world_model.trace import Trace, save as save_trace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good tiny student + autoencoder, player settings pointing at them, a short trace, and bad files."""
    d = tmp_path_factory.mktemp("ckpt")
    model, ae = tiny_models()
    save_model(d / "student.safetensors", model, kind="student", dtype=None)
    ae.save(d / "ae.safetensors")
    settings_ = yaml.safe_load((ROOT / "settings/play.yaml").read_text())
    settings_["models"] = {"student": str(d / "student.safetensors"), "teacher": str(d / "teacher.safetensors"),
                           "autoencoder": str(d / "ae.safetensors")}
    settings_["session"].update(context=2, window=4)
    (d / "play.yaml").write_text(yaml.safe_dump(settings_))
    save_trace(Trace(seed=3, actions=[NOOP] * 4, context=2), d / "t.jsonl")
    good = (d / "student.safetensors").read_bytes()

    def bad(name: str, data: bytes) -> Path:
        (d / name).write_bytes(data)
        return d / name

    n = int.from_bytes(good[:8], "little")
    header = bytearray(good)
    header[8 + n // 2] ^= 0x5A                                            # a flipped byte in the JSON header
    body = bytearray(good)
    body[len(body) - 100] ^= 0xFF                                         # a flipped byte in a weight
    cases = {
        "truncated": bad("truncated.safetensors", good[: len(good) * 2 // 3]),
        "empty": bad("empty.safetensors", b""),
        "header": bad("header.safetensors", bytes(header)),
        "corrupt": bad("corrupt.safetensors", bytes(body)),
        "random": bad("random.safetensors", random.Random(0).randbytes(4096)),
        "pickle": _pickle(d / "pickle.safetensors", model),
        "wrong_kind": d / "ae.safetensors",
        "directory": d,
        "missing": d / "nope.safetensors",
    }
    tensors = model.state_for_save()
    cfg = model.config_dict()
    checkpoint.save(d / "mismatch.safetensors", tensors, kind="student", config={**cfg, "dim": 64, "heads": 2})
    checkpoint.save(d / "huge.safetensors", tensors, kind="student", config={**cfg, "dim": 65536, "depth": 4})
    checkpoint.save(d / "deep.safetensors", tensors, kind="student", config={**cfg, "depth": 10**9})
    checkpoint.save(d / "badcfg.safetensors", tensors, kind="student", config={**cfg, "heads": 3})
    checkpoint.save(d / "unknown_key.safetensors", tensors, kind="student", config={**cfg, "flux": 1})
    other = WorldModel(ModelConfig(latent_channels=8, latent_h=15, latent_w=20, dim=32, depth=2, heads=2, mlp_ratio=2.0))
    save_model(d / "latents.safetensors", other, kind="student", dtype=None)
    cases.update({k: d / f"{k}.safetensors" for k in ("mismatch", "huge", "deep", "badcfg", "unknown_key", "latents")})
    return d, cases


def _pickle(path: Path, model) -> Path:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)      # what a pickle checkpoint looks like; never loaded with torch.load
    path.write_bytes(buf.getvalue())
    return path


EXPECT = {
    "truncated": "truncated or corrupt", "empty": "truncated or corrupt", "header": "safetensors",
    "corrupt": "content hash mismatch", "random": "truncated or corrupt", "pickle": "truncated or corrupt",
    "wrong_kind": "'autoencoder' checkpoint", "directory": "cannot read", "missing": "not found",
    "mismatch": "do not match the stored model config", "huge": "do not match the stored model config",
    "deep": "do not match the stored model config", "badcfg": "divisible by heads", "unknown_key": "flux: unknown key",
    "latents": "do not match the autoencoder",
}


@pytest.mark.parametrize("case", sorted(EXPECT))
def test_bad_model_file_is_one_line_and_exit_1(files, case, capsys, tmp_path):
    d, cases = files
    path = cases[case]
    code = main.main(["replay", str(d / "t.jsonl"), "--out", str(tmp_path / "o"), "--backend", "model",
                      "--device", "cpu", "--settings", str(d / "play.yaml"), "--model", str(path), "--no-video"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dreamloop: ") and EXPECT[case] in lines[0], lines[0]
    assert str(path.name) in lines[0] or case == "directory"
    assert not (tmp_path / "o" / "frames.npz").exists()


def test_bad_autoencoder_file_is_one_line(files, capsys, tmp_path):
    d, cases = files
    s = yaml.safe_load((d / "play.yaml").read_text())
    s["models"]["autoencoder"] = str(cases["corrupt"])        # a student checkpoint where the autoencoder goes
    (tmp_path / "play.yaml").write_text(yaml.safe_dump(s))
    code = main.main(["play", "--headless", "--ticks", "2", "--device", "cpu", "--settings", str(tmp_path / "play.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "corrupt.safetensors" in err[0], err


def test_good_files_still_play(files, capsys):
    d, _ = files
    assert main.main(["play", "--headless", "--ticks", "3", "--unpaced", "--device", "cpu",
                      "--settings", str(d / "play.yaml")]) == 0
    out = capsys.readouterr()
    assert "ticks 3" in out.out and "no GPU found; the model runs on the CPU" in out.err


def test_cli_subprocess_corrupt_and_wrong_kind(files):
    """The same through a real shell command: status 1, one stderr line, no traceback."""
    d, cases = files
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "play", "--headless", "--ticks", "2", "--device", "cpu",
                        "--settings", str(d / "play.yaml"), "--model", str(cases["corrupt"])],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"dreamloop: {cases['corrupt']}: content hash mismatch (file corrupt or edited)"


# ----------------------------------------------------------------------------------------------------
# Fuzzing
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    g = torch.Generator().manual_seed(0)
    t = {"a.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(4, generator=g).to(torch.bfloat16),
         "n": torch.tensor([1, 2, 3])}
    checkpoint.save(d / "c.safetensors", t, kind="student", config={"dim": 4}, meta={"step": "1"})
    return d, (d / "c.safetensors").read_bytes()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
    st.tuples(st.just("length"), st.integers(0, 2**64 - 1), st.just(0)),   # the 8-byte header length
)


def mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for op, pos, val in edits:
        i = pos % (len(b) + 1)
        if op == "flip" and b:
            b[i % len(b)] ^= val
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b.insert(i, val)
        elif op == "delete":
            del b[i:i + val]
        elif op == "length":
            b[:8] = pos.to_bytes(8, "little")
    return bytes(b)


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_checkpoint_loader_mutated_bytes(small_ckpt, edits):
    d, data = small_ckpt
    bad = mutate(data, edits)
    p = d / "m.safetensors"
    p.write_bytes(bad)
    try:
        tensors, config, meta = checkpoint.load(p, kind="student")
    except CheckpointError as e:
        assert "\n" not in str(e) and str(p) in str(e)
        return
    assert bad == data or tensors.keys() == {"a.weight", "a.bias", "n"}   # only a no-op mutation may load


TINY = (lambda m: (m.state_for_save(), m.config_dict()))(tiny_models()[0])
config_value = st.one_of(st.integers(-3, 10**7), st.floats(allow_nan=True), st.text(max_size=5), st.none(),
                         st.booleans(), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(edits=st.dictionaries(st.sampled_from(sorted(ModelConfig.__dataclass_fields__) + ["extra"]), config_value,
                             min_size=1, max_size=3))
def test_fuzz_model_config_in_a_valid_checkpoint(files, tmp_path_factory, edits):
    """A well-formed file whose stored config was edited: the player says BackendError, nothing else."""
    d, _ = files
    tensors, config = TINY
    p = d / "edited.safetensors"
    checkpoint.save(p, tensors, kind="student", config={**config, **edits})
    cfg = PlayConfig(models=ModelPaths(autoencoder=str(d / "ae.safetensors")))
    try:
        load_models(cfg, str(p), "cpu")
    except BackendError as e:
        assert "\n" not in str(e)
