"""Checkpoints: safetensors files that carry their own config, action schema and content hash.

    save(path, tensors, kind="teacher", config=asdict(cfg))          -> [written files]
    tensors, config, meta = load(path, kind="teacher")

Every file's metadata (all strings, as safetensors requires):
    format_version  "1"
    kind            one of KINDS; `load(path, kind=...)` refuses another kind
    config          JSON of the model config dataclass
    actions         action schema version (world_model.actions.SCHEMA)
    int8            JSON {name: original dtype} of tensors stored as int8 (empty: none)
    meta            JSON of the caller's extra string fields (step, data, ...)
    content_hash    sha256 over the metadata above and every tensor's name, dtype, shape and bytes

A checkpoint larger than 16 MiB is split into NAME-00001-of-0000N.safetensors files, each a complete
checkpoint of some of the tensors, plus NAME.index.json listing the shards and their hashes. `load`
takes either the index or the plain NAME. Files are written to a temp name and renamed into place,
so a killed save leaves the previous checkpoint intact. The index is renamed last: it is the commit.

Anything wrong with a file -- missing, truncated, flipped bytes, edited header, another kind or
action schema -- raises CheckpointError with one line that names the file. Never pickle.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .actions import SCHEMA

FORMAT_VERSION = "1"
KINDS = ("autoencoder", "teacher", "student", "critic", "train_state")
SHARD_BYTES = 16 * 2**20        # issue 3: each file is at most 16 MiB
_HEADER_ROOM = 256 * 2**10      # kept free in each shard for the safetensors JSON header
_RESERVED = ("format_version", "kind", "config", "actions", "int8", "meta", "content_hash")
_SCALE = ":int8_scale"          # suffix of the per-output-channel scale stored beside an int8 weight


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or not the kind/schema the caller asked for."""


# ------------------------------------------------------------------------------------------------
# Saving
# ------------------------------------------------------------------------------------------------

def save(path: str | Path, tensors: Mapping[str, torch.Tensor], *, kind: str, config: Any,
         meta: Mapping[str, str] | None = None, quantize_int8: bool = False,
         shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Write `tensors` to `path` (sharded if larger than `shard_bytes`). Returns the files written.

    config: a dict or a config dataclass (stored as JSON). meta: extra string fields.
    quantize_int8: store floating weights with 2+ dims as int8 with per-output-channel (dim 0) scales;
    `load` dequantizes them. Meant for frozen weights (autoencoder, student), never train state.
    """
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    meta = dict(meta or {})
    for k, v in meta.items():
        if k in _RESERVED or not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"meta must map str to str without reserved keys {_RESERVED}: {k!r}")
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    stored, int8 = _prepare(tensors, quantize_int8)
    header = {"format_version": FORMAT_VERSION, "kind": kind, "config": json.dumps(config, sort_keys=True),
              "actions": SCHEMA, "int8": json.dumps(int8, sort_keys=True), "meta": json.dumps(meta, sort_keys=True)}

    groups = _pack(stored, shard_bytes - _HEADER_ROOM)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(groups) == 1:
        _commit([_write_tmp(path, stored, header)[0]])
        _remove_stale(path, keep={path}, also_index=True)
        return [path]
    # Write every shard to a temp name first, then rename them all and the index last: a save killed
    # while writing leaves the previous checkpoint whole.
    parts, shards = [], []
    for i, names in enumerate(groups):
        part = path.with_name(f"{_stem(path)}-{i + 1:05d}-of-{len(groups):05d}.safetensors")
        pending, chash = _write_tmp(part, {n: stored[n] for n in names}, header)
        parts.append(pending)
        shards.append({"file": part.name, "content_hash": chash})
    index = _index_path(path)
    body = json.dumps({"format": "dreamloop-checkpoint-index", "format_version": FORMAT_VERSION,
                       "kind": kind, "shards": shards}, indent=1).encode()
    parts.append((_tmp_file(index, body), index))
    _commit(parts)
    written = [dst for _, dst in parts]
    _remove_stale(path, keep=set(written), also_index=False)
    if path.exists():
        path.unlink()   # an older unsharded file of the same name would shadow the index
    return written


def _prepare(tensors: Mapping[str, torch.Tensor], quantize: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous, unshared copies; optionally int8 weights plus `name:int8_scale` tensors."""
    stored, int8 = {}, {}
    for name, t in tensors.items():
        if not isinstance(name, str) or name.endswith(_SCALE):
            raise ValueError(f"bad tensor name {name!r}")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
        t = t.detach().to("cpu").clone().contiguous()   # clone: safetensors refuses shared storage
        if quantize and t.is_floating_point() and t.dim() >= 2 and t.numel() > 0:
            w = t.float()
            scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / 127.0  # (O, 1, ..)
            stored[name] = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
            stored[name + _SCALE] = scale.reshape(-1)                                                   # (O,)
            int8[name] = str(t.dtype).removeprefix("torch.")
        else:
            stored[name] = t
    return stored, int8


def _pack(tensors: Mapping[str, torch.Tensor], budget: int) -> list[list[str]]:
    """Greedy shards in name order; a weight and its int8 scale stay together."""
    groups: list[list[str]] = [[]]
    size = 0
    for name in sorted(n for n in tensors if not n.endswith(_SCALE)):
        names = [name] + ([name + _SCALE] if name + _SCALE in tensors else [])
        nbytes = sum(tensors[n].numel() * tensors[n].element_size() for n in names)
        if nbytes > budget:
            raise ValueError(f"{name}: {nbytes / 2**20:.1f} MiB does not fit one {budget / 2**20:.1f} MiB shard")
        if size + nbytes > budget and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].extend(names)
        size += nbytes
    return groups


