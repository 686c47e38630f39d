"""Trace files: the record/replay contract shared by the player and the evaluation.

JSON Lines. Line 1 is a header:
    {"format": "dreamloop-trace", "version": 1, "actions": "v1", "world": "freedoom1:E1M1",
     "seed": 123, "tick_hz": 35, "context": 8}
More header fields are allowed and kept. Every following line is one tick's action:
    {"forward": 1.0, "strafe": 0.0, "turn": -0.25, "attack": 0, "use": 0}

`context` leading ticks are played on the real game to give the model its seed frames; model output
starts after them. Loading validates every line; an error names the line number and the field.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .actions import SCHEMA, Action, SchemaError

FORMAT = "dreamloop-trace"
VERSION = 1
TICK_HZ = 35


class TraceError(ValueError):
    """A trace file is malformed, or was written for another world or action schema."""


@dataclass
class Trace:
    seed: int
    actions: list[Action]
    world: str = "freedoom1:E1M1"
    context: int = 8
    tick_hz: int = TICK_HZ
    extra: dict[str, Any] = field(default_factory=dict)  # other header fields, kept on save

    def header(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "actions": SCHEMA, "world": self.world,
                "seed": self.seed, "tick_hz": self.tick_hz, "context": self.context, **self.extra}

    @property
    def model_ticks(self) -> int:
        """Ticks after the context: the frames a replay writes."""
        return max(0, len(self.actions) - self.context)


def save(trace: Trace, path: str | Path) -> None:
    """Write atomically: a temp file next to the target, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(trace.header()) + "\n")
        for a in trace.actions:
            f.write(json.dumps(a.to_dict()) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path, world: str | None = None) -> Trace:
    """Parse and validate a trace. `world`, if given, must match the header's world."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise TraceError(f"{path}: cannot read trace ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TraceError(f"{path}:{line}: not UTF-8 text") from None
    return parse(text.splitlines(), str(path), world)


def parse(lines: Iterable[str], name: str = "<trace>", world: str | None = None) -> Trace:
    it = iter(enumerate(lines, start=1))
    header = None
    for n, line in it:
        if line.strip():
            header = _json(line, name, n)
            break
    if header is None:
        raise TraceError(f"{name}:1: empty trace (expected a header line)")
    trace = _header(header, name, n)
    if world is not None and trace.world != world:
        raise TraceError(f"{name}:{n}: world: trace is for {trace.world!r}, this backend runs {world!r}")
    for n, line in it:
        if not line.strip():
            continue  # tolerate blank lines (e.g. a trailing newline pair)
        obj = _json(line, name, n)
        try:
            trace.actions.append(Action.from_dict(obj))
        except SchemaError as e:
            raise TraceError(f"{name}:{n}: {e}") from None
    return trace


def _json(line: str, name: str, n: int) -> Any:
    try:
        return json.loads(line, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise TraceError(f"{name}:{n}: not valid JSON ({getattr(e, 'msg', e)})") from None
    except RecursionError:
        raise TraceError(f"{name}:{n}: JSON nested too deeply") from None


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not allowed")


def _header(h: Any, name: str, n: int) -> Trace:
    if not isinstance(h, dict):
        raise TraceError(f"{name}:{n}: header: expected a JSON object")
    if h.get("format") != FORMAT:
        raise TraceError(f"{name}:{n}: format: expected {FORMAT!r}, got {h.get('format')!r}")
    if h.get("version") != VERSION:
        raise TraceError(f"{name}:{n}: version: this build reads version {VERSION}, got {h.get('version')!r}")
    try:
        from .actions import check_schema
        check_schema(h.get("actions"), "trace")
    except SchemaError as e:
        raise TraceError(f"{name}:{n}: actions: {e}") from None

    def integer(key: str, default: Any, lo: int, hi: int) -> int:
        v = h.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise TraceError(f"{name}:{n}: {key}: expected an integer in [{lo}, {hi}], got {v!r}")
        return v

    seed = integer("seed", None, 0, 2**31 - 1)
    context = integer("context", 8, 1, 10_000)
    tick_hz = integer("tick_hz", TICK_HZ, 1, 1000)
    if tick_hz != TICK_HZ:
        raise TraceError(f"{name}:{n}: tick_hz: Dreamloop worlds tick at {TICK_HZ} Hz, got {tick_hz}")
    world = h.get("world")
    if not isinstance(world, str) or ":" not in world:
        raise TraceError(f"{name}:{n}: world: expected 'wad:MAP', got {world!r}")
    known = {"format", "version", "actions", "world", "seed", "tick_hz", "context"}
    extra = {k: v for k, v in h.items() if k not in known}
    return Trace(seed=seed, actions=[], world=world, context=context, tick_hz=tick_hz, extra=extra)
