"""Issue 7, runtime faults: NaN/Inf in the model's output or its cache, a gamepad pulled and replugged mid-play,
the window minimized and restored, CUDA out of memory, and no GPU."""
import numpy as np
import pygame
import pytest
import torch

import main
from app import backends
from app.backends import BackendError, ModelBackend, pick_device
from app.timing import Clock, Phases
from app.window import minimized_after
from test_app_loop import SIZE, CountingBackend, FakeWindow, make
from test_app_model import CFG, tiny_models
from world_model.actions import Action


class FakeClock(Clock):
    """Time moves when the loop sleeps, plus 0.1 ms per reading (work takes time); `on_sleep` runs after
    each sleep (to post events)."""

    def __init__(self):
        self.t, self.sleeps, self.on_sleep = 1000.0, [], None

    def now(self) -> float:
        self.t += 1e-4
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.sleeps.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(self)


pytestmark = pytest.mark.usefixtures("sdl_display")   # a dummy-driver window for the loop's events


@pytest.fixture(scope="module")
def models():
    return tiny_models()


# -- NaN / Inf --------------------------------------------------------------------------------------

def test_nan_in_the_cache_restores_the_last_good_snapshot_and_play_goes_on(models):
    b = ModelBackend(CFG, device="cpu", device_note="cpu", models={"student": models})
    b.reset(1)
    good = [b.step(Action(forward=1)) for _ in range(4)]     # snapshot_every=2: last good after tick 4
    b.session.cache.k.fill_(float("nan"))                     # a poisoned cache (e.g. an overflow in bf16)
    shown = b.step(Action(forward=1))
    assert np.array_equal(shown, good[-1]) and b.status().faults == 1
    assert torch.isfinite(b.session.cache.k).all()            # the snapshot's clean cache is back
    after = [b.step(Action(forward=1)) for _ in range(3)]
    assert b.status().faults == 1 and not np.array_equal(after[-1], good[-1])   # play goes on, frames move
    b.close()


def test_inf_output_from_broken_weights_is_counted_every_tick_and_recovers_when_fixed(models):
    model, ae = tiny_models(3)
    b = ModelBackend(CFG, device="cpu", device_note="cpu", models={"student": (model, ae)})
    b.reset(2)
    good = b.step(Action())
    b.step(Action())
    w = model.final.linear.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w.fill_(float("inf"))
    frames = [b.step(Action()) for _ in range(3)]
    assert b.status().faults == 3 and all(f.shape == (120, 160, 3) for f in frames)
    with torch.no_grad():
        w.copy_(saved)
    assert b.step(Action()).shape == (120, 160, 3) and b.status().faults == 3
    assert good.dtype == np.uint8
    b.close()


def test_hud_shows_faults(models):
    from app.hud import Fonts, HudFlags, render_hud
    from app.timing import Stats

    b = ModelBackend(CFG, device="cpu", device_note="cpu", models={"student": models})
    b.reset(1)
    b.faults = 2
    surf = render_hud(Fonts(16), Stats(), b.status(), Action(), HudFlags(watchdog=1))
    assert surf.get_height() > 100
    b.close()


# -- gamepad ----------------------------------------------------------------------------------------

def axis(inst, ax, v):
    return pygame.event.Event(pygame.CONTROLLERAXISMOTION, instance_id=inst, axis=ax, value=int(v * 32767))


def test_gamepad_unplug_and_replug_mid_play():
    pygame.event.clear()
    w, b = FakeWindow(), CountingBackend()
    state = make(b)
    w.script[2] = [axis(7, pygame.CONTROLLER_AXIS_LEFTY, -1.0)]                       # stick up: forward
    w.script[12] = [pygame.event.Event(pygame.CONTROLLERDEVICEREMOVED, instance_id=7)]  # pulled out, stick held
    w.script[20] = [pygame.event.Event(pygame.CONTROLLERDEVICEADDED, device_index=5),   # replugged (cannot open:
                    axis(8, pygame.CONTROLLER_AXIS_RIGHTX, 1.0)]                          # no device; new instance)
    run_until(state, w, presents=30)
    fwd = [a.forward for a in b.actions]
    turn = [a.turn for a in b.actions]
    first_fwd = fwd.index(1.0)
    last_fwd = len(fwd) - 1 - fwd[::-1].index(1.0)
    assert all(f == 1.0 for f in fwd[first_fwd:last_fwd + 1])
    assert all(a == Action() for a in b.actions[last_fwd + 1: turn.index(1.0)])      # unplugged: nothing held
    assert turn[-1] == 1.0 and fwd[-1] == 0.0 and len(b.actions) > 12


def run_until(state, w, presents):
    from app.loop import run
    w.script[presents] = w.script.get(presents, []) + [pygame.event.Event(pygame.QUIT)]
    run(state, w)


