"""Kiosk (demo-booth) mode: the player, unattended.

    python main.py kiosk [--settings settings/kiosk.yaml] [--headless --ticks N]

- Attract loop: while nobody plays, a recorded trace (assets/traces/attract.jsonl) is replayed on the
  backend, over and over, with a "press any key" banner.
- Idle reset: any key, mouse button or stick push ends the attract loop and starts play from the next
  curated seed; `idle_s` seconds without input go back to the attract loop.
- Locked settings: only the commands in `allowed` work (no step or model switching, savestates,
  recording, fullscreen toggles, quit). The window's close button is ignored; the one way out is the
  admin chord (all of its keys held at once), or a signal to the process.
- Watchdog: an exception from a tick (the backend's step, a CUDA error, ...) is logged and counted on
  the HUD, the backend is reset to the current seed and the booth goes on. A reset that fails too is
  retried every `retry_s` seconds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import pygame

from input.bindings import COMMAND_HELP, key_code
from settings import load
from world_model.actions import NOOP, Action
from world_model.trace import Trace

from .config import PlayConfig
from .hud import Fonts, render_banner, surface_rgba
from .loop import PlayState, reset

log = logging.getLogger(__name__)
BANNER = "DEMO  -  press any key or button to play"


@dataclass(frozen=True)
class KioskConfig:
    player: PlayConfig = field(default_factory=PlayConfig)     # the player's settings, as in settings/play.yaml
    attract_trace: str = "assets/traces/attract.jsonl"        # replayed while idle (repo-relative or absolute)
    idle_s: float = field(default=45.0, metadata={"min": 1.0, "max": 86400.0})   # no input this long -> attract
    seeds: list[int] = field(default_factory=lambda: [20000])  # curated seeds, cycled at each new play
    admin_chord: list[str] = field(default_factory=lambda: ["left ctrl", "left shift", "q"])  # held together: quit
    allowed: list[str] = field(default_factory=lambda: ["help", "hud", "reset", "pause", "single_step"])
    retry_s: float = field(default=2.0, metadata={"min": 0.0, "max": 600.0})      # watchdog: wait between resets

    def __post_init__(self) -> None:
        if not self.seeds or any(not 0 <= s <= 2**31 - 1 for s in self.seeds):
            raise ValueError(f"seeds: need at least one seed in [0, 2**31 - 1], got {self.seeds}")
        if not self.admin_chord:
            raise ValueError("admin_chord: needs at least one key (it is the only way to quit)")
        for k in self.admin_chord:
            key_code(k)
        unknown = [c for c in self.allowed if c not in COMMAND_HELP]
        if unknown:
            raise ValueError(f"allowed: unknown commands {unknown} (known: {', '.join(COMMAND_HELP)})")


def load_kiosk(path: Any) -> KioskConfig:
    """settings/kiosk.yaml -> KioskConfig; errors are SettingsError naming file, key and value."""
    return load(path, KioskConfig)


def is_activity(event: pygame.event.Event, deadzone: float) -> bool:
    """Input that means someone is playing: a key, a mouse or pad button, a stick pushed past the deadzone."""
    if event.type in (pygame.KEYDOWN, pygame.MOUSEBUTTONDOWN, pygame.CONTROLLERBUTTONDOWN):
        return True
    return event.type == pygame.CONTROLLERAXISMOTION and abs(event.value) / 32767.0 > max(deadzone, 0.3)


class Kiosk:
    """The booth's controller; the loop calls on_event, update, ready, action and fault (app/loop.py)."""

    def __init__(self, cfg: KioskConfig, attract: Trace, *, now: float):
        self.cfg, self.attract = cfg, attract
        self.chord = {key_code(k) for k in cfg.admin_chord}
        self.held: set[int] = set()
        self.mode = "attract"           # "attract" | "play"
        self.last_input = now
        self.plays = 0                  # games started (picks the next curated seed)
        self.loops = 0                  # attract trace replays started
        self.faults = 0                 # watchdog recoveries (HUD)
        self.retry_at: float | None = None   # set while the backend is down, waiting to retry its reset
        self.script: Iterator[Action] = iter(())

    # -- the loop's hooks ----------------------------------------------------------------------------
    def on_event(self, state: PlayState, view: Any, event: pygame.event.Event) -> bool:
        """Watch every event first; False swallows it (window close, the admin chord)."""
        if event.type == pygame.QUIT:
            return False                # visitors cannot close the booth
        if event.type == pygame.KEYDOWN:
            self.held.add(event.key)
            if self.chord <= self.held:
                log.warning("kiosk: admin chord, quitting")
                state.running = False
                return False
        elif event.type == pygame.KEYUP:
            self.held.discard(event.key)
        elif event.type in (pygame.WINDOWFOCUSLOST, pygame.ACTIVEEVENT) and not getattr(event, "gain", 0):
            self.held.clear()
        if is_activity(event, state.bindings.gamepad.deadzone):
            self.last_input = state.clock.now()
            if self.mode == "attract":
                self.start_play(state, view)
                return not state.input.is_command(event)   # the key that wakes the booth only starts a game
        return True

    def allows(self, command: str) -> bool:
        return command in self.cfg.allowed

    def update(self, state: PlayState, view: Any) -> None:
        now = state.clock.now()
        if self.retry_at is not None:
            if now >= self.retry_at:
                self._recover(state, view)
            return
        if self.mode == "play" and now - self.last_input >= self.cfg.idle_s:
            log.info("kiosk: idle for %.0f s, back to the attract loop", now - self.last_input)
            self.start_attract(state, view)

    def ready(self, now: float) -> bool:
        """False while the backend is down (the watchdog waits to retry)."""
        return self.retry_at is None

    def action(self, state: PlayState, view: Any) -> Action:
        if self.mode == "play":
            action = state.input.action()
            if action != NOOP:          # a held key sends no events, but it is still someone playing
                self.last_input = state.clock.now()
            return action
        action = next(self.script, None)
        if action is None:              # the trace ended: replay it from the start
            self.start_attract(state, view)
            action = next(self.script, NOOP)
        return action

    def fault(self, state: PlayState, view: Any, error: BaseException) -> None:
        """A tick raised: count it, reset the backend to the current seed, go on."""
        self.faults += 1
        log.error("kiosk watchdog: tick failed (%s: %s); resetting the backend (fault %d)",
                  type(error).__name__, str(error).splitlines()[0] if str(error) else "", self.faults)
        self._recover(state, view)

    # -- modes ---------------------------------------------------------------------------------------
    def start_attract(self, state: PlayState, view: Any) -> None:
        self.mode = "attract"
        self.loops += 1
        state.paused = False
        state.seed = self.attract.seed
        t = self.attract
        reset(state, view, context=t.actions[: t.context])
        self.script = iter(t.actions[t.context:])
        self._banner(state, view, BANNER)

    def start_play(self, state: PlayState, view: Any) -> None:
        self.mode = "play"
        state.seed = self.cfg.seeds[self.plays % len(self.cfg.seeds)]
        self.plays += 1
        state.paused = False
        reset(state, view)
        self._banner(state, view, None)
        state.say(f"new game (seed {state.seed})")

    def _recover(self, state: PlayState, view: Any) -> None:
        try:
            if self.mode == "attract":
                self.start_attract(state, view)
            else:
                reset(state, view)
        except Exception as e:  # noqa: BLE001 - the booth must outlive any backend failure
            self.retry_at = state.clock.now() + self.cfg.retry_s
            log.error("kiosk watchdog: reset failed (%s: %s); retrying in %.0f s", type(e).__name__,
                      str(e).splitlines()[0] if str(e) else "", self.cfg.retry_s)
            return
        self.retry_at = None
        state.say(f"watchdog: recovered from a fault ({self.faults} so far)")

    def _banner(self, state: PlayState, view: Any, text: str | None) -> None:
        if view is None:
            return
        if text is None:
            view.set_overlay("banner", None)
            return
        if state.fonts is None:
            state.fonts = Fonts(state.cfg.hud.font_size)
        view.set_overlay("banner", *surface_rgba(render_banner(state.fonts, text)))


