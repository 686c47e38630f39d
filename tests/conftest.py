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


def on_meta(session, model, autoencoder=None):
    """Move a GraphedSession (capture=False) onto the meta device, where any .item(), bool(tensor) or
    data-dependent shape raises: what CUDA-graph capture forbids. Returns (session, noise list, action)."""
    import copy

    import torch

    from world_model.kv_cache import KVCache

    session.model = copy.deepcopy(model).to("meta")
    if autoencoder is not None:
        session.autoencoder = copy.deepcopy(autoencoder).to("meta")
    session.device = torch.device("meta")
    session.cache = session.model.new_cache(batch=1, sink=1, window=3, device="meta", dtype=torch.float32)
    assert isinstance(session.cache, KVCache)
    C, h, w = model.config.latent_shape
    noise = [torch.empty(1, C, h, w, device="meta") for _ in range(2)]
    return session, noise, torch.empty(1, 5, device="meta")
