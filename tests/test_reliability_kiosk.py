"""Issue 7, kiosk mode: attract loop when idle, idle reset to curated seeds, locked controls with an admin
chord, and a watchdog that resets a failing backend. Driven by synthetic events on a fake clock."""
import pygame
import pytest

import main
from app.kiosk import BANNER, Kiosk, KioskConfig
from app.loop import new_state, run
from app.config import PlayConfig, SessionConfig, WindowConfig
from input.bindings import Bindings
from test_app_loop import CountingBackend, FakeWindow
from test_reliability_runtime import FakeClock
from world_model.actions import NOOP, Action
from world_model.trace import Trace

ATTRACT = Trace(seed=777, context=2, actions=[Action(turn=0.25)] * 2 + [Action(forward=1, strafe=(i + 1) / 20) for i in range(10)])


class Booth(CountingBackend):
    """Logs resets; `fail_steps` ticks raise, `fail_resets` resets raise."""

    def __init__(self):
        super().__init__()
        self.resets: list[tuple[int, list[Action]]] = []
        self.fail_steps: set[int] = set()
        self.fail_resets = 0
        self.modes: list[str] = []

    def reset(self, seed, context_actions=()):
        if self.fail_resets:
            self.fail_resets -= 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        self.resets.append((seed, list(context_actions)))
        return super().reset(seed, context_actions)

    def step(self, action):
        if self.i + 1 in self.fail_steps:
            self.fail_steps.discard(self.i + 1)
            self.i += 1
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")
        return super().step(action)

    def set_mode(self, mode):
        self.modes.append(mode)
        return f"mode {mode}"


pytestmark = pytest.mark.usefixtures("sdl_display")   # a dummy-driver window for the loop's events


def key(k, down=True):
    return pygame.event.Event(pygame.KEYDOWN if down else pygame.KEYUP, key=k, mod=0, unicode="", scancode=0)


def booth(**kw):
    """A kiosk on a fake clock: returns (state, window, backend, clock, at) where at(t, *events) posts events
    once the fake clock passes t seconds."""
    pygame.event.clear()
    cfg = KioskConfig(player=PlayConfig(backend="game", session=SessionConfig(context=2), window=WindowConfig(max_fps=60)),
                      **{"idle_s": 2.0, "seeds": [11, 12], **kw})
    b, w, clock = Booth(), FakeWindow(), FakeClock()
    state = new_state(cfg.player, b, Bindings())
    state.clock = clock
    state.kiosk = Kiosk(cfg, ATTRACT, now=clock.now())
    state.kiosk.start_attract(state, w.view)
    start, plan = clock.t, []

    def on_sleep(c):
        while plan and c.t - start >= plan[0][0]:
            for e in plan.pop(0)[1]:
                pygame.event.post(e)
    clock.on_sleep = on_sleep

    def at(t, *events):
        plan.append((t, events))
        plan.sort(key=lambda p: p[0])
    return state, w, b, clock, at


def test_attract_loop_replays_the_trace_over_and_over_with_a_banner():
    state, w, b, clock, at = booth()
    run(state, w, max_ticks=25)
    play = ATTRACT.actions[2:]
    assert b.actions == (play * 3)[:25]                                      # the trace, looped
    assert b.resets[:3] == [(777, ATTRACT.actions[:2])] * 3                  # each loop starts from its seed
    assert state.kiosk.mode == "attract" and state.kiosk.loops == 3 and "banner" in w.view.overlays


def test_any_input_starts_play_from_a_curated_seed_and_idle_goes_back():
    state, w, b, clock, at = booth()
    at(0.5, key(pygame.K_w))                            # a visitor walks up and holds W ...
    at(4.0, key(pygame.K_w, down=False))                # ... for 3.5 s (held keys send no events: still playing)
    run(state, w, max_ticks=35 * 7)                     # then nobody for 3 s > idle_s = 2
    k = state.kiosk
    assert [r for r in b.resets if r[0] != 777][0] == (11, [NOOP, NOOP])   # play starts at the first curated seed
    played = [a for a in b.actions if a == Action(forward=1)]
    assert 3.4 * 35 <= len(played) <= 3.6 * 35
    assert k.mode == "attract" and k.plays == 1 and k.loops >= 2            # idle: back to the attract loop
    assert "banner" in w.view.overlays
    idle_ticks = b.actions.index(Action(forward=1)) + len(played)
    assert b.actions[idle_ticks: idle_ticks + 60] == [NOOP] * 60            # idle_s of no-ops before attract
    pygame.event.post(pygame.event.Event(pygame.CONTROLLERBUTTONDOWN, instance_id=0, button=pygame.CONTROLLER_BUTTON_A))
    run(state, w, max_ticks=state.stats.ticks + 5)
    assert b.resets[-1] == (12, [NOOP, NOOP]) and k.mode == "play" and "banner" not in w.view.overlays


