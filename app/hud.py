"""HUD and help overlays, drawn with pygame.font into RGBA surfaces (re-rendered at a low rate).

`render_hud(...)` and `render_help(...)` return pygame Surfaces with alpha; the window uploads them as
textures (`View.set_overlay`). The simulation never formats display text: everything shown here is
read from `Stats`, `BackendStatus`, the live `Action` and a few flags.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pygame

from input.bindings import COMMAND_HELP, Bindings
from world_model.actions import Action

from .backends import BackendStatus
from .timing import Rolling, Stats

FG = (235, 235, 235)
DIM = (160, 160, 160)
WARN = (255, 200, 60)
BAD = (255, 90, 80)
GOOD = (110, 220, 120)
BG = (0, 0, 0, 150)
PANEL_W = 440


@dataclass
class HudFlags:
    paused: bool = False
    recording: float | None = None   # seconds recorded, None when not recording
    message: str = ""
    devices: str = "keyboard"
    budget: float = 1 / 35           # seconds per tick
    watchdog: int = 0                # backend faults the kiosk watchdog recovered from (reset and went on)


class Fonts:
    """pygame's bundled default font (no system fonts needed)."""

    def __init__(self, size: int):
        if not pygame.font.get_init():
            pygame.font.init()
        self.font = pygame.font.Font(None, size + 4)   # the default font runs small for its size
        self.line = self.font.get_linesize()


def _ms(v: float) -> str:
    return "  -  " if math.isnan(v) else f"{v * 1000:5.1f}"


def _sparkline(surf: pygame.Surface, rect: pygame.Rect, r: Rolling, budget: float) -> None:
    """Model time per tick, newest at the right; the dashed line is the tick budget."""
    pygame.draw.rect(surf, (40, 40, 40, 200), rect)
    vals = list(r.values)[-rect.width:]
    top = max(budget * 1.5, max(vals, default=0.0))
    y_of = lambda v: rect.bottom - 1 - int((rect.height - 2) * min(v, top) / top)  # noqa: E731
    for i, v in enumerate(vals):
        x = rect.right - len(vals) + i
        pygame.draw.line(surf, BAD if v > budget else GOOD, (x, rect.bottom - 1), (x, y_of(v)))
    yb = y_of(budget)
    for x in range(rect.left, rect.right, 6):
        pygame.draw.line(surf, WARN, (x, yb), (min(x + 3, rect.right - 1), yb))


