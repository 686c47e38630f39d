"""The threaded loop (loop.step_thread): backend.step on a worker thread while the main thread keeps polling
input and drawing the last frame and the HUD. Real clock, SDL's dummy driver, an EGL moderngl context."""
import threading
import time

import numpy as np
import pygame
import pytest

from app.backends import GameBackend
from app.config import LoopConfig, PlayConfig, SessionConfig, WindowConfig, load_play
from app.kiosk import Kiosk, KioskConfig
from app.loop import new_state, run, threaded
from input.bindings import Bindings
from test_app_loop import CountingBackend, FakeWindow, Taping, keydown, make
from test_reliability_kiosk import ATTRACT, Booth
from world_model.actions import Action

pytestmark = pytest.mark.usefixtures("sdl_display")   # a dummy-driver window for the loop's events

ON = LoopConfig(step_thread=True)


def step_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dreamloop-step")]


class Strict(CountingBackend):
    """A slow backend that fails the test if anything but `step` touches it while a step is running."""

    def __init__(self, delay: float):
        super().__init__(delay)
        self.busy, self.misuse, self.calls = False, [], []

    def _check(self, name):
        self.calls.append(name)
        if self.busy:
            self.misuse.append(name)

    def step(self, action):
        self.busy = True
        try:
            return super().step(action)
        finally:
            self.busy = False

    def reset(self, seed, context_actions=()):
        self._check("reset")
        return super().reset(seed, context_actions)

    def set_mode(self, mode):
        self._check("set_mode")
        return super().set_mode(mode)

    def snapshot(self):
        self._check("snapshot")
        return super().snapshot()

    def status(self):
        self._check("status")
        return super().status()


def test_slow_step_keeps_the_display_going_and_counts_late_ticks():
    pygame.event.clear()
    w, b = FakeWindow(), CountingBackend(delay=0.05)     # 50 ms per step > 28.6 ms tick budget
    state = make(b, loop=ON)
    t0 = time.perf_counter()
    stats = run(state, w, max_ticks=10)
    elapsed = time.perf_counter() - t0
    assert stats.ticks == 10 and stats.late >= 9         # each step ends after its slot
    assert elapsed > 10 * 0.05 and stats.rate(stats.interval) < 21   # no catch-up burst
    assert stats.frames >= 2 * stats.ticks and w.presents >= 20      # ~60 display frames/s during the steps
    assert stats.frame.pct(50) < 0.03                    # a present every display frame, not every step
    assert w.view.uploads == 11                          # still one upload per tick (plus the reset frame)
    assert state.inflight is None and not step_threads()
    w.view.draw((640, 480), w.fbo)
    assert (w.read()[-50:, 300:340] == 10).all()         # the last tick's frame is on screen


def test_fast_backend_threaded_still_ticks_at_35hz():
    pygame.event.clear()
    w, b = FakeWindow(), CountingBackend()
    state = make(b, loop=ON)
    stats = run(state, w, max_ticks=21)
    assert stats.ticks == 21 and stats.late <= 2 and 33 < stats.rate(stats.interval) < 37


def test_same_actions_give_the_same_frames_threaded_or_not():
    frames = {}
    for mode in (False, True):
        pygame.event.clear()
        backend = Taping(GameBackend(PlayConfig().game))
        state = make(backend, loop=LoopConfig(step_thread=mode))
        try:
            script = iter([Action(forward=1, turn=0.5 * (i % 3 - 1), attack=int(i == 4)) for i in range(100)])
            run(state, FakeWindow(), max_ticks=12, script=script)
        finally:
            backend.close()
        frames[mode] = np.stack(backend.frames)
    assert frames[True].shape == (12, 120, 160, 3) and np.array_equal(frames[True], frames[False])


