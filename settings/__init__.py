"""Typed settings: YAML files parsed into (nested) dataclasses.

One entry point, `load(path, cls)`. Every problem is a `SettingsError` whose message names
the file, the dotted key path and the offending value, e.g.

    settings/play.yaml: sampler.steps: must be one of [1, 2], got 4

Dataclasses may declare constraints in field metadata:
    steps: int = field(default=1, metadata={"choices": (1, 2)})
    lr: float = field(default=1e-4, metadata={"min": 0.0, "max": 1.0})
and may raise `ValueError` from `__post_init__`; its text is reported with the file name.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent


class SettingsError(ValueError):
    """A settings value is missing, unknown, of the wrong type or out of range."""


def load(path: str | Path, cls: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Read a YAML file into `cls`. `overrides` maps dotted keys to values (CLI flags)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"{path}: cannot read settings file ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SettingsError(f"{path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    for key, value in (overrides or {}).items():
        node = data
        parts = key.split(".")
        if not isinstance(node, dict):
            break
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{path}: {key}: cannot override inside a non-mapping")
        node[parts[-1]] = value
    return from_dict(data, cls, source=str(path))


def from_dict(data: Any, cls: type[T], source: str = "<settings>", prefix: str = "") -> T:
    """Build dataclass `cls` from a plain mapping, validating keys, types and ranges."""
    where = prefix.rstrip(".") or "(top level)"
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: {where}: expected a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise SettingsError(f"{source}: {prefix}{key}: unknown key (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SettingsError(f"{source}: {key}: missing required key")
            continue
        value = _convert(data[name], hints[name], source, key)
        _check_range(value, f.metadata, source, key)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except SettingsError:
        raise
    except (ValueError, TypeError) as e:
        raise SettingsError(f"{source}: {where}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML-able structure (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, source, key)
            except SettingsError as e:
                errors.append(str(e))
        raise SettingsError(errors[0] if len(errors) == 1 else f"{source}: {key}: unexpected value {_show(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise SettingsError(f"{source}: {key}: must be one of {list(args)}, got {_show(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(value, tp, source, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise SettingsError(f"{source}: {key}: expected a list, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise SettingsError(f"{source}: {key}: expected {len(args)} items, got {_show(value)}")
            return tuple(_convert(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_convert(v, inner, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{source}: {key}: expected a mapping, got {_show(value)}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, source, key): _convert(v, vt, source, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{source}: {key}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{source}: {key}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{source}: {key}: expected a number, got {_show(value)}")
        if math.isnan(float(value)):
            raise SettingsError(f"{source}: {key}: expected a number, got NaN")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SettingsError(f"{source}: {key}: expected a string, got {_show(value)}")
        return value
    raise SettingsError(f"{source}: {key}: unsupported settings type {tp!r}")


def _check_range(value: Any, meta: typing.Mapping[str, Any], source: str, key: str) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise SettingsError(f"{source}: {key}: must be one of {list(meta['choices'])}, got {_show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value < lo:
            raise SettingsError(f"{source}: {key}: must be >= {lo}, got {_show(value)}")
        if hi is not None and value > hi:
            raise SettingsError(f"{source}: {key}: must be <= {hi}, got {_show(value)}")
