"""Issue 7, settings and bindings: an unknown key, a wrong type or an out-of-range value is a SettingsError
naming the file, the key path and the value; the loader survives 1,000+ random documents each for the
player, kiosk and bindings dataclasses with nothing but SettingsError."""
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import main
from app.config import ROOT, PlayConfig
from app.kiosk import KioskConfig
from input.bindings import Bindings
from settings import SettingsError, from_dict, load, to_dict

FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("cls, text, needle", [
    (PlayConfig, "session:\n  window: 0\n", "session.window: must be >= 1, got 0"),
    (PlayConfig, "hud: {refresh_hz: fast}\n", "hud.refresh_hz: expected a number, got 'fast'"),
    (PlayConfig, "game: {skill: 9}\n", "game.skill"),
    (PlayConfig, "record: {history_s: .nan}\n", "record.history_s: expected a number, got NaN"),
    (PlayConfig, "window: {fullscreen: 1}\n", "window.fullscreen: expected true or false, got 1"),
    (Bindings, "gamepad: {deadzone: 1.5}\n", "gamepad.deadzone: must be <= 0.9, got 1.5"),
    (Bindings, "keyboard: {forward: [wq]}\n", "unknown key name 'wq'"),
    (Bindings, "controls: {pad_pause: [turbo]}\n", "unknown gamepad button 'turbo'"),
    (Bindings, "mouse: {sensitivity: -1}\n", "mouse.sensitivity: must be >= 0.0, got -1"),
    (Bindings, "keyboard: {jump: [j]}\n", "keyboard.jump: unknown key"),
    (KioskConfig, "idle_s: 0\n", "idle_s: must be >= 1.0, got 0"),
    (KioskConfig, "seeds: []\n", "seeds: need at least one seed"),
    (KioskConfig, "admin_chord: [hyper]\n", "unknown key name 'hyper'"),
    (KioskConfig, "allowed: [teleport]\n", "unknown commands ['teleport']"),
    (KioskConfig, "player: {session: {steps: 5}}\n", "player.session.steps: must be one of [1, 2], got 5"),
])
def test_errors_name_file_key_and_value(tmp_path, cls, text, needle):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(SettingsError) as e:
        load(p, cls)
    assert str(e.value).startswith(f"{p}: ") and needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_shipped_files_load():
    assert load(ROOT / "settings/kiosk.yaml", KioskConfig).player.window.fullscreen
    load(ROOT / "settings/play.yaml", PlayConfig)
    load(ROOT / "settings/bindings.yaml", Bindings)


def test_bad_bindings_file_through_the_cli_is_one_line(tmp_path, capsys):
    (tmp_path / "b.yaml").write_text("gamepad:\n  curve: 9\n")
    (tmp_path / "p.yaml").write_text(f"backend: game\nbindings: {tmp_path / 'b.yaml'}\n")
    code = main.main(["play", "--headless", "--ticks", "1", "--settings", str(tmp_path / "p.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"dreamloop: {tmp_path / 'b.yaml'}: gamepad.curve: must be <= 5.0, got 9.0"]


def test_bad_kiosk_file_through_the_cli_is_one_line(tmp_path, capsys):
    (tmp_path / "k.yaml").write_text("player:\n  window: {width: 5}\n")
    code = main.main(["kiosk", "--headless", "--settings", str(tmp_path / "k.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"dreamloop: {tmp_path / 'k.yaml'}: player.window.width: must be >= 160, got 5"]


# ----------------------------------------------------------------------------------------------------
# Fuzzing: random documents built around the real key names, so many reach deep into the dataclasses
# ----------------------------------------------------------------------------------------------------

def key_names(cls) -> list[str]:
    names: set[str] = set()

    def walk(d):
        if isinstance(d, dict):
            for k, v in d.items():
                names.add(k)
                walk(v)
    walk(to_dict(cls()))
    return sorted(names)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["w", "left ctrl", "a", "leftx", "f11", "model", "sharp",
                                                           "auto", "1", "teacher", "start", "escape", ""]))


def documents(cls):
    keys = st.one_of(st.sampled_from(key_names(cls)), st.text(max_size=6), st.integers(-3, 3))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(keys, inner, max_size=5)), max_leaves=24)


def mutated(cls):
    """The defaults as a document, with one value somewhere replaced or one key added/removed."""
    base = to_dict(cls())
    paths = []

    def walk(d, path):
        for k, v in d.items():
            paths.append(path + (k,))
            if isinstance(v, dict):
                walk(v, path + (k,))
    walk(base, ())
    return st.tuples(st.sampled_from(paths), st.one_of(scalars, documents(cls)), st.sampled_from(["set", "del", "add"]))


def apply(cls, edit):
    doc = to_dict(cls())
    path, value, op = edit
    node = doc
    for k in path[:-1]:
        node = node[k]
    if op == "set":
        node[path[-1]] = value
    elif op == "del":
        del node[path[-1]]
    else:
        node[f"{path[-1]}_x"] = value
    return doc


def only_settings_error(data, cls):
    try:
        from_dict(data, cls, source="fuzz.yaml")
    except SettingsError as e:
        assert str(e).startswith("fuzz.yaml: ")


@FUZZ
@given(doc=documents(PlayConfig))
def test_fuzz_play_settings_random_documents(doc):
    only_settings_error(doc, PlayConfig)


@FUZZ
@given(edit=mutated(PlayConfig))
def test_fuzz_play_settings_one_edit_from_valid(edit):
    only_settings_error(apply(PlayConfig, edit), PlayConfig)


@FUZZ
@given(edit=mutated(Bindings))
def test_fuzz_bindings_one_edit_from_valid(edit):
    only_settings_error(apply(Bindings, edit), Bindings)


@FUZZ
@given(edit=mutated(KioskConfig))
def test_fuzz_kiosk_one_edit_from_valid(edit):
    only_settings_error(apply(KioskConfig, edit), KioskConfig)


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=st.one_of(st.text(max_size=80),
                      st.builds(lambda doc, cut: yaml.safe_dump(doc)[:cut], documents(PlayConfig), st.integers(0, 200))))
def test_fuzz_play_settings_file_text(tmp_path_factory, text):
    """Raw text through `load` (YAML syntax errors, tabs, anchors, odd scalars): SettingsError or a config."""
    p = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    try:
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
    except UnicodeEncodeError:
        return
    try:
        cfg = load(p, PlayConfig)
    except SettingsError as e:
        assert str(e).startswith(f"{p}: ")
        return
    assert isinstance(cfg, PlayConfig) and math.isfinite(cfg.tick_hz)
