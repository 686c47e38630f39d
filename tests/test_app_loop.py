"""The real-time loop under SDL's dummy driver (events) with a standalone EGL moderngl context (drawing)."""
import time

import moderngl
import numpy as np
import pygame
import pytest

from app.backends import GameBackend, Unsupported
from app.config import PlayConfig, RecordConfig, SessionConfig, WindowConfig
from app.loop import new_state, reset, run
from app.timing import Phases, format_report, run_report
from app.view import View
from input.bindings import Bindings
from world_model.actions import Action
from world_model.trace import load as load_trace

SIZE = (640, 480)


class FakeWindow:
    """The Window interface over an EGL framebuffer; events come from pygame's (dummy-driver) queue."""

    def __init__(self):
        self.ctx = moderngl.create_context(standalone=True, backend="egl")
        self.fbo = self.ctx.framebuffer(color_attachments=[self.ctx.renderbuffer(SIZE)])
        self.view = View(self.ctx, sharp=False)
        self.size, self.minimized, self.presents = SIZE, False, 0
        self.script: dict[int, list] = {}    # present number -> events to post after it

    def events(self):
        return pygame.event.get()

    def present(self) -> bool:
        self.view.draw(self.size, self.fbo)
        self.presents += 1
        for e in self.script.pop(self.presents, []):
            pygame.event.post(e)
        return True

    def read(self) -> np.ndarray:
        return self.view.read(self.size, self.fbo)

    def screenshot(self, path):
        raise AssertionError("not used")

    def toggle_fullscreen(self) -> str:
        return "fullscreen not available here"

    def grab_mouse(self, on: bool) -> None:
        pass


class CountingBackend:
    """Frame i is filled with value i % 256; optionally slow, to force late ticks."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.i, self.phases = delay, 0, Phases()
        self.actions: list[Action] = []

    def reset(self, seed, context_actions=()):
        self.i = 0
        return np.zeros((120, 160, 3), np.uint8)

    def step(self, action):
        if self.delay:
            time.sleep(self.delay)
        self.i += 1
        self.actions.append(action)
        return np.full((120, 160, 3), self.i % 256, np.uint8)

    def status(self):
        return GameBackend.status(self)

    def set_mode(self, mode):
        return f"mode {mode}"

    def snapshot(self):
        raise Unsupported("no savestate here")

    def restore(self, state):
        raise Unsupported("no savestate here")


pytestmark = pytest.mark.usefixtures("sdl_display")   # a dummy-driver window for the loop's events


def keydown(k):
    return pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode="", scancode=0)


def make(backend, tmp_path=None, **cfg):
    record = RecordConfig(dir=str(tmp_path / "rec"), screenshot_dir=str(tmp_path / "shots")) if tmp_path else RecordConfig()
    # 60 display frames/s like a vsynced monitor: llvmpipe at 240 fps would load the 2-core CI machine.
    c = PlayConfig(backend="game", session=SessionConfig(context=2), record=record, window=WindowConfig(max_fps=60), **cfg)
    return new_state(c, backend, Bindings())


def test_loop_ticks_at_35hz_uploads_once_per_tick_and_draws_frame_and_hud():
    pygame.event.clear()
    w, b = FakeWindow(), CountingBackend()
    state = make(b)
    w.script[3] = [keydown(pygame.K_w), keydown(pygame.K_LCTRL)]
    t0 = time.perf_counter()
    stats = run(state, w, max_ticks=21)
    elapsed = time.perf_counter() - t0
    assert stats.ticks == 21 and stats.late <= 2         # (a busy 2-core CI machine may miss a slot)
    assert 0.5 < elapsed < 1.2                           # 20 intervals at 35 Hz = 0.57 s
    assert 33 < stats.rate(stats.interval) < 37
    assert w.view.uploads == 22                          # one upload per tick, plus the reset frame
    assert 25 < w.presents < 45                          # 60 display frames/s, not tied to ticks
    assert b.actions[0] == Action() and b.actions[-1] == Action(forward=1, attack=1)
    assert len(stats.latency) > 0 and stats.latency.pct(99) < 0.1
    w.view.draw(SIZE, w.fbo)
    img = w.read()
    assert (img[-50:, 300:340] == 21).all()              # the latest frame, scaled, under the HUD-free corner
    hud = img[8:40, 8:200].astype(int)
    assert (hud != 21).any(axis=2).sum() > 500           # HUD text and panel drawn over the frame


def test_slow_backend_counts_late_ticks_and_never_catches_up():
    w, b = FakeWindow(), CountingBackend(delay=0.05)     # 50 ms per tick > 28.6 ms budget
    state = make(b)
    t0 = time.perf_counter()
    stats = run(state, w, max_ticks=10)
    elapsed = time.perf_counter() - t0
    assert stats.late >= 9
    assert elapsed > 10 * 0.05                           # no burst of catch-up ticks
    assert stats.rate(stats.interval) < 21
    # the report says which ticks were late and by how much (each ~50 - 28.6 ms past its slot)
    rep = run_report(stats)
    assert len(rep["late_at"]) == stats.late and all(15 < over < 200 for _, over in rep["late_at"])
    assert [t for t, _ in rep["late_at"]] == sorted(t for t, _ in rep["late_at"])
    assert rep["gc"]["collections"] >= 0 and "late at tick" in format_report(rep)


def test_first_flip_happens_before_the_first_tick():
    """The first present is slow (shader compile, buffers): it must not eat into a tick's slot."""
    w, b = FakeWindow(), CountingBackend()
    state = make(b)
    at_first_step = []
    step = b.step
    b.step = lambda action: (at_first_step.append(w.presents), step(action))[1]
    run(state, w, max_ticks=2)
    assert at_first_step[0] >= 1


