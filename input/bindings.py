"""Bindings: which key, mouse button or gamepad control drives which action axis, button or command.

Loaded from settings/bindings.yaml by the typed settings loader. Key names are SDL's
(`pygame.key.key_code`: "w", "left ctrl", "space", "f11"); gamepad names are SDL GameController
names ("a", "start", "leftx", "righttrigger"). Every name is checked at load time, and a key bound
to two things is an error, so a typo never silently does nothing.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import pygame

from settings import SettingsError, load

PAD_AXES = {
    "leftx": pygame.CONTROLLER_AXIS_LEFTX, "lefty": pygame.CONTROLLER_AXIS_LEFTY,
    "rightx": pygame.CONTROLLER_AXIS_RIGHTX, "righty": pygame.CONTROLLER_AXIS_RIGHTY,
    "lefttrigger": pygame.CONTROLLER_AXIS_TRIGGERLEFT, "righttrigger": pygame.CONTROLLER_AXIS_TRIGGERRIGHT,
}
PAD_BUTTONS = {
    "a": pygame.CONTROLLER_BUTTON_A, "b": pygame.CONTROLLER_BUTTON_B,
    "x": pygame.CONTROLLER_BUTTON_X, "y": pygame.CONTROLLER_BUTTON_Y,
    "back": pygame.CONTROLLER_BUTTON_BACK, "guide": pygame.CONTROLLER_BUTTON_GUIDE,
    "start": pygame.CONTROLLER_BUTTON_START,
    "leftstick": pygame.CONTROLLER_BUTTON_LEFTSTICK, "rightstick": pygame.CONTROLLER_BUTTON_RIGHTSTICK,
    "leftshoulder": pygame.CONTROLLER_BUTTON_LEFTSHOULDER, "rightshoulder": pygame.CONTROLLER_BUTTON_RIGHTSHOULDER,
    "dpup": pygame.CONTROLLER_BUTTON_DPAD_UP, "dpdown": pygame.CONTROLLER_BUTTON_DPAD_DOWN,
    "dpleft": pygame.CONTROLLER_BUTTON_DPAD_LEFT, "dpright": pygame.CONTROLLER_BUTTON_DPAD_RIGHT,
}
# A pad control is a button name or an axis name (triggers act as buttons past `trigger_threshold`).
PAD_CONTROLS = sorted(PAD_BUTTONS) + sorted(PAD_AXES)


@dataclass(frozen=True)
class KeyboardBindings:
    """Movement keys. Opposite keys held together cancel."""

    forward: list[str] = field(default_factory=lambda: ["w", "up"])
    backward: list[str] = field(default_factory=lambda: ["s", "down"])
    strafe_left: list[str] = field(default_factory=lambda: ["a"])
    strafe_right: list[str] = field(default_factory=lambda: ["d"])
    turn_left: list[str] = field(default_factory=lambda: ["left"])
    turn_right: list[str] = field(default_factory=lambda: ["right"])
    attack: list[str] = field(default_factory=lambda: ["left ctrl", "right ctrl"])
    use: list[str] = field(default_factory=lambda: ["e", "space"])


@dataclass(frozen=True)
class MouseBindings:
    turn: bool = False                      # mouse turning at start (hotkey toggles; grabs the pointer)
    sensitivity: float = field(default=0.05, metadata={"min": 0.0, "max": 10.0})  # turn per pixel per tick
    attack: list[int] = field(default_factory=lambda: [1])   # 1 left, 2 middle, 3 right
    use: list[int] = field(default_factory=lambda: [3])

    def __post_init__(self) -> None:
        for b in (*self.attack, *self.use):
            if not 1 <= b <= 5:
                raise ValueError(f"mouse buttons are 1..5, got {b}")


@dataclass(frozen=True)
class GamepadBindings:
    strafe: str = field(default="leftx", metadata={"choices": tuple(PAD_AXES)})
    forward: str = field(default="lefty", metadata={"choices": tuple(PAD_AXES)})
    turn: str = field(default="rightx", metadata={"choices": tuple(PAD_AXES)})
    invert_forward: bool = True             # SDL's stick y is positive downwards; pushing up walks forward
    attack: list[str] = field(default_factory=lambda: ["righttrigger", "lefttrigger"])
    use: list[str] = field(default_factory=lambda: ["a"])
    deadzone: float = field(default=0.15, metadata={"min": 0.0, "max": 0.9})
    curve: float = field(default=1.5, metadata={"min": 0.2, "max": 5.0})   # 1 = linear; >1 finer near centre
    turn_scale: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    trigger_threshold: float = field(default=0.5, metadata={"min": 0.05, "max": 0.95})

    def __post_init__(self) -> None:
        for name in (*self.attack, *self.use):
            if name not in PAD_CONTROLS:
                raise ValueError(f"unknown gamepad control {name!r} (known: {', '.join(PAD_CONTROLS)})")


@dataclass(frozen=True)
class ControlBindings:
    """Player commands (not part of the action). Each is a list of keys; `pad_*` lists gamepad buttons."""

    quit: list[str] = field(default_factory=lambda: ["escape"])
    help: list[str] = field(default_factory=lambda: ["f1", "h"])
    hud: list[str] = field(default_factory=lambda: ["tab"])
    pause: list[str] = field(default_factory=lambda: ["p"])
    single_step: list[str] = field(default_factory=lambda: ["n"])
    reset: list[str] = field(default_factory=lambda: ["backspace"])
    steps_1: list[str] = field(default_factory=lambda: ["1"])
    steps_2: list[str] = field(default_factory=lambda: ["2"])
    teacher: list[str] = field(default_factory=lambda: ["3"])
    savestate: list[str] = field(default_factory=lambda: ["f5"])
    restore: list[str] = field(default_factory=lambda: ["f9"])
    screenshot: list[str] = field(default_factory=lambda: ["f12"])
    record: list[str] = field(default_factory=lambda: ["f10"])
    fullscreen: list[str] = field(default_factory=lambda: ["f11"])
    filter: list[str] = field(default_factory=lambda: ["f"])
    mouse_turn: list[str] = field(default_factory=lambda: ["m"])
    pad_pause: list[str] = field(default_factory=lambda: ["start"])
    pad_reset: list[str] = field(default_factory=lambda: ["back"])

    def __post_init__(self) -> None:
        for name in (*self.pad_pause, *self.pad_reset):
            if name not in PAD_BUTTONS:
                raise ValueError(f"unknown gamepad button {name!r} (known: {', '.join(sorted(PAD_BUTTONS))})")


# Human-readable descriptions for the help overlay and docs, in display order.
COMMAND_HELP = {
    "help": "show / hide this help", "hud": "show / hide the HUD", "pause": "pause / resume",
    "single_step": "one tick while paused", "reset": "reset to the seed",
    "steps_1": "model: 1 denoising step", "steps_2": "model: 2 denoising steps", "teacher": "model: teacher",
    "savestate": "save state", "restore": "restore saved state", "screenshot": "screenshot (PNG)",
    "record": "start / stop recording (mp4 + trace)", "fullscreen": "fullscreen", "filter": "nearest / sharp scaling",
    "mouse_turn": "mouse turning on / off", "quit": "quit",
}


@dataclass(frozen=True)
class Bindings:
    keyboard: KeyboardBindings = field(default_factory=KeyboardBindings)
    mouse: MouseBindings = field(default_factory=MouseBindings)
    gamepad: GamepadBindings = field(default_factory=GamepadBindings)
    controls: ControlBindings = field(default_factory=ControlBindings)

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for group in (self.keyboard, self.controls):
            for f in fields(group):
                if f.name.startswith("pad_"):
                    continue
                for name in getattr(group, f.name):
                    code = key_code(name)
                    if code in seen:
                        raise ValueError(f"key {name!r} is bound to both {seen[code]} and {f.name}")
                    seen[code] = f.name

    def keys(self, group: object, name: str) -> set[int]:
        return {key_code(k) for k in getattr(group, name)}


def key_code(name: str) -> int:
    """SDL key name -> pygame key code, or a ValueError naming the key."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "pygame.init() has not been called": name lookup needs no init
            return pygame.key.key_code(name)
    except ValueError:
        raise ValueError(f"unknown key name {name!r} (use SDL names such as 'w', 'left ctrl', 'space', 'f11')") from None


def load_bindings(path: str | Path) -> Bindings:
    """Read settings/bindings.yaml; every problem is a SettingsError naming file, key and value."""
    return load(path, Bindings)


__all__ = ["Bindings", "COMMAND_HELP", "PAD_AXES", "PAD_BUTTONS", "SettingsError", "key_code", "load_bindings"]