def test_controls_that_touch_the_backend_wait_for_the_step():
    pygame.event.clear()
    w, b = FakeWindow(), Strict(delay=0.1)               # a step is in flight nearly all the time
    state = make(b, loop=ON)
    w.script[4] = [keydown(pygame.K_2)]                  # mode switch
    w.script[10] = [keydown(pygame.K_F5)]                # savestate
    w.script[16] = [keydown(pygame.K_BACKSPACE)]         # reset
    w.script[22] = [keydown(pygame.K_TAB), keydown(pygame.K_TAB)]   # HUD off and on: a HUD render
    w.script[30] = [pygame.event.Event(pygame.QUIT)]
    run(state, w)
    assert b.misuse == []                                # nothing touched the backend mid-step
    assert {"set_mode", "snapshot", "status"} <= set(b.calls) and b.calls.count("reset") == 2
    assert w.presents >= 30 and state.stats.ticks < 30 * 0.5   # many display frames per (slow) tick


def test_quitting_mid_step_joins_and_counts_the_tick():
    pygame.event.clear()
    w, b = FakeWindow(), CountingBackend(delay=0.3)
    state = make(b, loop=ON)
    w.script[3] = [pygame.event.Event(pygame.QUIT)]      # 50 ms in: the first step is still running
    t0 = time.perf_counter()
    run(state, w)
    assert time.perf_counter() - t0 >= 0.3               # the step was waited for
    assert not state.running and state.inflight is None and not step_threads()
    assert b.i == state.stats.ticks == 1 and w.view.uploads == 2   # its tick finished: counted and uploaded


def test_an_exception_in_the_step_reaches_the_main_thread():
    class Failing(CountingBackend):
        def step(self, action):
            if self.i == 2:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return super().step(action)

    pygame.event.clear()
    state = make(Failing(delay=0.01), loop=ON)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run(state, FakeWindow(), max_ticks=10)
    assert state.stats.ticks == 2 and state.inflight is None and not step_threads()


def test_kiosk_watchdog_catches_a_step_failing_on_the_worker():
    pygame.event.clear()
    player = PlayConfig(backend="game", session=SessionConfig(context=2), window=WindowConfig(max_fps=60), loop=ON)
    cfg = KioskConfig(player=player, idle_s=60.0, seeds=[11])
    b, w = Booth(), FakeWindow()
    b.delay = 0.01
    b.fail_steps = {3}
    state = new_state(player, b, Bindings())
    state.kiosk = Kiosk(cfg, ATTRACT, now=state.clock.now())
    state.kiosk.start_attract(state, w.view)
    run(state, w, max_ticks=8)
    assert state.kiosk.faults == 1 and state.stats.ticks == 8
    assert len(b.resets) == 2 and b.resets[1][0] == ATTRACT.seed        # the watchdog reset the attract loop
    assert b.actions == ATTRACT.actions[2:4] + ATTRACT.actions[2:8]      # and play went on from its start


def test_step_thread_setting(tmp_path):
    path = tmp_path / "play.yaml"
    for text, want in (("on", True), ("off", False), ("auto", "auto")):
        path.write_text(f"loop:\n  step_thread: {text}\n")
        assert load_play(path).loop.step_thread == want
    w = object()
    assert LoopConfig().step_thread is False           # off by default (it costs tick rate on a 2-core CPU)
    auto = LoopConfig(step_thread="auto")
    assert threaded(new_state(PlayConfig(backend="model", loop=auto), None, Bindings()), w)
    assert threaded(new_state(PlayConfig(backend="side", loop=auto), None, Bindings()), w)
    assert not threaded(new_state(PlayConfig(backend="game", loop=auto), None, Bindings()), w)
    assert threaded(new_state(PlayConfig(backend="game", loop=ON), None, Bindings()), w)
    assert not threaded(new_state(PlayConfig(backend="model", loop=LoopConfig(step_thread=False)), None, Bindings()), w)
    assert not threaded(new_state(PlayConfig(backend="model", loop=ON), None, Bindings()), None)   # headless