def test_gc_pauses_are_timed_and_startup_objects_frozen():
    """The loop freezes start-up objects out of the collector's scans and times each collection."""
    import gc
    w, b = FakeWindow(), CountingBackend()
    state = make(b)
    seen = []
    step = b.step
    b.step = lambda action: (seen.append(gc.get_freeze_count()), step(action))[1]
    junk = []
    stats = run(state, w, max_ticks=5, paced=False)
    assert seen and min(seen) > 1000                    # frozen while playing
    assert gc.get_freeze_count() == 0                   # and thawed afterwards
    gc.collect()                                        # outside the run: not counted
    n = stats.gc.count
    stats.gc.install()
    junk.append([junk])
    gc.collect()
    stats.gc.remove()
    assert stats.gc.count == n + 1 and stats.gc.max_s > 0


def test_pause_single_step_and_commands():
    pygame.event.clear()
    w, b = FakeWindow(), CountingBackend()
    state = make(b)
    run(state, w, max_ticks=2)
    pygame.event.post(keydown(pygame.K_p))
    w.script[w.presents + 3] = [keydown(pygame.K_n), keydown(pygame.K_F5), keydown(pygame.K_2)]
    w.script[w.presents + 30] = [keydown(pygame.K_ESCAPE)]
    run(state, w)
    assert state.paused and not state.running
    assert state.stats.ticks == 3                        # exactly one single step while paused
    assert "no savestate here" in state.message or state.message == "mode 2"


def test_headless_run_without_window_unpaced():
    b = CountingBackend()
    state = make(b)
    t0 = time.perf_counter()
    stats = run(state, None, max_ticks=200, paced=False)
    assert stats.ticks == 200 and time.perf_counter() - t0 < 1.0


class Taping:
    """Wraps a backend and keeps every frame it returns."""

    def __init__(self, inner):
        self.inner, self.frames = inner, []
        self.phases = inner.phases

    def step(self, action):
        self.frames.append(self.inner.step(action))
        return self.frames[-1]

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_record_writes_trace_and_video_that_replay_the_live_frames(tmp_path):
    from app.replay import replay

    pygame.event.clear()
    w = FakeWindow()
    backend = Taping(GameBackend(PlayConfig().game))
    state = make(backend, tmp_path)
    try:
        script = iter([Action(forward=1, turn=0.5 * (i % 3 - 1), attack=int(i == 7)) for i in range(100)])
        run(state, w, max_ticks=3, script=script)
        pygame.event.post(keydown(pygame.K_F5))
        run(state, w, max_ticks=4, script=script)
        assert "not supported on the game backend" in state.message
        pygame.event.post(keydown(pygame.K_F10))          # start recording before tick 5
        run(state, w, max_ticks=24, script=script)
        assert state.recorder is not None and any(p.name.endswith(".part.trace.jsonl") for p in (tmp_path / "rec").iterdir())
        pygame.event.post(keydown(pygame.K_F10))          # stop before tick 25
        run(state, w, max_ticks=25, script=script)
        assert state.recorder is None
    finally:
        backend.close()
    rec = tmp_path / "rec"
    assert not list(rec.glob("*.part*"))
    (trace_path,) = rec.glob("*.trace.jsonl")
    (video_path,) = rec.glob("*.mp4")
    trace = load_trace(trace_path)
    assert trace.context == 2 and len(trace.actions) == 2 + 24 and trace.extra["video_start"] == 2 + 4
    import imageio.v3 as iio
    video = iio.imread(video_path)
    assert video.shape == (20, 120, 160, 3)               # ticks 5..24
    out = replay(trace, GameBackend(PlayConfig().game), tmp_path / "replay", video=False)
    frames = np.load(tmp_path / "replay" / "frames.npz")["frames"]
    assert out["ticks"] == 24 and np.array_equal(frames, np.stack(backend.frames[:24]))
    assert np.abs(video.astype(int) - frames[4:].astype(int)).mean() < 8   # the mp4 shows the same frames (lossy)


def test_whole_run_histogram_percentiles_are_within_a_bin():
    from app.timing import Histogram
    rng = np.random.default_rng(0)
    xs = rng.lognormal(mean=np.log(0.005), sigma=0.5, size=20_000)      # tick-like times around 5 ms
    h = Histogram()
    for x in xs:
        h.add(float(x))
    for q in (50, 90, 99):
        true = np.percentile(xs, q)
        assert true <= h.pct(q) * 1.0001 and h.pct(q) <= true * 1.02   # upper bin edge, bins 1% wide
    assert h.n == len(xs) and abs(h.mean - xs.mean()) < 1e-9 and h.pct(100) == xs.max()
