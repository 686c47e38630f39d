import os
import sys
from pathlib import Path

# Headless by default: tests never need a screen or a sound card.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def sdl_display():
    """A 64x48 window on SDL's dummy driver, for tests that post and poll pygame events."""
    import pygame

    pygame.display.init()
    pygame.display.set_mode((64, 48))
    yield
    pygame.display.quit()