def run_kiosk(settings_path: Any, *, headless: bool = False, ticks: int | None = None, paced: bool = True) -> Any:
    """Load settings/kiosk.yaml and run the booth until the admin chord (or `ticks`). Returns the loop's Stats."""
    import os

    from world_model import trace as tr

    from .backends import make_backend
    from .config import resolve
    from .loop import new_state, run
    from .window import HEADLESS_HINT, NoDisplay, Window, display_available
    from input.bindings import load_bindings

    # SDL would turn SIGINT/SIGTERM into a window close, which the kiosk ignores; let them stop the process.
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
    cfg = load_kiosk(settings_path)
    player = cfg.player
    attract = tr.load(resolve(cfg.attract_trace), world=player.game.world)
    bindings = load_bindings(resolve(player.bindings))
    if not headless and not display_available():
        raise NoDisplay(f"no display found (DISPLAY and WAYLAND_DISPLAY are unset); "
                        f"run headless: {HEADLESS_HINT.replace('play', 'kiosk')}")
    backend = make_backend(player, player.backend, player.model, player.device)
    window = None
    try:
        window = None if headless else Window(player.window, title="Dreamloop (kiosk)")
        view = window.view if window is not None else None
        state = new_state(player, backend, bindings)
        state.kiosk = Kiosk(cfg, attract, now=state.clock.now())
        state.kiosk.start_attract(state, view)
        status = backend.status()
        print(f"dreamloop kiosk: {status.name} on {status.device}; attract {cfg.attract_trace} "
              f"({len(attract.actions)} ticks), idle {cfg.idle_s:g} s, seeds {cfg.seeds}; "
              f"quit: hold {' + '.join(cfg.admin_chord)}", flush=True)
        stats = run(state, window, max_ticks=ticks, paced=paced)
        print(f"dreamloop kiosk: ticks {stats.ticks}  late {stats.late}  attract loops {state.kiosk.loops}  "
              f"games {state.kiosk.plays}  watchdog {state.kiosk.faults}  faults {backend.status().faults}")
        return stats
    finally:
        backend.close()
        if window is not None:
            window.close()
