"""Samplers for one frame: plain functions over a `velocity(x, t, use_action) -> v` callable.

Rectified flow: x_t = (1 - t) x0 + t eps, v = eps - x0, so x0 = x_t - t v (recipe.md 1a).
- Teacher ("euler"): Euler steps of the probability-flow ODE dx/dt = v on a shifted time grid.
- Student ("consistency"): at each time predict x0 = x_t - t v, then re-noise x0 to the next time with fresh
  noise (consistency-model multistep sampling; Causal-rCM 2-step [1, 5/6, 0], 1-step [1, 0]).
The sampler knows nothing about the network, the cache or actions beyond the `use_action` flag, which
lets it form action classifier-free guidance: v = v_null + s (v_action - v_null).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

Velocity = Callable[[Tensor, float, bool], Tensor]  # (x (B, C, h, w), t, use_action) -> v (B, C, h, w)


@dataclass(frozen=True)
class SamplerConfig:
    kind: Literal["euler", "consistency"] = "euler"
    steps: int = field(default=16, metadata={"min": 1, "max": 1000})
    shift: float = field(default=3.0, metadata={"min": 0.01})      # euler: time shift of the uniform grid
    t_mid: float = field(default=5 / 6, metadata={"min": 0.0, "max": 1.0})  # consistency, 2 steps
    cfg_scale: float = 1.0  # action guidance; 1 = plain conditional, 0 = unconditional
    # Noise level at which frames enter the KV cache (0 = clean, the recipe's re-encode at t=0). Above 0 every
    # cached frame is stored as (1 - t) x0 + t eps with time t: the model was trained on noisy context
    # (diffusion forcing), and the noise hides a multi-step sampler's small per-frame errors from later frames.
    context_noise: float = field(default=0.0, metadata={"min": 0.0, "max": 0.5})


def shift_time(u: float, shift: float) -> float:
    """UniformShift: t = s u / (1 + (s - 1) u); s > 1 spends more steps at high noise."""
    return shift * u / (1 + (shift - 1) * u)


def shifted_schedule(steps: int, shift: float) -> list[float]:
    """steps + 1 decreasing times from 1 to 0."""
    return [shift_time(1 - i / steps, shift) for i in range(steps + 1)]


def consistency_schedule(steps: int, t_mid: float = 5 / 6) -> list[float]:
    """[1, 0] for 1 step, [1, t_mid, 0] for 2; more steps use the shift-5 grid, which for 4 steps is the
    recipe's first-chunk schedule [1, 15/16, 5/6, 5/8, 0] (and gives t_mid = 5/6 for 2)."""
    if steps == 1:
        return [1.0, 0.0]
    if steps == 2:
        return [1.0, t_mid, 0.0]
    return shifted_schedule(steps, 5.0)


def schedule_for(cfg: SamplerConfig, steps: int | None = None) -> list[float]:
    steps = cfg.steps if steps is None else steps
    return shifted_schedule(steps, cfg.shift) if cfg.kind == "euler" else consistency_schedule(steps, cfg.t_mid)


def guided_velocity(velocity: Velocity, x: Tensor, t: float, cfg_scale: float) -> Tensor:
    if cfg_scale == 1.0:
        return velocity(x, t, True)
    v_null = velocity(x, t, False)
    if cfg_scale == 0.0:
        return v_null
    return v_null + cfg_scale * (velocity(x, t, True) - v_null)


def check_schedule(schedule: list[float]) -> None:
    if len(schedule) < 2 or schedule[-1] != 0.0 or any(a <= b for a, b in zip(schedule, schedule[1:])):
        raise ValueError(f"schedule must decrease strictly and end at 0, got {schedule}")


def euler_sample(velocity: Velocity, noise: Tensor, schedule: list[float], *, cfg_scale: float = 1.0,
                 grad_last: bool = False) -> Tensor:
    """Integrate dx/dt = v from schedule[0] down to 0. Only the last step can carry gradient."""
    check_schedule(schedule)
    x = noise
    pairs = list(zip(schedule, schedule[1:]))
    for i, (t, t_next) in enumerate(pairs):
        with torch.set_grad_enabled(grad_last and i == len(pairs) - 1):
            x = x + (t_next - t) * guided_velocity(velocity, x, t, cfg_scale)
    return x


def consistency_sample(velocity: Velocity, noise: Tensor, schedule: list[float], *,
                       generator: torch.Generator | None = None, cfg_scale: float = 1.0, grad_last: bool = False,
                       renoise: Sequence[Tensor] | None = None) -> Tensor:
    """x0 = x_t - t v at every time; between times re-noise with fresh noise. Only the last step can carry
    gradient (Self-Forcing: gradient through the final denoising step of each chunk).

    `renoise` (len(schedule) - 2 tensors like `noise`) supplies that fresh noise instead of `generator`:
    a CUDA graph draws nothing inside, so its noise is drawn beforehand (see `renoise_count`)."""
    check_schedule(schedule)
    if (generator is None) == (renoise is None):
        raise ValueError("consistency_sample needs exactly one of generator= and renoise=")
    x = noise
    for i, t in enumerate(schedule[:-1]):
        with torch.set_grad_enabled(grad_last and i == len(schedule) - 2):
            x0 = x - t * guided_velocity(velocity, x, t, cfg_scale)
        t_next = schedule[i + 1]
        if t_next > 0:
            fresh = randn_like(x0, generator) if renoise is None else renoise[i].to(x0.dtype)
            x = (1 - t_next) * x0 + t_next * fresh
    return x0


def randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """Noise drawn on the generator's device (a CPU generator gives the same noise on every device)."""
    return torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)


def renoise_count(cfg: SamplerConfig, schedule: list[float]) -> int:
    """How many fresh noise tensors `sample` draws after the initial noise for this schedule."""
    return 0 if cfg.kind == "euler" else len(schedule) - 2


def sample(velocity: Velocity, noise: Tensor, cfg: SamplerConfig, *, generator: torch.Generator | None = None,
           schedule: list[float] | None = None, steps: int | None = None, grad_last: bool = False,
           renoise: Sequence[Tensor] | None = None) -> Tensor:
    """One frame with the configured sampler; `schedule` (times from high to 0) overrides `steps`.
    Fresh noise comes from `generator`, or pre-drawn from `renoise` (consistency only)."""
    times = schedule if schedule is not None else schedule_for(cfg, steps)
    if cfg.kind == "euler":
        return euler_sample(velocity, noise, times, cfg_scale=cfg.cfg_scale, grad_last=grad_last)
    return consistency_sample(velocity, noise, times, generator=generator, cfg_scale=cfg.cfg_scale,
                              grad_last=grad_last, renoise=renoise)
