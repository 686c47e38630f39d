"""Image metrics for evaluation, on uint8 frames (B, H, W, 3), as torch on the CPU or CUDA.

- `psnr`, `ssim`: per-frame quality against the real game's frame.
- `estimate_shift`, `estimate_zoom`: how the image moved between two frames, for the action-response score.
  Turning pans the Doom view sideways (a horizontal shift); walking forward or backward magnifies or
  shrinks it about the image centre, where the horizon's vanishing point lies (Doom has no pitch).
- `agreement`: does the model's response point the same way as the game's?
- `frame_stats`, `histogram_distance`: drift statistics over long rollouts.

Frames may be numpy arrays or tensors; a single frame (H, W, 3) is treated as a batch of one.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PSNR_CAP = 60.0   # dB for identical frames: finite, so means stay defined; 60 dB is already invisible


def as_frames(x: Any, device: torch.device | str | None = None) -> Tensor:
    """uint8 frames (H, W, 3) or (B, H, W, 3), numpy or torch -> float tensor (B, H, W, 3) in 0..255."""
    t = torch.as_tensor(x, device=device)
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected frames (B, H, W, 3), got {tuple(t.shape)}")
    return t.float()


def gray(frames: Tensor) -> Tensor:
    """(B, H, W, 3) 0..255 -> (B, H, W) luma (ITU-R 601)."""
    return frames @ torch.tensor([0.299, 0.587, 0.114], device=frames.device)


# ---------------------------------------------------------------------------------------------------------
#                                          PSNR and SSIM
# ---------------------------------------------------------------------------------------------------------

def psnr(a: Any, b: Any, cap: float = PSNR_CAP) -> Tensor:
    """Per-frame PSNR in dB of uint8 frames (B, H, W, 3) -> (B,), at most `cap` (identical frames)."""
    x, y = as_frames(a), as_frames(b, device=torch.as_tensor(a).device)
    mse = (x - y).pow(2).flatten(1).mean(1)                                 # (B,)
    floor = 255.0**2 / 10 ** (cap / 10)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(floor))


def _gaussian_window(size: int = 11, sigma: float = 1.5, device: Any = None) -> Tensor:
    g = torch.exp(-((torch.arange(size, device=device) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None].expand(3, 1, size, size)  # (3, 1, k, k), one per channel


def ssim(a: Any, b: Any) -> Tensor:
    """Per-frame SSIM (Wang et al. 2004) of uint8 frames (B, H, W, 3) -> (B,).

    11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, per RGB channel then averaged, over
    the valid region only (like scikit-image with gaussian_weights=True, which crops the border)."""
    x = as_frames(a).permute(0, 3, 1, 2)                                    # (B, 3, H, W)
    y = as_frames(b, device=x.device).permute(0, 3, 1, 2)
    w = _gaussian_window(device=x.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=3)                                     # (B, 3, H-10, W-10)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------------------
#                                    Motion: shift and zoom
# ---------------------------------------------------------------------------------------------------------

# The weapon sprite sits fixed at the bottom centre of every frame and bobs while walking; it would pull
# both estimates towards "no motion". Only rows above this fraction of the height are compared.
WEAPON_FREE_ROWS = 0.6


def _centred(t: Tensor) -> Tensor:
    return t - t.mean((1, 2), keepdim=True)


def estimate_shift(a: Any, b: Any, max_shift: int = 40, max_dy: int = 3, rows: float = WEAPON_FREE_ROWS) -> Tensor:
    """Horizontal shift in pixels (B,) that best maps frames a onto frames b: b(x) ~ a(x - dx).

    Positive dx: the content moved right (what turning left does). Exhaustive search over integer
    (dx, |dy| <= max_dy) on grayscale; the dy search absorbs Doom's view bob. The compared window is a
    fixed part of b (columns away from the edges by max_shift, rows above the weapon), so every candidate
    is scored on the same pixels; windows have their mean removed, so a brightness change does not bias it."""
    x, y = gray(as_frames(a)), gray(as_frames(b, device=torch.as_tensor(a).device))  # (B, H, W)
    B, H, W = x.shape
    h, w = int(H * rows) - 2 * max_dy, W - 2 * max_shift
    if w < 8 or h < 8:
        raise ValueError(f"max_shift {max_shift} / max_dy {max_dy} leave no window in a {W}x{H} frame")
    target = _centred(y[:, max_dy:max_dy + h, max_shift:max_shift + w])             # (B, h, w)
    best = torch.full((B,), float("inf"), device=x.device)
    best_dx = torch.zeros(B, device=x.device)
    for dx in sorted(range(-max_shift, max_shift + 1), key=abs):                   # no motion first
        for dy in sorted(range(-max_dy, max_dy + 1), key=abs):
            src = x[:, max_dy - dy:max_dy - dy + h, max_shift - dx:max_shift - dx + w]
            err = (_centred(src) - target).abs().mean((1, 2))                      # (B,)
            better = err < best - 1e-6                                              # ties keep less motion
            best = torch.where(better, err, best)
            best_dx = torch.where(better, torch.full_like(best_dx, dx), best_dx)
    return best_dx


def zoom(frames: Any, scale: float, dy: float = 0.0) -> Tensor:
    """Magnify frames (B, H, W, 3) by `scale` about the image centre (and move them down by dy pixels):
    out(p) = in(c + (p - c) / scale - dy). Returns float 0..255 (B, H, W, 3)."""
    x = as_frames(frames).permute(0, 3, 1, 2)                               # (B, 3, H, W)
    B, _, H, W = x.shape
    theta = torch.tensor([[1 / scale, 0, 0], [0, 1 / scale, -2 * dy / H]], device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta.expand(B, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).permute(0, 2, 3, 1)


def estimate_zoom(a: Any, b: Any, max_log_scale: float = 0.3, num: int = 25, max_dy: int = 3,
                  rows: float = WEAPON_FREE_ROWS) -> Tensor:
    """Log scale factor (B,) that best maps frames a onto frames b by magnifying about the image centre.

    Positive: b is a magnified a (what walking forward does); negative: shrunk (walking backward). Search
    over `num` log scales on each side of 0 up to max_log_scale, and integer vertical offsets |dy| <=
    max_dy (view bob), comparing a fixed window of b: the middle half of the columns, rows from H/8 to
    above the weapon. Smallest |log scale| first, so ties (flat or frozen images) give 0."""
    x = gray(as_frames(a))[:, None]                                         # (B, 1, H, W)
    y = gray(as_frames(b, device=x.device))                                 # (B, H, W)
    B, _, H, W = x.shape
    top, bottom, left, right = H // 8, int(H * rows), W // 4, W - W // 4
    target = _centred(y[:, top:bottom, left:right])                         # (B, h, w)
    # Normalised coordinates (align_corners=False) of the window's pixel centres, with max_dy extra rows
    # above and below: each scale is sampled once and every dy is a slice of it.
    u = (2 * (torch.arange(left, right, device=x.device) + 0.5) / W - 1)[None, :]                   # (1, w)
    v = (2 * (torch.arange(top - max_dy, bottom + max_dy, device=x.device) + 0.5) / H - 1)[:, None]  # (h+2d, 1)
    u, v = torch.broadcast_tensors(u, v)                                                           # (h+2d, w)
    h = bottom - top
    best = torch.full((B,), float("inf"), device=x.device)
    best_log = torch.zeros(B, device=x.device)
    for i in sorted(range(-num, num + 1), key=abs):                        # no motion first
        log_s = max_log_scale * i / num
        s = math.exp(log_s)
        grid = torch.stack([u / s, v / s], -1)[None].expand(B, -1, -1, 2)                          # (B, h+2d, w, 2)
        tall = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
        for dy in sorted(range(-max_dy, max_dy + 1), key=abs):
            src = tall[:, max_dy - dy:max_dy - dy + h]        # in(c + (p - dy - c) / s): moved down by dy
            err = (_centred(src) - target).abs().mean((1, 2))                          # (B,)
            better = err < best - 1e-6                                                  # ties keep less motion
            best = torch.where(better, err, best)
            best_log = torch.where(better, torch.full_like(best_log, log_s), best_log)
    return best_log


def agreement(model: Tensor, reference: Tensor, *, min_reference: float, min_model: float,
              rel: float = 0.25) -> tuple[Tensor, Tensor]:
    """Score responses (B,) of the model against the game's (B,): returns (scorable, correct) bool masks.

    A pair is scorable when the game's response is clearly non-zero (|reference| >= min_reference). It
    is correct when the model's response has the same sign and is not negligible: |model| >= min_model and
    >= rel * |reference|. So a frozen model (response 0) is never correct, and a model moving at random
    scores about 50%."""
    scorable = reference.abs() >= min_reference
    big = (model.abs() >= min_model) & (model.abs() >= rel * reference.abs())
    correct = scorable & big & (torch.sign(model) == torch.sign(reference))
    return scorable, correct


# ---------------------------------------------------------------------------------------------------------
#                                          Drift statistics
# ---------------------------------------------------------------------------------------------------------

def frame_stats(frames: Any) -> dict[str, Tensor]:
    """Per frame (B,): mean and std of all pixel values (0..255)."""
    x = as_frames(frames).flatten(1)
    return {"mean": x.mean(1), "std": x.std(1)}


def histogram(frames: Any, bins: int = 32) -> Tensor:
    """Normalised per-channel histogram (3, bins) of all pixels of frames (B, H, W, 3)."""
    x = as_frames(frames).long().clamp(0, 255) * bins // 256                # (B, H, W, 3) bin index
    counts = torch.stack([torch.bincount(x[..., c].flatten(), minlength=bins) for c in range(3)]).float()
    return counts / counts.sum(1, keepdim=True)


def histogram_distance(a: Any, b: Any, bins: int = 32) -> float:
    """Total-variation distance between per-channel pixel histograms, averaged over channels: 0 (same
    distribution) .. 1 (disjoint)."""
    return float(0.5 * (histogram(a, bins) - histogram(b, bins)).abs().sum(1).mean())


def mean_abs_diff(frames: Any) -> Tensor:
    """Mean absolute difference (B-1,) between consecutive frames of a sequence (B, H, W, 3), 0..255."""
    x = as_frames(frames)
    return (x[1:] - x[:-1]).abs().flatten(1).mean(1)


def mean_over(values: Sequence[float]) -> float:
    """Mean of a list; NaN when empty (so a missing measurement is visible, not zero)."""
    return float(sum(values) / len(values)) if len(values) else float("nan")
