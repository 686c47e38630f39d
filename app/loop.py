"""The real-time loop: fixed 35 Hz simulation ticks, decoupled from the display refresh.

    each tick:          poll input -> build the v1 action -> backend.step -> upload the frame (once)
    each display frame: draw the latest frame + HUD -> flip

When the backend falls behind, the last frame stays on screen, no catch-up ticks are queued, and the
tick is counted late. While the window is minimized the world pauses (no ticks, no drawing; events are
polled 20 times a second) and it resumes on restore without catch-up. All run state lives in one
`PlayState`; nothing is global. Time comes from `state.clock`, so tests can drive the loop with a fake one.

In kiosk mode (`state.kiosk`, app/kiosk.py) the kiosk sees every event first, chooses each tick's action
(attract trace or live input), refuses locked commands, and its watchdog turns a failing tick into a
backend reset instead of a crash.

With `loop.step_thread` on (settings/play.yaml; `auto` = on for the model, off for the game) a windowed
run calls `backend.step` on one worker thread, so the window keeps polling input and drawing the last frame
and the HUD at display rate while a slow step is in flight. Everything else (the GL context, pygame events,
the texture upload, the HUD, recording) stays on the main thread. At most one step is in flight; the next
tick's action is polled when its slot comes and the worker is free, so ticks are never queued, and a tick
that ends after its slot counts late exactly as in the synchronous loop. Controls that touch the backend
(reset, mode switch, savestate/restore, recording) first wait for the in-flight step (`settle`). The worker
makes the same calls in the same order, so frames are the same. Headless runs stay synchronous.
"""
from __future__ import annotations

import gc
import logging
import time
from array import array
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pygame

from input.bindings import Bindings
from input.devices import InputState
from world_model.actions import FIELDS, NOOP, Action
from world_model.trace import Trace

from .backends import Unsupported
from .config import PlayConfig, resolve
from .hud import Fonts, HudFlags, render_help, render_hud, surface_rgba
from .record import Recorder
from .timing import Clock, Stats

log = logging.getLogger(__name__)
MESSAGE_S = 4.0
HIDDEN_POLL_S = 0.05     # event polling period while minimized
BACKEND_COMMANDS = ("reset", "steps_1", "steps_2", "teacher", "savestate", "restore", "record")


@dataclass
class InFlight:
    """The tick whose `backend.step` runs on the worker thread."""

    action: Action
    future: Future                    # -> (frame, perf_counter at the step's end, clock at the step's end)
    t0: float                         # perf_counter when the tick's input was polled
    deadline: float                   # end of the tick's slot (clock time)
    count_late: bool                  # paced and not a single step


@dataclass
class PlayState:
    cfg: PlayConfig
    backend: Any
    bindings: Bindings
    input: InputState
    stats: Stats
    seed: int = 0
    frame: np.ndarray | None = None
    action: Action = NOOP
    actions: array = field(default_factory=lambda: array("d"))   # recent actions since reset, flat (ticks * 5)
    dropped: int = 0                  # ticks since reset no longer in `actions` (record.history_s bounds it)
    context: int = 0                  # leading ticks of `actions` that seeded the backend
    paused: bool = False
    step_once: bool = False
    running: bool = True
    show_hud: bool = True
    show_help: bool = False
    next_tick: float = 0.0
    last_tick: float | None = None
    last_present: float | None = None
    unpresented: list[float] = field(default_factory=list)   # poll times of ticks not yet on screen
    hud_due: float = 0.0
    savestate: Any = None
    recorder: Recorder | None = None
    message: str = ""
    message_until: float = 0.0
    fonts: Fonts | None = None
    clock: Clock = field(default_factory=Clock)
    kiosk: Any = None                 # app.kiosk.Kiosk in kiosk mode
    inflight: InFlight | None = None  # threaded loop: the step running on the worker
    status: Any = None                # the backend's last status, shown while a step is in flight

    def say(self, text: str) -> None:
        log.info("%s", text)
        self.message, self.message_until = text, self.clock.now() + MESSAGE_S
        self.hud_due = 0.0

    @property
    def history_cap(self) -> int:
        """Ticks of actions kept for a recording's trace (memory stays flat in long play)."""
        return max(1, round(self.cfg.record.history_s * self.cfg.tick_hz))


def new_state(cfg: PlayConfig, backend: Any, bindings: Bindings) -> PlayState:
    return PlayState(cfg=cfg, backend=backend, bindings=bindings, input=InputState(bindings),
                     stats=Stats(cfg.hud.history), seed=cfg.seed, show_hud=cfg.hud.show)


