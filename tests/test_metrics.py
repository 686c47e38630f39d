"""world_model.metrics on synthetic and real game frames: known answers, signs and edge cases."""
import math

import numpy as np
import pytest
import torch

from world_model import metrics as M
from world_model.actions import Action
from world_model.game import Game


def texture(seed: int = 0, h: int = 120, w: int = 160) -> np.ndarray:
    """A smooth random colour texture (no periodicity, so shifts and zooms are unambiguous)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 3, h // 8, w // 8), generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    x = x + 0.15 * torch.rand((1, 3, h, w), generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def game_frames():
    """A real E1M1 frame and the frames after 3 ticks of turning left / right from the same state."""
    out = {}
    with Game() as g:
        for name, act in (("start", None), ("left", Action(turn=-1)), ("right", Action(turn=1)),
                          ("forward", Action(forward=1)), ("backward", Action(forward=-1))):
            f = g.reset(7)
            for _ in range(6):
                f = g.step(Action(turn=0.3))
            for _ in range(3 if act and act.turn else 8 if act else 0):
                f = g.step(act)
            out[name] = f
    return out


def test_psnr_identical_is_the_cap_and_known_mse():
    a = texture()
    assert M.psnr(a, a).item() == pytest.approx(M.PSNR_CAP)
    b = a.astype(np.int16) + np.where(np.arange(a.size).reshape(a.shape) % 2, 4, -4)
    b = np.clip(b, 0, 255).astype(np.uint8)
    mse = ((a.astype(float) - b) ** 2).mean()
    assert M.psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-3)
    assert M.psnr(np.stack([a, a]), np.stack([a, b])).shape == (2,)


def test_ssim_identical_is_one_and_matches_closed_form_on_flat_images():
    a = texture()
    assert M.ssim(a, a).item() == pytest.approx(1.0, abs=1e-5)
    x, y = np.full((40, 40, 3), 100, np.uint8), np.full((40, 40, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    want = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)      # structure and contrast terms are 1
    assert M.ssim(x, y).item() == pytest.approx(want, abs=1e-4)
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    assert 0.0 < M.ssim(a, noisy).item() < 0.9


@pytest.mark.parametrize("dx", [-17, -5, 0, 3, 12])
def test_shift_is_found_with_its_sign(dx):
    a = texture(1, w=240)
    b = np.roll(a, dx, axis=1)                # content moves right by dx
    crop = slice(40, 200)                      # avoid the wrapped edge
    assert M.estimate_shift(a[:, crop], b[:, crop]).item() == dx


def test_shift_of_a_frozen_or_flat_image_is_zero():
    a = texture(2)
    assert M.estimate_shift(a, a).item() == 0
    flat = np.full_like(a, 90)
    assert M.estimate_shift(flat, flat).item() == 0
    assert M.estimate_zoom(flat, flat).item() == 0


@pytest.mark.parametrize("scale", [0.85, 0.93, 1.08, 1.2])
def test_zoom_direction_and_size(scale):
    a = texture(3)
    b = M.zoom(a, scale).round().clamp(0, 255).to(torch.uint8)
    got = M.estimate_zoom(a, b).item()
    assert math.copysign(1, got) == math.copysign(1, scale - 1)
    assert got == pytest.approx(math.log(scale), abs=0.02)


def test_zoom_with_view_bob_and_a_frozen_image():
    a = texture(4)
    b = M.zoom(a, 1.1, dy=2).round().clamp(0, 255).to(torch.uint8)
    assert M.estimate_zoom(a, b).item() == pytest.approx(math.log(1.1), abs=0.02)
    assert M.estimate_zoom(a, a).item() == 0


def test_real_game_turns_and_walks_have_the_expected_signs(game_frames):
    f = game_frames
    assert M.estimate_shift(f["start"], f["left"]).item() > 8       # turning left pans content right
    assert M.estimate_shift(f["start"], f["right"]).item() < -8
    assert M.estimate_shift(f["left"], f["right"]).item() < -16
    assert M.estimate_zoom(f["backward"], f["forward"], max_log_scale=0.6).item() > 0.05


def test_agreement_rejects_frozen_and_wrong_sign():
    ref = torch.tensor([10.0, -10.0, 10.0, 10.0, 1.0])
    model = torch.tensor([8.0, -3.0, -8.0, 0.0, 1.0])
    scorable, correct = M.agreement(model, ref, min_reference=4, min_model=2)
    assert scorable.tolist() == [True, True, True, True, False]
    assert correct.tolist() == [True, True, False, False, False]   # right sign; right; wrong; frozen; unscored


def test_drift_statistics():
    a = np.stack([texture(i) for i in range(4)])
    assert M.histogram_distance(a, a) == 0.0
    assert M.histogram_distance(np.zeros_like(a), np.full_like(a, 255)) == pytest.approx(1.0)
    assert M.mean_abs_diff(np.stack([a[0], a[0], a[1]])).tolist()[0] == 0.0
    s = M.frame_stats(np.full((2, 4, 4, 3), 10, np.uint8))
    assert s["mean"].tolist() == [10.0, 10.0] and s["std"].tolist() == [0.0, 0.0]