# -- minimize / restore -----------------------------------------------------------------------------

class MinimizableWindow(FakeWindow):
    def events(self):
        events = pygame.event.get()
        for e in events:
            self.minimized = minimized_after(e, self.minimized)
        return events


def test_minimize_pauses_without_spinning_and_restore_draws_again():
    from app.loop import HIDDEN_POLL_S, run

    pygame.event.clear()
    w, b, clock = MinimizableWindow(), CountingBackend(), FakeClock()
    state = make(b)
    state.clock = clock
    w.script[10] = [pygame.event.Event(pygame.WINDOWMINIMIZED)]
    seen = {}

    def on_sleep(c):
        if w.minimized and "at" not in seen:
            seen.update(at=c.t, ticks=state.stats.ticks, presents=w.presents, sleeps=len(c.sleeps))
        if w.minimized and c.t - seen["at"] >= 3.0 and "restored" not in seen:   # 3 s minimized
            seen.update(restored=True, ticks_hidden=state.stats.ticks - seen["ticks"],
                        presents_hidden=w.presents - seen["presents"], sleeps_hidden=len(c.sleeps) - seen["sleeps"])
            pygame.event.post(pygame.event.Event(pygame.WINDOWRESTORED))

    clock.on_sleep = on_sleep
    run(state, w, max_ticks=40)
    assert seen["ticks_hidden"] == 0 and seen["presents_hidden"] == 0                     # the world waits
    assert seen["sleeps_hidden"] == pytest.approx(3.0 / HIDDEN_POLL_S, abs=2)            # 20 polls/s, no spinning
    assert state.stats.ticks == 40 and state.stats.late == 0                             # no catch-up burst
    w.view.draw(SIZE, w.fbo)
    assert (w.read()[-50:, 300:340] == 40).all()                                         # drawing the latest frame
    assert w.presents > seen["presents"] + 10


@pytest.mark.parametrize("event, before, after", [
    (pygame.event.Event(pygame.WINDOWMINIMIZED), False, True),
    (pygame.event.Event(pygame.WINDOWHIDDEN), False, True),
    (pygame.event.Event(pygame.WINDOWRESTORED), True, False),
    (pygame.event.Event(pygame.WINDOWEXPOSED), True, False),
    (pygame.event.Event(pygame.ACTIVEEVENT, gain=0, state=pygame.APPACTIVE), False, True),
    (pygame.event.Event(pygame.ACTIVEEVENT, gain=1, state=pygame.APPACTIVE), True, False),
    (pygame.event.Event(pygame.ACTIVEEVENT, gain=0, state=pygame.APPINPUTFOCUS), False, False),
    (pygame.event.Event(pygame.KEYDOWN, key=pygame.K_w), True, True),
])
def test_window_state_events(event, before, after):
    assert minimized_after(event, before) is after


# -- CUDA out of memory, no GPU ---------------------------------------------------------------------

class OomBackend(CountingBackend):
    def step(self, action):
        if self.i >= 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
        return super().step(action)

    def close(self):
        pass


def test_cuda_oom_in_a_step_is_one_line_saying_what_to_change(monkeypatch, capsys):
    monkeypatch.setattr(main, "make_backend", lambda *a, **k: OomBackend())
    code = main.main(["play", "--headless", "--ticks", "10", "--unpaced", "--backend", "game"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "CUDA ran out of memory" in err[0] and "session.window" in err[0] and "--device cpu" in err[0]


def test_no_gpu_runs_on_cpu_and_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == ("cpu", "cpu (no GPU found)")
    assert pick_device("cpu") == ("cpu", "cpu (no GPU found)")
    with pytest.raises(BackendError, match="no CUDA GPU is available here; use --device cpu"):
        pick_device("cuda")


def test_phases_is_fine_without_steps():
    assert Phases().last == {} and backends.MODES == ("1", "2", "teacher")


def test_pause_sleeps_to_the_next_display_frame_instead_of_spinning():
    from app.loop import run

    pygame.event.clear()
    w, b, clock = FakeWindow(), CountingBackend(), FakeClock()
    state = make(b)
    state.clock = clock
    w.script[5] = [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_p, mod=0, unicode="", scancode=0)]
    w.script[65] = [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_p, mod=0, unicode="", scancode=0)]
    reads = {}
    clock.on_sleep = lambda c: reads.setdefault(w.presents, (state.stats.ticks, len(c.sleeps), c.t))
    run(state, w, max_ticks=30)
    (t6, s6, c6), (t64, s64, c64) = reads[6], reads[64]
    assert t64 == t6                                   # paused for 58 display frames: no ticks
    assert s64 - s6 <= 60 and c64 - c6 == pytest.approx(58 / 60, abs=0.02)   # one sleep per display frame
    assert state.stats.ticks == 30 and state.stats.late == 0