def reset(state: PlayState, view: Any = None, context: list[Action] | None = None) -> None:
    """Back to the seed: the context ticks (no-ops unless given) are played again so traces replay from here."""
    settle(state, view)
    stop_recording(state)
    context = [NOOP] * state.cfg.session.context if context is None else list(context)
    state.frame = state.backend.reset(state.seed, context)
    state.actions = array("d", [v for a in context for v in a.to_list()])
    state.dropped, state.context = 0, len(context)
    if view is not None:
        view.upload(state.frame)


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------

def run(state: PlayState, window: Any = None, *, max_ticks: int | None = None, paced: bool = True,
        script: Iterator[Action] | None = None) -> Stats:
    """Play until quit (or `max_ticks`). `window=None` is headless; `script` replaces live input.
    A recording still running at the end stays open (the caller stops it with `stop_recording`)."""
    view = window.view if window is not None else None
    if state.frame is None:
        reset(state, view)
    if view is not None and state.show_hud:
        update_hud(state, view)           # font loading and the first render happen before the first tick
    if window is not None:
        # The first draw and flip (shader compile, buffer allocation) took ~170 ms in the H100 window run and
        # made tick 2 late; do it before the tick clock starts.
        window.present()
    worker = ThreadPoolExecutor(1, thread_name_prefix="dreamloop-step") if threaded(state, window) else None
    # Start-up objects (torch, the models, pygame, fonts) leave the collector's scans, so a full collection in
    # play walks only what play made: over the whole start-up heap one can outlast a tick (GcPauses).
    gc.collect()
    gc.freeze()
    state.stats.gc.install()
    try:
        play(state, window, worker, max_ticks, paced, script)
        settle(state, view)                       # quit mid-step: the step ends and its tick counts
    finally:
        if state.inflight is not None:            # an error elsewhere: let the step end before anyone else
            wait([state.inflight.future])         # touches the backend (its result is dropped)
            state.inflight = None
        if worker is not None:
            worker.shutdown(wait=True)
        state.stats.gc.remove()
        gc.unfreeze()
    return state.stats


def play(state: PlayState, window: Any, worker: ThreadPoolExecutor | None, max_ticks: int | None, paced: bool,
         script: Iterator[Action] | None) -> None:
    """The loop itself: ticks on the clock (on `worker` when threaded), display frames, input, sleeping."""
    period = 1.0 / state.cfg.tick_hz
    frame_period = 1.0 / state.cfg.window.max_fps
    clock = state.clock
    view = window.view if window is not None else None
    now = clock.now()
    state.next_tick = next_frame = now
    while state.running and (max_ticks is None or state.stats.ticks < max_ticks):
        if window is not None:
            poll(state, window)
        if state.kiosk is not None:
            state.kiosk.update(state, view)
        if state.inflight is not None and state.inflight.future.done():
            settle(state, view)
        hidden = window is not None and window.minimized
        now = clock.now()
        ready = not hidden and (state.kiosk is None or state.kiosk.ready(now))
        due = state.step_once or (not state.paused and (now >= state.next_tick or not paced))
        more = max_ticks is None or state.stats.ticks < max_ticks   # a settled step may have been the last
        if ready and due and more and state.inflight is None:
            scheduled = state.next_tick if paced else now
            count_late = paced and not state.step_once
            state.step_once = False
            if worker is not None:
                guarded(state, view, start_tick, state, view, script, worker, scheduled + period, count_late)
            else:
                guarded(state, view, tick, state, view, script)
                schedule(state, clock.now(), scheduled + period, count_late)
        waiting = state.paused or not ready   # no tick is due until something changes
        if hidden:
            clock.sleep(HIDDEN_POLL_S)        # minimized: nothing to draw and the world waits
            state.stats.hidden_s += HIDDEN_POLL_S
            state.next_tick = next_frame = clock.now()
            state.hud_due = 0.0               # redraw the HUD as soon as the window is back
            continue
        if window is not None and clock.now() >= next_frame:
            present(state, window)
            next_frame = max(next_frame + frame_period, clock.now() - frame_period)
        if state.inflight is not None:        # wake at the next display frame, or when the step ends
            delay = next_frame - clock.now()
            if delay > 0.0005:
                wait([state.inflight.future], timeout=delay - 0.0003)
        elif paced or waiting:
            if waiting:                       # sleep to the next display frame (or a poll), never spin
                wake = next_frame if window is not None else clock.now() + HIDDEN_POLL_S
            else:
                wake = min(state.next_tick, next_frame) if window is not None else state.next_tick
            delay = wake - clock.now()
            if delay > 0.0005:
                clock.sleep(delay - 0.0003)
        if waiting and state.inflight is None:
            state.next_tick = clock.now()     # resume from now: no catch-up ticks after a pause


def threaded(state: PlayState, window: Any) -> bool:
    """loop.step_thread: auto is on for the model (a step can outlast a display frame), off for the game."""
    mode = state.cfg.loop.step_thread     # True (on), False (off) or "auto"
    return window is not None and (mode is True or (mode == "auto" and state.cfg.backend != "game"))


