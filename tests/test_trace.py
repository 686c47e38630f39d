"""Trace format: round trip, validation with line numbers, world/schema checks."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from world_model.actions import Action, SchemaError
from world_model.trace import Trace, TraceError, load, parse, save

HEADER = {"format": "dreamloop-trace", "version": 1, "actions": "v1", "world": "freedoom1:E1M1",
          "seed": 123, "tick_hz": 35, "context": 8}


def lines(*actions, header=HEADER):
    return [json.dumps(header)] + [json.dumps(a) if not isinstance(a, str) else a for a in actions]


def test_round_trip(tmp_path):
    acts = [Action(forward=1.0, turn=-0.25), Action(strafe=0.5, attack=1), Action(use=1)]
    t = Trace(seed=7, actions=acts, context=2, extra={"note": "hi"})
    save(t, tmp_path / "t.jsonl")
    back = load(tmp_path / "t.jsonl")
    assert back.actions == acts and back.seed == 7 and back.context == 2 and back.extra == {"note": "hi"}
    assert back.model_ticks == 1
    first = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert first["format"] == "dreamloop-trace" and first["actions"] == "v1"


@given(st.lists(st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1),
                          st.integers(0, 1), st.integers(0, 1)), max_size=20))
@settings(max_examples=50, deadline=None)
def test_schema_round_trip_property(rows):
    acts = [Action(*r) for r in rows]
    text = [json.dumps(Trace(seed=1, actions=[]).header())] + [json.dumps(a.to_dict()) for a in acts]
    assert parse(text).actions == acts


@pytest.mark.parametrize("bad,field", [
    ({"forward": 2.0, "strafe": 0, "turn": 0, "attack": 0, "use": 0}, "forward"),
    ({"forward": 0, "strafe": "x", "turn": 0, "attack": 0, "use": 0}, "strafe"),
    ({"forward": 0, "strafe": 0, "turn": 0, "attack": 2, "use": 0}, "attack"),
    ({"forward": 0, "strafe": 0, "turn": 0, "attack": 0}, "use"),
    ({"forward": 0, "strafe": 0, "turn": 0, "attack": 0, "use": 0, "jump": 1}, "jump"),
])
def test_bad_action_line_names_line_and_field(bad, field):
    good = {"forward": 0, "strafe": 0, "turn": 0, "attack": 0, "use": 0}
    with pytest.raises(TraceError, match=rf"t.jsonl:4: {field}"):
        parse(lines(good, good, bad), "t.jsonl")


def test_not_json_names_the_line():
    with pytest.raises(TraceError, match=r"t.jsonl:3: not valid JSON"):
        parse(lines({"forward": 0, "strafe": 0, "turn": 0, "attack": 0, "use": 0}, "{oops"), "t.jsonl")
    with pytest.raises(TraceError, match=r":2: not valid JSON"):
        parse(lines('{"forward": NaN, "strafe": 0, "turn": 0, "attack": 0, "use": 0}'))


@pytest.mark.parametrize("key,value,msg", [
    ("actions", "v2", "action schema"), ("format", "other", "format"), ("version", 2, "version"),
    ("seed", -1, "seed"), ("context", 0, "context"), ("tick_hz", 60, "tick_hz"), ("world", 5, "world"),
])
def test_bad_header_is_refused(key, value, msg):
    with pytest.raises(TraceError, match=rf":1: {key}:.*{msg}|:1: {key}"):
        parse(lines(header={**HEADER, key: value}))


def test_other_world_is_refused():
    with pytest.raises(TraceError, match="world: trace is for 'freedoom2:MAP01'"):
        parse(lines(header={**HEADER, "world": "freedoom2:MAP01"}), world="freedoom1:E1M1")


def test_empty_and_unreadable(tmp_path):
    with pytest.raises(TraceError, match="empty trace"):
        parse([])
    with pytest.raises(TraceError, match="cannot read"):
        load(tmp_path / "missing.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"a": 1}\n\xff\xfe')
    with pytest.raises(TraceError, match="bin.jsonl:2: not UTF-8"):
        load(tmp_path / "bin.jsonl")


def test_action_rejects_non_finite_and_bools():
    for bad in (float("nan"), float("inf"), True):
        with pytest.raises(SchemaError):
            Action(turn=bad)
