"""The window: pygame (SDL2) with an OpenGL 3.3 core context driven by moderngl.

Owns every pygame display and GL object. Resizing, minimizing and fullscreen are handled here; the loop
only calls `events()`, `present()` and the few toggles.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import moderngl
import numpy as np
import pygame

from .config import NoDisplay, WindowConfig
from .view import View

HEADLESS_HINT = "python main.py play --headless --ticks 350"


def display_available() -> bool:
    """False on Linux with neither X11 nor Wayland (and no SDL driver chosen by the user)."""
    if os.environ.get("SDL_VIDEODRIVER") or not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def minimized_after(event: pygame.event.Event, minimized: bool) -> bool:
    """Whether the window is minimized after `event` (SDL2 window events, or pygame 1's ACTIVEEVENT)."""
    if event.type in (pygame.WINDOWMINIMIZED, pygame.WINDOWHIDDEN):
        return True
    if event.type in (pygame.WINDOWRESTORED, pygame.WINDOWSHOWN, pygame.WINDOWMAXIMIZED, pygame.WINDOWEXPOSED):
        return False
    if event.type == pygame.ACTIVEEVENT and getattr(event, "state", 0) & pygame.APPACTIVE:
        return not getattr(event, "gain", 1)
    return minimized


class Window:
    def __init__(self, cfg: WindowConfig, title: str = "Dreamloop"):
        if not display_available():
            raise NoDisplay(f"no display found (DISPLAY and WAYLAND_DISPLAY are unset); run headless: {HEADLESS_HINT}")
        pygame.display.init()
        pygame.font.init()
        pygame.joystick.init()
        try:
            from pygame._sdl2 import controller
            controller.init()       # pads present now arrive as CONTROLLERDEVICEADDED events
        except (ImportError, pygame.error):
            pass
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MAJOR_VERSION, 3)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_MINOR_VERSION, 3)
        pygame.display.gl_set_attribute(pygame.GL_CONTEXT_PROFILE_MASK, pygame.GL_CONTEXT_PROFILE_CORE)
        self.cfg = cfg
        self.fullscreen = cfg.fullscreen
        flags = pygame.OPENGL | pygame.DOUBLEBUF | pygame.RESIZABLE | (pygame.FULLSCREEN if cfg.fullscreen else 0)
        try:
            try:
                pygame.display.set_mode((cfg.width, cfg.height), flags, vsync=int(cfg.vsync))
            except pygame.error:
                pygame.display.set_mode((cfg.width, cfg.height), flags)   # the driver may refuse vsync
            self.ctx = moderngl.create_context()
        except (pygame.error, Exception) as e:
            raise NoDisplay(f"cannot open an OpenGL window ({str(e).splitlines()[0]}); run headless: {HEADLESS_HINT}") from None
        pygame.display.set_caption(title)
        self.view = View(self.ctx, sharp=cfg.filter == "sharp")
        self.minimized = False
        self.driver = pygame.display.get_driver()

    @property
    def size(self) -> tuple[int, int]:
        w, h = pygame.display.get_window_size()
        return max(w, 1), max(h, 1)

    def events(self) -> list[pygame.event.Event]:
        """All pending events; window-state events are also applied here."""
        events = pygame.event.get()
        for e in events:
            self.minimized = minimized_after(e, self.minimized)
        return events

    def present(self) -> bool:
        """Draw the latest frame and overlays, then flip. Nothing is drawn while minimized."""
        if self.minimized:
            return False
        self.view.draw(self.size)
        pygame.display.flip()
        return True

    def toggle_fullscreen(self) -> str:
        try:
            pygame.display.toggle_fullscreen()
        except pygame.error as e:
            return f"fullscreen not available here ({e})"
        self.fullscreen = not self.fullscreen
        return "fullscreen" if self.fullscreen else "windowed"

    def grab_mouse(self, on: bool) -> None:
        pygame.event.set_grab(on)
        pygame.mouse.set_visible(not on)

    def read(self) -> np.ndarray:
        """The window's current back buffer as (H, W, 3) uint8 (call right after drawing)."""
        return self.view.read(self.size)

    def screenshot(self, path: Path) -> Path:
        self.view.draw(self.size)
        img = self.read()
        path.parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(pygame.image.frombuffer(img.tobytes(), (img.shape[1], img.shape[0]), "RGB"), str(path))
        return path

    def close(self) -> None:
        self.ctx.release()
        pygame.display.quit()