def schedule(state: PlayState, end: float, deadline: float, count_late: bool) -> None:
    """After a tick that ended at `end`: count it late if it missed its slot; never queue catch-up ticks."""
    if count_late and end > deadline:
        state.stats.count_late(end - deadline)
    state.next_tick = deadline if end <= deadline else end


def guarded(state: PlayState, view: Any, fn: Any, *args: Any) -> None:
    """Run one tick's work; in kiosk mode a failing backend is the watchdog's to reset, never a crash."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - any backend fault, by design (issue 7: the watchdog)
        if state.kiosk is None:
            raise
        state.kiosk.fault(state, view, e)


def next_action(state: PlayState, view: Any, script: Iterator[Action] | None) -> Action:
    if script is not None:
        return next(script, NOOP)
    if state.kiosk is not None:
        return state.kiosk.action(state, view)
    return state.input.action()


def tick(state: PlayState, view: Any, script: Iterator[Action] | None) -> None:
    t0 = time.perf_counter()
    action = next_action(state, view, script)
    frame = state.backend.step(action)
    finish_tick(state, view, action, frame, t0, time.perf_counter())


def start_tick(state: PlayState, view: Any, script: Iterator[Action] | None, worker: ThreadPoolExecutor,
               deadline: float, count_late: bool) -> None:
    """Poll this tick's action and hand its step to the worker; `settle` finishes the tick."""
    t0 = time.perf_counter()
    action = next_action(state, view, script)
    state.status = state.backend.status()         # what the HUD shows until the step ends

    def step() -> tuple[np.ndarray, float, float]:
        frame = state.backend.step(action)
        return frame, time.perf_counter(), state.clock.now()

    state.inflight = InFlight(action, worker.submit(step), t0, deadline, count_late)


def settle(state: PlayState, view: Any) -> None:
    """Wait for the in-flight step (if any) and finish its tick on this thread: upload, record, count.
    An exception raised by the step is raised here (the kiosk's watchdog catches it)."""
    job, state.inflight = state.inflight, None
    if job is None:
        return
    try:
        frame, t1, end = job.future.result()
    except Exception:  # noqa: BLE001 - the slot is over either way; then the fault goes to the watchdog
        schedule(state, state.clock.now(), job.deadline, job.count_late)
        guarded(state, view, job.future.result)
        return
    schedule(state, end, job.deadline, job.count_late)
    finish_tick(state, view, job.action, frame, job.t0, t1)


def finish_tick(state: PlayState, view: Any, action: Action, frame: np.ndarray, t0: float, t1: float) -> None:
    """The main thread's part of a tick whose input was polled at t0 and whose step ended at t1."""
    t_up = time.perf_counter()
    if view is not None:
        view.upload(frame)
    if state.recorder is not None:
        state.recorder.add(frame, action)
    t2 = time.perf_counter()
    state.action, state.frame = action, frame
    remember(state, action)
    s = state.stats
    phases = state.backend.phases.last
    s.model.add(phases.get("model_gpu", phases.get("model", phases.get("game", t1 - t0))))
    s.tick.add((t1 - t0) + (t2 - t_up))    # polling, step and upload; not the wait to notice the step ended
    if state.last_tick is not None:
        s.interval.add(t0 - state.last_tick, s.ticks)
    state.last_tick = t0
    if view is not None:
        state.unpresented.append(t0)      # latency is measured at the flip that shows this tick
    s.ticks += 1


def remember(state: PlayState, action: Action) -> None:
    """Keep the actions a recording's trace needs: the last `history_cap` ticks (trimmed in batches)."""
    state.actions.extend(action.to_list())
    cap = state.history_cap * len(FIELDS)
    if len(state.actions) > cap + cap // 4:
        cut = len(state.actions) - cap
        del state.actions[:cut]
        state.dropped += cut // len(FIELDS)


def present(state: PlayState, window: Any) -> None:
    now = state.clock.now()
    if state.show_hud and now >= state.hud_due:
        update_hud(state, window.view)
        state.hud_due = now + 1.0 / state.cfg.hud.refresh_hz
    if not window.present():
        state.unpresented.clear()
        return
    t = time.perf_counter()
    for polled in state.unpresented:
        state.stats.latency.add(t - polled, state.stats.ticks)
    state.unpresented.clear()
    if state.last_present is not None:
        state.stats.frame.add(t - state.last_present, state.stats.ticks)
    state.last_present = t
    state.stats.frames += 1