def test_a_small_stick_wobble_is_not_a_visitor():
    state, w, b, clock, at = booth()
    at(0.2, pygame.event.Event(pygame.CONTROLLERAXISMOTION, instance_id=0, axis=0, value=3000))
    run(state, w, max_ticks=20)
    assert state.kiosk.mode == "attract"


def test_locked_controls_and_the_admin_chord():
    state, w, b, clock, at = booth()
    at(0.2, key(pygame.K_d))                                                     # start playing
    at(0.4, key(pygame.K_1), key(pygame.K_3), key(pygame.K_F5), key(pygame.K_F9), key(pygame.K_F10),
       key(pygame.K_F11), key(pygame.K_ESCAPE), pygame.event.Event(pygame.QUIT))
    at(0.6, key(pygame.K_LCTRL), key(pygame.K_LSHIFT))                           # two keys of the chord ...
    at(0.8, key(pygame.K_LSHIFT, down=False), key(pygame.K_q))                   # ... not all three at once
    run(state, w, max_ticks=35)
    assert state.running and b.modes == [] and state.savestate is None and state.recorder is None
    at(1.2, key(pygame.K_LSHIFT))                                                # now ctrl + shift + q are held
    run(state, w, max_ticks=35 * 10)
    assert not state.running and state.stats.ticks < 35 * 2


def test_allowed_commands_still_work():
    state, w, b, clock, at = booth()
    start = clock.t
    at(0.2, key(pygame.K_a), key(pygame.K_p))                                    # play, then pause ...
    at(1.0, key(pygame.K_p))                                                     # ... for 0.8 s
    run(state, w, max_ticks=40)
    assert not state.paused and state.stats.ticks == 40 and state.kiosk.plays == 1
    assert clock.t - start == pytest.approx(40 / 35 + 0.8, abs=0.1)              # the pause held the world


def test_watchdog_resets_a_failing_backend_and_play_goes_on():
    state, w, b, clock, at = booth()
    at(0.2, key(pygame.K_w))
    b.fail_steps = {20, 21}
    run(state, w, max_ticks=60)
    k = state.kiosk
    assert k.faults == 2 and state.stats.ticks == 60 and state.running
    assert [s for s, _ in b.resets] == [777, 11, 11, 11]                     # attract, play, two watchdog resets
    assert "watchdog" in state.message


def test_watchdog_retries_a_reset_that_fails_until_it_works():
    state, w, b, clock, at = booth(retry_s=1.0)
    b.fail_steps, b.fail_resets = {10}, 0
    seen = {}
    old = clock.on_sleep

    def on_sleep(c):
        old(c)
        if b.i >= 9 and "t" not in seen:
            b.fail_resets = 3                                                # the device is gone for 3 resets
            seen["t"], seen["ticks"] = c.t, state.stats.ticks
    clock.on_sleep = on_sleep
    run(state, w, max_ticks=30)
    k = state.kiosk
    assert k.faults == 1 and k.retry_at is None and state.stats.ticks == 30
    assert clock.t - seen["t"] >= 3 * 1.0                                    # three failed resets, 1 s apart
    assert b.resets[-1][0] == 777 and k.mode == "attract"


def test_kiosk_cli_headless_on_the_game(tmp_path, capsys):
    (tmp_path / "k.yaml").write_text("player: {backend: game}\nidle_s: 5\n")
    code = main.main(["kiosk", "--headless", "--ticks", "40", "--settings", str(tmp_path / "k.yaml")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "quit: hold left ctrl + left shift + q" in out.out and "ticks 40" in out.out and "attract loops 1" in out.out


def test_the_key_that_wakes_the_booth_only_starts_a_game():
    state, w, b, clock, at = booth()
    at(0.2, key(pygame.K_p))                                  # pause is allowed, but not as the waking key
    at(0.5, key(pygame.K_w))
    run(state, w, max_ticks=30)
    assert state.kiosk.mode == "play" and not state.paused and b.actions[-1] == Action(forward=1)
    assert "press any key" in BANNER


def test_kiosk_on_the_tiny_model_with_a_nan_fault():
    import torch

    from app.backends import ModelBackend
    from test_app_model import tiny_models

    cfg = KioskConfig(player=PlayConfig(session=SessionConfig(context=2, window=4, snapshot_every=2)), idle_s=1.0,
                      seeds=[5])
    b = ModelBackend(cfg.player, device="cpu", device_note="cpu", models={"student": tiny_models()})
    state = new_state(cfg.player, b, Bindings())
    state.clock = FakeClock()
    state.kiosk = Kiosk(cfg, ATTRACT, now=state.clock.now())
    state.kiosk.start_attract(state, None)
    run(state, None, max_ticks=6)
    b.session.cache.k.fill_(float("nan"))
    run(state, None, max_ticks=30)
    assert state.stats.ticks == 30 and b.status().faults == 1 and state.kiosk.loops == 3
    assert torch.isfinite(b.session.cache.k).all() and state.frame.shape == (120, 160, 3)
    b.close()
