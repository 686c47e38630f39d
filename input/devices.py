"""Devices -> actions: keyboard, mouse and SDL game controllers, tracked from pygame events.

`InputState.handle(event)` folds one event into the held-key / stick state and returns the name of a
player command when the event triggers one ("pause", "reset", ...). `InputState.action()` turns the
current state into a v1 `Action` once per tick. The state comes only from events: posted (synthetic)
events are invisible to `pygame.key.get_pressed`, and tests drive the app with posted events.

Game controllers are hot-pluggable. A pad is known from its CONTROLLERDEVICEADDED event, or from the
first event that names its instance id; CONTROLLERDEVICEREMOVED forgets it and everything it held, so
an unplugged pad never leaves a stick deflected or a trigger pulled.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

import pygame

from world_model.actions import Action

from .bindings import PAD_AXES, PAD_BUTTONS, Bindings

log = logging.getLogger(__name__)
AXIS_MAX = 32767.0


@dataclass
class Pad:
    """One game controller's live state. `controller` is None for pads known only from events."""

    controller: object | None = None
    name: str = "gamepad"
    axes: dict[int, float] = field(default_factory=dict)   # SDL axis -> value in [-1, 1]
    buttons: set[int] = field(default_factory=set)


def shape_axis(value: float, deadzone: float, curve: float) -> float:
    """Deadzone, rescale the rest to [0, 1], then a power response curve; keeps the sign."""
    mag = abs(value)
    if mag <= deadzone:
        return 0.0
    mag = min(1.0, (mag - deadzone) / (1.0 - deadzone)) ** curve
    return mag if value > 0 else -mag


class InputState:
    def __init__(self, bindings: Bindings):
        self.bindings = bindings
        kb, ctl = bindings.keyboard, bindings.controls
        self._key_groups = {f.name: bindings.keys(kb, f.name) for f in fields(kb)}
        self._commands = {code: f.name for f in fields(ctl) if not f.name.startswith("pad_")
                          for code in bindings.keys(ctl, f.name)}
        self._pad_commands = {PAD_BUTTONS[b]: cmd for cmd, names in (("pause", ctl.pad_pause), ("reset", ctl.pad_reset))
                              for b in names}
        self.keys: set[int] = set()
        self.mouse_buttons: set[int] = set()
        self.mouse_dx = 0.0                 # horizontal motion since the last action(), in pixels
        self.mouse_turn = bindings.mouse.turn
        self.pads: dict[int, Pad] = {}

    # -- events --------------------------------------------------------------------------------------
    def handle(self, event: pygame.event.Event) -> str | None:
        t = event.type
        if t == pygame.KEYDOWN:
            if event.key in self._commands:
                return self._commands[event.key]
            self.keys.add(event.key)
        elif t == pygame.KEYUP:
            self.keys.discard(event.key)
        elif t == pygame.MOUSEBUTTONDOWN:
            self.mouse_buttons.add(event.button)
        elif t == pygame.MOUSEBUTTONUP:
            self.mouse_buttons.discard(event.button)
        elif t == pygame.MOUSEMOTION and self.mouse_turn:
            self.mouse_dx += event.rel[0]
        elif t == pygame.CONTROLLERDEVICEADDED:
            self._open_pad(event.device_index)
        elif t == pygame.CONTROLLERDEVICEREMOVED:
            pad = self.pads.pop(event.instance_id, None)
            if pad is not None:
                log.info("gamepad %d (%s) removed", event.instance_id, pad.name)
        elif t == pygame.CONTROLLERAXISMOTION:
            pad = self.pads.setdefault(event.instance_id, Pad())
            pad.axes[event.axis] = max(-1.0, min(1.0, event.value / AXIS_MAX))
        elif t == pygame.CONTROLLERBUTTONDOWN:
            self.pads.setdefault(event.instance_id, Pad()).buttons.add(event.button)
            return self._pad_commands.get(event.button)
        elif t == pygame.CONTROLLERBUTTONUP:
            self.pads.setdefault(event.instance_id, Pad()).buttons.discard(event.button)
        elif t in (pygame.WINDOWFOCUSLOST, pygame.ACTIVEEVENT) and not getattr(event, "gain", 0):
            self.release_all()  # keys released while unfocused never send KEYUP to us
        return None

    def is_command(self, event: pygame.event.Event) -> bool:
        """Whether `event` would trigger a player command (a bound key or pad button press)."""
        if event.type == pygame.KEYDOWN:
            return event.key in self._commands
        return event.type == pygame.CONTROLLERBUTTONDOWN and event.button in self._pad_commands

    def _open_pad(self, device_index: int) -> None:
        try:
            from pygame._sdl2 import controller
            pad = controller.Controller(device_index)
            instance = pad.as_joystick().get_instance_id()
        except (pygame.error, ImportError, IndexError) as e:
            log.warning("gamepad %d added but could not be opened: %s", device_index, e)
            return
        self.pads[instance] = Pad(controller=pad, name=pad.name or "gamepad")
        log.info("gamepad %d (%s) added", instance, pad.name)

    def release_all(self) -> None:
        self.keys.clear()
        self.mouse_buttons.clear()
        self.mouse_dx = 0.0
        for pad in self.pads.values():
            pad.axes.clear()
            pad.buttons.clear()

    # -- action --------------------------------------------------------------------------------------
    def action(self) -> Action:
        """The action for this tick: keyboard + mouse + every pad, summed and clamped."""
        held = {name: bool(codes & self.keys) for name, codes in self._key_groups.items()}
        forward = held["forward"] - held["backward"]
        strafe = held["strafe_right"] - held["strafe_left"]
        turn = held["turn_right"] - held["turn_left"]
        attack = held["attack"] or bool(self.mouse_buttons & set(self.bindings.mouse.attack))
        use = held["use"] or bool(self.mouse_buttons & set(self.bindings.mouse.use))
        if self.mouse_turn:
            turn += self.mouse_dx * self.bindings.mouse.sensitivity
        self.mouse_dx = 0.0
        gp = self.bindings.gamepad
        for pad in self.pads.values():
            f, s, r = (shape_axis(pad.axes.get(PAD_AXES[n], 0.0), gp.deadzone, gp.curve)
                       for n in (gp.forward, gp.strafe, gp.turn))
            forward += -f if gp.invert_forward else f
            strafe += s
            turn += r * gp.turn_scale
            attack = attack or self._pad_pressed(pad, gp.attack)
            use = use or self._pad_pressed(pad, gp.use)
        clamp = lambda v: max(-1.0, min(1.0, float(v)))  # noqa: E731
        return Action(forward=clamp(forward), strafe=clamp(strafe), turn=clamp(turn),
                      attack=int(attack), use=int(use))

    def _pad_pressed(self, pad: Pad, names: list[str]) -> bool:
        thr = self.bindings.gamepad.trigger_threshold
        for n in names:
            if n in PAD_BUTTONS and PAD_BUTTONS[n] in pad.buttons:
                return True
            if n in PAD_AXES and pad.axes.get(PAD_AXES[n], 0.0) >= thr:
                return True
        return False

    def describe(self) -> str:
        """Connected devices, for the HUD."""
        pads = ", ".join(p.name for p in self.pads.values())
        return f"keyboard{' + mouse' if self.mouse_turn else ''}" + (f" + {pads}" if pads else "")