def update_hud(state: PlayState, view: Any) -> None:
    if state.fonts is None:
        state.fonts = Fonts(state.cfg.hud.font_size)
    if state.clock.now() > state.message_until:
        state.message = ""
    flags = HudFlags(paused=state.paused, message=state.message, devices=state.input.describe(),
                     recording=state.recorder.seconds if state.recorder else None, budget=1.0 / state.cfg.tick_hz,
                     watchdog=state.kiosk.faults if state.kiosk is not None else 0)
    # While a step runs on the worker the backend is busy: show its status from before the step.
    status = state.status if state.inflight is not None and state.status is not None else state.backend.status()
    surf = render_hud(state.fonts, state.stats, status, state.action, flags)
    view.set_overlay("hud", *surface_rgba(surf))


# ----------------------------------------------------------------------------------------------------
# Input and commands
# ----------------------------------------------------------------------------------------------------

def poll(state: PlayState, window: Any) -> None:
    for event in window.events():
        if state.kiosk is not None and not state.kiosk.on_event(state, window.view, event):
            continue
        if event.type == pygame.QUIT:
            state.running = False
            continue
        command = state.input.handle(event)
        if command is not None:
            apply_command(state, window, command)


def apply_command(state: PlayState, window: Any, command: str) -> None:
    view = window.view if window is not None else None
    b = state.backend
    if state.kiosk is not None and not state.kiosk.allows(command):
        return
    if command in BACKEND_COMMANDS:
        settle(state, view)               # these touch the backend: the in-flight step ends first
    if command == "quit":
        state.running = False
    elif command == "help":
        state.show_help = not state.show_help
        if state.fonts is None:
            state.fonts = Fonts(state.cfg.hud.font_size)
        if state.show_help:
            view.set_overlay("help", *surface_rgba(render_help(state.fonts, state.bindings)))
        else:
            view.set_overlay("help", None)
    elif command == "hud":
        state.show_hud = not state.show_hud
        state.hud_due = 0.0
        if not state.show_hud:
            view.set_overlay("hud", None)
    elif command == "pause":
        state.paused = not state.paused
        state.say("paused (single step: " + "/".join(state.bindings.controls.single_step) + ")" if state.paused else "resumed")
    elif command == "single_step":
        if state.paused:
            state.step_once = True
        else:
            state.say("single step works while paused")
    elif command == "reset":
        reset(state, view)
        state.say(f"reset to seed {state.seed}")
    elif command in ("steps_1", "steps_2", "teacher"):
        state.say(b.set_mode({"steps_1": "1", "steps_2": "2", "teacher": "teacher"}[command]))
    elif command == "savestate":
        try:
            state.savestate = b.snapshot()
            state.say("state saved")
        except Unsupported as e:
            state.say(str(e))
    elif command == "restore":
        restore(state, view)
    elif command == "screenshot":
        path = resolve(state.cfg.record.screenshot_dir) / time.strftime("dreamloop-%Y%m%d-%H%M%S.png")
        state.say(f"screenshot: {window.screenshot(path)}")
    elif command == "record":
        toggle_recording(state)
    elif command == "fullscreen":
        state.say(window.toggle_fullscreen())
    elif command == "filter":
        view.sharp = not view.sharp
        state.say("scaling: " + ("sharp-bilinear" if view.sharp else "nearest"))
    elif command == "mouse_turn":
        state.input.mouse_turn = not state.input.mouse_turn
        window.grab_mouse(state.input.mouse_turn)
        state.say("mouse turning " + ("on" if state.input.mouse_turn else "off"))


def restore(state: PlayState, view: Any) -> None:
    if state.savestate is None:
        state.say("no savestate yet (save with " + "/".join(state.bindings.controls.savestate) + ")")
        return
    try:
        state.frame = state.backend.restore(state.savestate)
    except Unsupported as e:
        state.say(str(e))
        return
    if view is not None:
        view.upload(state.frame)
    state.say("state restored")


def toggle_recording(state: PlayState) -> None:
    if state.recorder is not None:
        stop_recording(state)
        return
    past = np.frombuffer(state.actions, np.float64).reshape(-1, len(FIELDS)).tolist()
    extra = {"backend": state.backend.status().name, "video_start": len(past)}
    if state.dropped:   # longer than record.history_s since the reset: the trace cannot replay from the seed
        extra["dropped_ticks"] = state.dropped
    header = Trace(seed=state.seed, actions=[], world=state.cfg.game.world, context=state.context, extra=extra)
    state.recorder = Recorder(resolve(state.cfg.record.dir), header, (Action(*r[:3], int(r[3]), int(r[4])) for r in past),
                              fps=state.cfg.tick_hz, crf=state.cfg.record.crf)
    state.say(f"recording to {state.recorder.video_path}" + (
        f" (the trace lacks the first {state.dropped} ticks since the reset: reset first for a replayable trace)"
        if state.dropped else ""))


def stop_recording(state: PlayState) -> None:
    if state.recorder is None:
        return
    video, trace = state.recorder.close()
    state.recorder = None
    state.say(f"saved {video.name} and {trace.name}")
