"""Synthetic pygame events (keyboard, mouse, game controllers incl. hot-plug) -> the right v1 actions."""
import pygame
import pytest

from input.bindings import Bindings, GamepadBindings
from input.devices import InputState, shape_axis
from world_model.actions import Action


@pytest.fixture(scope="module", autouse=True)
def display():
    pygame.display.init()          # SDL_VIDEODRIVER=dummy (conftest): an event queue, no screen
    pygame.display.set_mode((64, 48))
    yield
    pygame.display.quit()


def feed(state: InputState, *events) -> list:
    """Post events through SDL's queue (as a device would) and fold them into the state."""
    pygame.event.clear()
    for e in events:
        pygame.event.post(e)
    return [c for e in pygame.event.get() if (c := state.handle(e)) is not None]


def key(down: bool, k: int) -> pygame.event.Event:
    return pygame.event.Event(pygame.KEYDOWN if down else pygame.KEYUP, key=k, mod=0, unicode="", scancode=0)


def axis(inst: int, ax: int, v: float) -> pygame.event.Event:
    return pygame.event.Event(pygame.CONTROLLERAXISMOTION, instance_id=inst, axis=ax, value=int(v * 32767))


def button(inst: int, b: int, down: bool = True) -> pygame.event.Event:
    t = pygame.CONTROLLERBUTTONDOWN if down else pygame.CONTROLLERBUTTONUP
    return pygame.event.Event(t, instance_id=inst, button=b)


def test_keyboard_moves_turns_and_presses():
    s = InputState(Bindings())
    assert s.action() == Action()
    feed(s, key(True, pygame.K_w), key(True, pygame.K_d), key(True, pygame.K_LEFT), key(True, pygame.K_LCTRL),
         key(True, pygame.K_SPACE))
    assert s.action() == Action(forward=1, strafe=1, turn=-1, attack=1, use=1)
    feed(s, key(True, pygame.K_s), key(False, pygame.K_LCTRL), key(False, pygame.K_SPACE), key(True, pygame.K_e))
    assert s.action() == Action(forward=0, strafe=1, turn=-1, attack=0, use=1)   # W and S cancel
    feed(s, key(False, pygame.K_w), key(False, pygame.K_d), key(False, pygame.K_LEFT), key(False, pygame.K_e),
         key(True, pygame.K_RIGHT))
    assert s.action() == Action(forward=-1, turn=1)


def test_commands_are_returned_and_do_not_move():
    s = InputState(Bindings())
    cmds = feed(s, key(True, pygame.K_p), key(True, pygame.K_F5), key(True, pygame.K_1), key(True, pygame.K_ESCAPE))
    assert cmds == ["pause", "savestate", "steps_1", "quit"]
    assert s.action() == Action()


def test_mouse_attack_and_turning():
    s = InputState(Bindings())
    feed(s, pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(0, 0)),
         pygame.event.Event(pygame.MOUSEMOTION, rel=(10, 0), pos=(0, 0), buttons=(1, 0, 0)))
    assert s.action() == Action(attack=1)                 # mouse turning is off by default
    s.mouse_turn = True
    feed(s, pygame.event.Event(pygame.MOUSEMOTION, rel=(10, 3), pos=(0, 0), buttons=(1, 0, 0)))
    assert s.action().turn == pytest.approx(0.5)          # 10 px * 0.05
    assert s.action().turn == 0.0                          # motion is consumed per tick
    feed(s, pygame.event.Event(pygame.MOUSEMOTION, rel=(-1000, 0), pos=(0, 0), buttons=(0, 0, 0)))
    assert s.action().turn == -1.0                         # clamped


def test_shape_axis_deadzone_and_curve():
    assert shape_axis(0.1, 0.15, 1.5) == 0.0
    assert shape_axis(1.0, 0.15, 1.5) == 1.0 and shape_axis(-1.0, 0.15, 1.5) == -1.0
    mid = shape_axis(0.575, 0.15, 2.0)                     # halfway through the live range
    assert mid == pytest.approx(0.25)
    assert shape_axis(-0.575, 0.15, 1.0) == pytest.approx(-0.5)


def test_gamepad_sticks_triggers_and_buttons():
    s = InputState(Bindings(gamepad=GamepadBindings(deadzone=0.1, curve=1.0)))
    feed(s, axis(0, pygame.CONTROLLER_AXIS_LEFTY, -1.0), axis(0, pygame.CONTROLLER_AXIS_LEFTX, 0.55),
         axis(0, pygame.CONTROLLER_AXIS_RIGHTX, -0.05), axis(0, pygame.CONTROLLER_AXIS_TRIGGERRIGHT, 0.8),
         button(0, pygame.CONTROLLER_BUTTON_A))
    a = s.action()
    assert a.forward == pytest.approx(1.0, abs=1e-4)      # stick up (negative y) walks forward
    assert a.strafe == pytest.approx(0.5, abs=1e-3)
    assert a.turn == 0.0                                   # inside the deadzone
    assert a.attack == 1 and a.use == 1
    feed(s, axis(0, pygame.CONTROLLER_AXIS_TRIGGERRIGHT, 0.3), button(0, pygame.CONTROLLER_BUTTON_A, False))
    a = s.action()
    assert a.attack == 0 and a.use == 0                    # trigger below its threshold


def test_gamepad_commands_and_unplug_replug():
    s = InputState(Bindings())
    assert feed(s, button(3, pygame.CONTROLLER_BUTTON_START)) == ["pause"]
    feed(s, axis(3, pygame.CONTROLLER_AXIS_LEFTY, -1.0), axis(3, pygame.CONTROLLER_AXIS_TRIGGERLEFT, 1.0))
    assert s.action().forward == 1.0 and s.action().attack == 1
    feed(s, pygame.event.Event(pygame.CONTROLLERDEVICEREMOVED, instance_id=3))
    assert s.action() == Action() and s.pads == {}         # nothing stays held after unplugging
    # Replug: SDL sends DEVICEADDED with a device index; with no real device it cannot open (logged, no crash).
    feed(s, pygame.event.Event(pygame.CONTROLLERDEVICEADDED, device_index=0))
    feed(s, axis(4, pygame.CONTROLLER_AXIS_RIGHTX, 1.0))   # the replugged pad gets a new instance id
    assert s.action().turn == 1.0


def test_two_pads_and_keyboard_sum_and_clamp():
    s = InputState(Bindings(gamepad=GamepadBindings(deadzone=0.0, curve=1.0)))
    feed(s, axis(0, pygame.CONTROLLER_AXIS_RIGHTX, 0.5), axis(1, pygame.CONTROLLER_AXIS_RIGHTX, 0.25))
    assert s.action().turn == pytest.approx(0.75, abs=1e-3)
    feed(s, key(True, pygame.K_RIGHT))
    assert s.action().turn == 1.0


def test_focus_loss_releases_everything():
    s = InputState(Bindings())
    feed(s, key(True, pygame.K_w), axis(0, pygame.CONTROLLER_AXIS_LEFTX, 1.0))
    assert s.action().forward == 1.0
    feed(s, pygame.event.Event(pygame.WINDOWFOCUSLOST))
    assert s.action() == Action()