def _write_tmp(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> tuple[tuple[Path, Path], str]:
    """Serialize one file to a temp name beside `path`; returns ((temp, final), content hash)."""
    chash = _hash(tensors, header)
    return (_tmp_file(path, _st_save(tensors, metadata={**header, "content_hash": chash})), path), chash


def _tmp_file(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _commit(pairs: list[tuple[Path, Path]]) -> None:
    for tmp, dst in pairs:
        os.replace(tmp, dst)


def _remove_stale(path: Path, keep: set[Path], also_index: bool) -> None:
    """Delete shards (and index) of an earlier save to the same name that this save did not write."""
    pattern = re.compile(re.escape(_stem(path)) + r"-\d{5}-of-\d{5}\.safetensors")
    for p in path.parent.iterdir():
        if pattern.fullmatch(p.name) and p not in keep:
            p.unlink()
    if also_index and _index_path(path).exists():
        _index_path(path).unlink()


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------

def load(path: str | Path, kind: str | None = None, *, dtype: torch.dtype | None = None
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """Read and verify a checkpoint (a .safetensors file, its NAME.index.json, or the NAME of a sharded one).

    Returns (tensors on CPU, config dict, meta). meta holds the caller's fields plus format_version,
    kind, actions and content_hash. int8 weights come back dequantized to `dtype` (default: their
    original dtype); `dtype` does not change other tensors.
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        return _load_index(path, kind, dtype)
    if not path.exists() and _index_path(path).exists():
        return _load_index(_index_path(path), kind, dtype)
    tensors, header = _read_file(path, kind)
    return _finish(path, tensors, header, dtype)


def _load_index(index: Path, kind: str | None, dtype: torch.dtype | None):
    try:
        body = json.loads(_read_bytes(index))
        shards = body["shards"]
        if body.get("format") != "dreamloop-checkpoint-index" or not isinstance(shards, list) or not shards:
            raise ValueError
        entries = [(str(s["file"]), str(s["content_hash"])) for s in shards]
    except CheckpointError:
        raise
    except Exception:
        raise CheckpointError(f"{index}: not a valid checkpoint index") from None
    if body.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{index}: checkpoint format {body.get('format_version')!r}, expected {FORMAT_VERSION!r}")
    tensors: dict[str, torch.Tensor] = {}
    first: dict[str, str] | None = None
    for name, chash in entries:
        part = index.parent / name
        if Path(name).name != name:
            raise CheckpointError(f"{index}: shard name {name!r} is not a plain file name")
        part_tensors, header = _read_file(part, kind)
        if header["content_hash"] != chash:
            raise CheckpointError(f"{part}: shard does not belong to {index.name} (content hash differs)")
        if first is None:
            first = header
        elif {k: header[k] for k in _RESERVED if k != "content_hash"} != \
                {k: first[k] for k in _RESERVED if k != "content_hash"}:
            raise CheckpointError(f"{part}: shard metadata differs from the first shard's")
        if set(part_tensors) & set(tensors):
            raise CheckpointError(f"{part}: tensor names repeat across shards")
        tensors.update(part_tensors)
    return _finish(index, tensors, first, dtype)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None


def _read_file(path: Path, kind: str | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse one safetensors file and check its metadata and hash."""
    data = _read_bytes(path)
    try:
        tensors = _st_load(data)
        header = _metadata(data)
    except Exception:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt)") from None
    missing = [k for k in _RESERVED if k not in header]
    if missing:
        raise CheckpointError(f"{path}: not a Dreamloop checkpoint (metadata lacks {', '.join(missing)})")
    if header["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {header['format_version']!r}, expected {FORMAT_VERSION!r}")
    if header["actions"] != SCHEMA:
        raise CheckpointError(f"{path}: made for action schema {header['actions']!r}; this build uses {SCHEMA!r}")
    if kind is not None and header["kind"] != kind:
        raise CheckpointError(f"{path}: is a {header['kind']!r} checkpoint, expected {kind!r}")
    if header["kind"] not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {header['kind']!r}")
    body = {k: v for k, v in header.items() if k != "content_hash"}
    if _hash(tensors, body) != header["content_hash"]:
        raise CheckpointError(f"{path}: content hash mismatch (file corrupt or edited)")
    return tensors, header


def _metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors buffer (safetensors.torch.load does not return it)."""
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("metadata must map strings to strings")
    return meta


def _finish(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str], dtype: torch.dtype | None):
    try:
        config = json.loads(header["config"])
        int8 = json.loads(header["int8"])
        user = json.loads(header["meta"])
        if not isinstance(config, dict) or not isinstance(int8, dict) or not isinstance(user, dict):
            raise ValueError
    except ValueError:
        raise CheckpointError(f"{path}: config/int8/meta metadata is not a JSON object") from None
    for name, orig in int8.items():
        w, scale = tensors.get(name), tensors.pop(name + _SCALE, None)
        target = dtype or getattr(torch, str(orig), None)
        if w is None or scale is None or w.dtype != torch.int8 or scale.numel() != w.shape[0] \
                or not isinstance(target, torch.dtype):
            raise CheckpointError(f"{path}: int8 tensor {name!r} lacks a matching scale")
        tensors[name] = (w.float() * scale.float().view(-1, *[1] * (w.dim() - 1))).to(target)
    meta = {str(k): str(v) for k, v in user.items()}
    meta.update({k: header[k] for k in ("format_version", "kind", "actions", "content_hash")})
    return tensors, config, meta


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

def _hash(tensors: Mapping[str, torch.Tensor], header: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(dict(header), sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _stem(path: Path) -> str:
    return path.name.removesuffix(".safetensors")


def _index_path(path: Path) -> Path:
    return path.with_name(_stem(path) + ".index.json")