def _cache_slots(surf: pygame.Surface, x: int, y: int, cache: dict) -> int:
    """One box per cache slot: sink slots blue, window slots grey/filled green, the newest outlined white."""
    sink, window = cache["sink_capacity"], cache["window_capacity"]
    n = sink + window
    box = max(3, min(10, (PANEL_W - 16) // max(n, 1) - 1))
    per_row = max(1, (PANEL_W - 16) // (box + 1))
    for s in range(n):
        bx, by = x + (s % per_row) * (box + 1), y + (s // per_row) * (box + 1)
        if s < sink:
            color = (90, 140, 255) if s < cache["sink_frames"] else (50, 60, 90)
        else:
            color = GOOD if s - sink < cache["window_frames"] else (70, 70, 70)
        pygame.draw.rect(surf, color, (bx, by, box, box))
        if s == cache["newest_slot"]:
            pygame.draw.rect(surf, (255, 255, 255), (bx - 1, by - 1, box + 2, box + 2), 1)
    return ((n - 1) // per_row + 1) * (box + 1)


def _axis_bar(surf: pygame.Surface, rect: pygame.Rect, v: float) -> None:
    pygame.draw.rect(surf, (60, 60, 60), rect)
    mid = rect.centerx
    w = int(v * rect.width / 2)
    pygame.draw.rect(surf, GOOD, (min(mid, mid + w), rect.top, abs(w), rect.height))
    pygame.draw.line(surf, FG, (mid, rect.top), (mid, rect.bottom - 1))


def _cache_dict(cache: object) -> dict | None:
    if cache is None:
        return None
    return dataclasses.asdict(cache) if dataclasses.is_dataclass(cache) else dict(cache)


def render_hud(fonts: Fonts, stats: Stats, status: BackendStatus, action: Action, flags: HudFlags) -> pygame.Surface:
    lh = fonts.line
    surf = pygame.Surface((PANEL_W, lh * 12 + 80), pygame.SRCALPHA)
    surf.fill(BG)
    y = 4

    def text(s: str, color=FG, x: int = 8) -> int:
        img = fonts.font.render(s, True, color)
        surf.blit(img, (x, y))
        return img.get_width()

    w = text(f"{status.name}   {status.device}", WARN if "no GPU" in status.device else FG)
    tags = ("  PAUSED" if flags.paused else "") + (f"  REC {flags.recording:4.0f}s" if flags.recording is not None else "")
    if tags:
        text(tags, BAD, x=8 + w)
    y += lh
    late_color = BAD if stats.late else FG
    text(f"display {Stats.rate(stats.frame):5.1f} fps   tick {Stats.rate(stats.interval):5.1f} Hz   "
         f"late {stats.late} / {stats.ticks}", late_color)
    y += lh
    text(f"model/tick p50 {_ms(stats.model.pct(50))} ms  p99 {_ms(stats.model.pct(99))} ms")
    y += lh
    _sparkline(surf, pygame.Rect(8, y, PANEL_W - 16, 26), stats.model, flags.budget)
    y += 30
    steps = "-" if status.steps is None else str(status.steps)
    text(f"input->present p50 {_ms(stats.latency.pct(50))} ms  p99 {_ms(stats.latency.pct(99))} ms   "
         f"steps/frame {steps}")
    y += lh
    cache = _cache_dict(status.cache)
    if cache is not None:
        text(f"KV sink {cache['sink_frames']}/{cache['sink_capacity']}  window {cache['window_frames']}/"
             f"{cache['window_capacity']}  evicted {cache['evictions']}  {cache['bytes'] / 2**20:.1f} MiB  "
             f"pos {cache['position']}")
        y += lh
        y += _cache_slots(surf, 8, y, cache) + 4
    else:
        text("KV cache: none (real game)", DIM)
        y += lh
    text(f"action fwd {action.forward:+.2f}  strafe {action.strafe:+.2f}  turn {action.turn:+.2f}")
    y += lh
    for i, v in enumerate((action.forward, action.strafe, action.turn)):
        _axis_bar(surf, pygame.Rect(8 + i * 90, y + 2, 80, 8), v)
    for i, (name, on) in enumerate((("ATTACK", action.attack), ("USE", action.use))):
        img = fonts.font.render(name, True, BAD if on else DIM)
        surf.blit(img, (290 + i * 80, y - 2))
    y += 16
    faults = f"faults {status.faults}" + (f"  watchdog {flags.watchdog}" if flags.watchdog else "")
    text(f"input {flags.devices}   {faults}", BAD if flags.watchdog or status.faults else DIM)
    y += lh
    if flags.message:
        text(flags.message[:90], WARN)
        y += lh
    return surf.subsurface((0, 0, PANEL_W, y + 4)).copy()


def _keys(names: list[str]) -> str:
    return " / ".join(n.upper() if len(n) <= 3 else n for n in names)


def render_help(fonts: Fonts, bindings: Bindings) -> pygame.Surface:
    kb, ctl, gp = bindings.keyboard, bindings.controls, bindings.gamepad
    rows = [("MOVE", ""),
            (f"{_keys(kb.forward)} / {_keys(kb.backward)}", "forward / back"),
            (f"{_keys(kb.strafe_left)} / {_keys(kb.strafe_right)}", "strafe"),
            (f"{_keys(kb.turn_left)} / {_keys(kb.turn_right)}", "turn"),
            (f"{_keys(kb.attack)}, mouse {bindings.mouse.attack}", "attack"),
            (f"{_keys(kb.use)}, mouse {bindings.mouse.use}", "use"),
            (f"pad {gp.forward}/{gp.strafe}, {gp.turn}", "move / strafe, turn"),
            (f"pad {', '.join(gp.attack)}; {', '.join(gp.use)}", "attack; use"),
            (f"pad {', '.join(ctl.pad_pause)}; {', '.join(ctl.pad_reset)}", "pause; reset"),
            ("CONTROLS", "")]
    rows += [(_keys(getattr(ctl, name)), desc) for name, desc in COMMAND_HELP.items()]
    lh = fonts.line
    surf = pygame.Surface((560, lh * (len(rows) + 1) + 8), pygame.SRCALPHA)
    surf.fill((0, 0, 0, 200))
    for i, (keys, desc) in enumerate(rows):
        y = 6 + i * lh
        if not desc:
            surf.blit(fonts.font.render(keys, True, WARN), (10, y))
            continue
        surf.blit(fonts.font.render(keys, True, FG), (20, y))
        surf.blit(fonts.font.render(desc, True, DIM), (300, y))
    return surf


def render_banner(fonts: Fonts, text: str) -> pygame.Surface:
    """One line on a dark band, drawn centred (the kiosk's "press any key" while the attract loop runs)."""
    img = fonts.font.render(text, True, WARN)
    surf = pygame.Surface((img.get_width() + 32, img.get_height() + 16), pygame.SRCALPHA)
    surf.fill((0, 0, 0, 170))
    surf.blit(img, (16, 8))
    return surf


def surface_rgba(surf: pygame.Surface) -> tuple[bytes, tuple[int, int]]:
    """Surface -> (RGBA bytes top row first, size) for View.set_overlay."""
    return pygame.image.tobytes(surf, "RGBA", False), surf.get_size()
