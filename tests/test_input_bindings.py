"""Bindings YAML: the shipped file loads, and every kind of mistake is a SettingsError naming file and key."""
from pathlib import Path

import pytest

from input.bindings import Bindings, load_bindings
from settings import SettingsError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_bindings_load_and_match_defaults():
    b = load_bindings(ROOT / "settings/bindings.yaml")
    assert b == Bindings()
    assert b.keyboard.forward == ["w", "up"] and b.gamepad.use == ["a"]


@pytest.mark.parametrize("text, needle", [
    ("keyboard: {forward: [wz]}", "unknown key name 'wz'"),
    ("keyboard: {forward: [p]}", "'p' is bound to both"),              # p is the pause control
    ("gamepad: {deadzone: 0.95}", "gamepad.deadzone: must be <= 0.9"),
    ("gamepad: {use: [z]}", "unknown gamepad control 'z'"),
    ("gamepad: {turn: wheel}", "gamepad.turn: must be one of"),
    ("controls: {pad_pause: [lefttrigger]}", "unknown gamepad button 'lefttrigger'"),
    ("mouse: {attack: [9]}", "mouse buttons are 1..5"),
    ("keyboard: {jump: [j]}", "keyboard.jump: unknown key"),
    ("mouse: {sensitivity: fast}", "mouse.sensitivity: expected a number"),
])
def test_bad_bindings_name_file_and_key(tmp_path, text, needle):
    p = tmp_path / "bindings.yaml"
    p.write_text(text)
    with pytest.raises(SettingsError) as e:
        load_bindings(p)
    assert str(p) in str(e.value) and needle in str(e.value), str(e.value)
