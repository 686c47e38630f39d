"""Issue 7, traces: a malformed line names its line number, another world or schema version is refused
clearly, and the trace loader survives 1,000+ random and mutated traces with nothing but TraceError."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import main
from world_model.actions import Action
from world_model.trace import Trace, TraceError, load, parse, save

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
HEADER = {"format": "dreamloop-trace", "version": 1, "actions": "v1", "world": "freedoom1:E1M1", "seed": 1,
          "tick_hz": 35, "context": 2}
TICK = {"forward": 1.0, "strafe": 0.0, "turn": -0.5, "attack": 0, "use": 1}


def lines(header=HEADER, ticks=5, bad=None):
    out = [json.dumps(header)] + [json.dumps(TICK)] * ticks
    if bad is not None:
        out[bad[0] - 1] = bad[1]
    return out


@pytest.mark.parametrize("text, needle", [
    (lines(bad=(4, '{"forward": 1.0, "strafe": 0')), ":4: not valid JSON"),
    (lines(bad=(3, '{"forward": 1.0}')), ":3: "),
    (lines(bad=(6, json.dumps({**TICK, "turn": "left"}))), ":6: turn"),
    (lines(bad=(2, json.dumps({**TICK, "attack": 2}))), ":2: attack"),
    (lines(bad=(5, "[1, 2, 3]")), ":5: "),
    (lines(bad=(5, json.dumps({**TICK, "forward": 1e309}))), ":5: "),
    (lines(bad=(3, '{"forward": NaN, "strafe": 0, "turn": 0, "attack": 0, "use": 0}')), ":3: not valid JSON"),
    (lines({**HEADER, "actions": "v2"}), ":1: actions"),
    (lines({**HEADER, "version": 2}), ":1: version: this build reads version 1, got 2"),
    (lines({**HEADER, "format": "doom-demo"}), ":1: format"),
    (lines({**HEADER, "tick_hz": 70}), ":1: tick_hz"),
    (lines({**HEADER, "seed": -4}), ":1: seed"),
])
def test_malformed_lines_name_their_line(text, needle):
    with pytest.raises(TraceError) as e:
        parse(text, "t.jsonl")
    assert str(e.value).startswith("t.jsonl:") and needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_other_world_is_refused_when_the_backend_says_which():
    with pytest.raises(TraceError, match="trace is for 'freedoom2:MAP01'"):
        parse(lines({**HEADER, "world": "freedoom2:MAP01"}), "t.jsonl", world="freedoom1:E1M1")


def test_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(("\n".join(lines()) + "\n").encode() + b'{"forward": \xff}\n')
    with pytest.raises(TraceError, match=r"t.jsonl:7: not UTF-8"):
        load(p)


def test_cli_refuses_other_schema_version_and_bad_lines_in_one_line(tmp_path, capsys):
    for name, text, needle in [("schema.jsonl", lines({**HEADER, "actions": "v9"}), "schema.jsonl:1: actions"),
                               ("line.jsonl", lines(bad=(3, "{oops")), "line.jsonl:3: not valid JSON")]:
        (tmp_path / name).write_text("\n".join(text) + "\n")
        code = main.main(["replay", str(tmp_path / name), "--out", str(tmp_path / "o"), "--backend", "game"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and needle in err[0], err


def test_replay_refuses_a_trace_with_dropped_ticks(tmp_path, capsys):
    save(Trace(seed=1, actions=[Action()] * 4, context=2, extra={"dropped_ticks": 900}), tmp_path / "t.jsonl")
    code = main.main(["replay", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "o"), "--backend", "game"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "lacks its first 900 ticks" in err[0], err


# ----------------------------------------------------------------------------------------------------
# Fuzzing
# ----------------------------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                        st.text(max_size=8))
json_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=3),
                        st.dictionaries(st.text(max_size=4), json_scalars, max_size=3))
tick_like = st.fixed_dictionaries({}, optional={k: json_values for k in (*TICK, "extra")})
header_like = st.fixed_dictionaries({}, optional={k: st.one_of(st.just(v), json_values) for k, v in HEADER.items()})


def check(text_lines):
    try:
        trace = parse(text_lines, "fuzz.jsonl", world="freedoom1:E1M1")
    except TraceError as e:
        assert str(e).startswith("fuzz.jsonl:") and "\n" not in str(e)
        return
    assert all(isinstance(a, Action) for a in trace.actions)


@FUZZ
@given(st.lists(st.text(max_size=60), max_size=6))
def test_fuzz_random_lines(text_lines):
    check(text_lines)


@FUZZ
@given(header=header_like, ticks=st.lists(tick_like, max_size=4))
def test_fuzz_structured_json(header, ticks):
    check([json.dumps(header)] + [json.dumps(t) for t in ticks])


@FUZZ
@given(line=st.integers(0, 5), cut=st.integers(0, 80), junk=st.text(max_size=10), mode=st.sampled_from("cdij"))
def test_fuzz_mutated_valid_trace(line, cut, junk, mode):
    text = lines()
    ln = text[line]
    text[line] = {"c": ln[:cut], "d": ln[:cut] + ln[cut + len(junk) + 1:], "i": ln[:cut] + junk + ln[cut:],
                  "j": junk}[mode]
    check(text)
