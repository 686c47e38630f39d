import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from world_model import checkpoint
from world_model.checkpoint import CheckpointError


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g),
        "proj.weight": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "step": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


CONFIG = {"latent_channels": 16, "channels": [32, 64]}


def test_round_trip_exact(tmp_path):
    t = _tensors()
    files = checkpoint.save(tmp_path / "a.safetensors", t, kind="autoencoder", config=CONFIG, meta={"step": "7"})
    assert files == [tmp_path / "a.safetensors"]
    out, config, meta = checkpoint.load(tmp_path / "a.safetensors", kind="autoencoder")
    assert config == CONFIG
    assert meta["step"] == "7" and meta["kind"] == "autoencoder" and meta["actions"] == "v1"
    assert set(out) == set(t)
    for k in t:
        assert out[k].dtype == t[k].dtype and torch.equal(out[k], t[k])
    assert not list(tmp_path.glob(".*tmp*"))


def test_int8_bounded_error(tmp_path):
    t = _tensors()
    checkpoint.save(tmp_path / "q.safetensors", t, kind="student", config=CONFIG, quantize_int8=True)
    out, _, _ = checkpoint.load(tmp_path / "q.safetensors", dtype=torch.float32)
    for k in ("conv.weight", "proj.weight"):
        w = t[k].float()
        step = w.abs().flatten(1).amax(1) / 127             # per output channel
        err = (out[k] - w).abs().flatten(1).amax(1)
        assert out[k].dtype == torch.float32
        assert torch.all(err <= step * 0.5 + 1e-2 * step + 1e-6)
    assert torch.equal(out["conv.bias"], t["conv.bias"])   # 1D tensors stay exact
    default, _, _ = checkpoint.load(tmp_path / "q.safetensors")
    assert default["proj.weight"].dtype == torch.bfloat16  # original dtype by default
    raw = st_load((tmp_path / "q.safetensors").read_bytes())
    assert raw["conv.weight"].dtype == torch.int8 and raw["conv.weight:int8_scale"].shape == (8,)


def test_sharding_and_overwrite(tmp_path):
    big = {f"w{i}": torch.randn(64, 1024) for i in range(6)}   # 6 x 256 KiB
    path = tmp_path / "big.safetensors"
    files = checkpoint.save(path, big, kind="teacher", config=CONFIG, shard_bytes=900 * 1024)
    assert len(files) == 4 and files[-1].name == "big.index.json"
    assert files[0].name == "big-00001-of-00003.safetensors"
    assert all(f.stat().st_size <= 900 * 1024 for f in files)
    for p in (path, files[-1]):
        out, config, _ = checkpoint.load(p, kind="teacher")
        assert config == CONFIG and all(torch.equal(out[k], big[k]) for k in big)
    # Saving again unsharded removes the shards and the index, and vice versa.
    checkpoint.save(path, {"w": torch.ones(2)}, kind="teacher", config=CONFIG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]
    checkpoint.save(path, big, kind="teacher", config=CONFIG, shard_bytes=900 * 1024)
    assert not path.exists() and checkpoint.load(path)[0].keys() == big.keys()


def test_default_shard_limit_is_16_mib(tmp_path):
    files = checkpoint.save(tmp_path / "m.safetensors", {f"w{i}": torch.zeros(1024, 1024) for i in range(5)},
                            kind="train_state", config={})
    assert len(files) == 3 and all(f.stat().st_size <= 16 * 2**20 for f in files)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "nope.safetensors")


def test_truncated(tmp_path):
    p = tmp_path / "a.safetensors"
    checkpoint.save(p, _tensors(), kind="teacher", config=CONFIG)
    data = p.read_bytes()
    for n in (0, 5, 100, len(data) - 1):
        p.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            checkpoint.load(p)


def test_flipped_data_byte_is_hash_mismatch(tmp_path):
    p = tmp_path / "a.safetensors"
    checkpoint.save(p, _tensors(), kind="teacher", config=CONFIG)
    data = bytearray(p.read_bytes())
    data[-10] ^= 0x40
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        checkpoint.load(p)


def _rewrite_metadata(p, **changes):
    data = p.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    p.write_bytes(st_save(st_load(data), metadata=meta))


def test_wrong_kind(tmp_path):
    p = tmp_path / "a.safetensors"
    checkpoint.save(p, _tensors(), kind="critic", config=CONFIG)
    with pytest.raises(CheckpointError, match="is a 'critic' checkpoint, expected 'teacher'"):
        checkpoint.load(p, kind="teacher")


def test_other_schema_and_missing_metadata(tmp_path):
    p = tmp_path / "a.safetensors"
    checkpoint.save(p, _tensors(), kind="teacher", config=CONFIG)
    _rewrite_metadata(p, actions="v2")
    with pytest.raises(CheckpointError, match="action schema 'v2'"):
        checkpoint.load(p)
    checkpoint.save(p, _tensors(), kind="teacher", config=CONFIG)
    _rewrite_metadata(p, config=json.dumps({"latent_channels": 99}))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        checkpoint.load(p)
    _rewrite_metadata(p, content_hash=None)
    with pytest.raises(CheckpointError, match="lacks content_hash"):
        checkpoint.load(p)
    p.write_bytes(st_save({"x": torch.zeros(2)}))   # a plain safetensors file, not ours
    with pytest.raises(CheckpointError, match="not a Dreamloop checkpoint"):
        checkpoint.load(p)


def test_shard_problems(tmp_path):
    big = {f"w{i}": torch.randn(64, 1024) for i in range(3)}
    path = tmp_path / "big.safetensors"
    files = checkpoint.save(path, big, kind="teacher", config=CONFIG, shard_bytes=600 * 1024)
    files[1].unlink()
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(path)
    other = checkpoint.save(tmp_path / "o.safetensors", {"w1": torch.zeros(64, 1024)}, kind="teacher", config=CONFIG)
    other[0].rename(files[1])   # a valid file, but not the shard the index names
    with pytest.raises(CheckpointError, match="does not belong"):
        checkpoint.load(path)
    files[-1].write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid checkpoint index"):
        checkpoint.load(path)


def test_save_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        checkpoint.save(tmp_path / "a.safetensors", _tensors(), kind="nonsense", config={})
    with pytest.raises(ValueError, match="reserved"):
        checkpoint.save(tmp_path / "a.safetensors", _tensors(), kind="teacher", config={}, meta={"kind": "x"})


_SMALL: bytes | None = None


def _small_checkpoint(tmp_path_factory) -> bytes:
    global _SMALL
    if _SMALL is None:
        p = tmp_path_factory.mktemp("fuzz") / "s.safetensors"
        checkpoint.save(p, {"w": torch.randn(4, 3), "b": torch.arange(5)}, kind="teacher", config=CONFIG,
                        quantize_int8=True)
        _SMALL = p.read_bytes()
    return _SMALL


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(min_value=0)))
def test_fuzz_mutations_only_raise_checkpoint_error(tmp_path_factory, tmp_path, edits, cut):
    data = bytearray(_small_checkpoint(tmp_path_factory))
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    p = tmp_path / "m.safetensors"
    p.write_bytes(bytes(data))
    try:
        checkpoint.load(p, kind="teacher")
    except CheckpointError as e:
        assert "\n" not in str(e)
