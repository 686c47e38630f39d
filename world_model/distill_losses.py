"""Distillation losses (recipe.md 1b) as small callables over WorldModels in the packed teacher-forcing form.

Stage A, TF-dCM (Causal-rCM `_tf_dcm_step`): discrete-time consistency distillation with clean context.
    u ~ U[0, 1 - 1/N];  t0 = shift(1 - u);  t1 = shift(1 - u - 1/N);  x_t0 = (1 - t0) x0 + t0 eps
    student      x_hat  = x_t0 - t0 v_theta([x0 | x_t0], [0 | t0])                  (TF mask)
    no grad      x_t1   = x_t0 - (t0 - t1) CFG(v_teacher([x0 | x_t0], [0 | t0]))     (one teacher Euler step)
                 x_hat- = x_t1 - t1 v_theta([x0 | x_t1], [0 | t1])                  (stop-grad student)
    L = 100 * mean over frames of mean_CHW (x_hat - x_hat-)^2
At t1 = 0 the target is x_t1 itself (f(x, 0) = x), which anchors the chain to the teacher's ODE.

Stage B, Self-Forcing DMD (Causal-rCM `_sf_step` / `training_step_critic`, Self-Forcing `model/dmd.py`):
the generated frames x_hat (B, K, ...) follow `ctx` real seed frames. Both scores see the packed sequence
[ctx | x_hat (detached), clean, t=0 | x_t of the K generated frames] under the TF mask, so each noisy frame
is scored given the clean history the student actually produced (`score_generated`).
    DMD gradient  g = (x0_fake - x0_real) / mean|x_hat - x0_real|   (per clip, float64, clamped)
    generator     L_G = 0.5 mean (x_hat - sg(x_hat - g))^2           so dL/dx_hat is proportional to g
    critic        L_C = mean (v_fake(x_t) - (eps - x_hat))^2         flow matching on the student's samples
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from world_model.losses import frame_mse
from world_model.model import WorldModel, teacher_forcing_mask
from world_model.sampler import shift_time


# ---------------------------------------------------------------------------------------------------------
#                                     Packed teacher-forcing forward
# ---------------------------------------------------------------------------------------------------------

def packed_velocity(model: WorldModel, clean: Tensor, noisy: Tensor, t: Tensor, actions: Tensor,
                    keep: Tensor | None = None) -> Tensor:
    """Velocity of the last K frames of a clip given its clean frames.

    clean (B, T, C, h, w) at t=0; noisy (B, K, C, h, w) are noised versions of clean frames T-K..T-1 at
    t (B, K); actions (B, T, A); keep (B, K) bool: False = null action on that noisy frame (CFG).
    Noisy frame j sees clean frames < T-K+j and itself (the TF mask restricted to the last K noisy blocks),
    with the same temporal position as its clean twin. Returns v (B, K, C, h, w)."""
    B, T = clean.shape[:2]
    K = noisy.shape[1]
    idx = torch.cat([torch.arange(T), torch.arange(2 * T - K, 2 * T)]).to(clean.device)  # (T + K,)
    mask = teacher_forcing_mask(T, clean.device)[idx][:, idx]                            # (T+K, T+K)
    pos = torch.cat([torch.arange(T), torch.arange(T - K, T)]).to(clean.device)
    t_all = torch.cat([torch.zeros(B, T, device=t.device, dtype=t.dtype), t], dim=1)     # (B, T + K)
    a_all = torch.cat([actions, actions[:, T - K:]], dim=1)                              # (B, T + K, A)
    keep_all = None if keep is None else torch.cat([torch.ones(B, T, dtype=torch.bool, device=keep.device),
                                                    keep], dim=1)
    v = model(torch.cat([clean, noisy], dim=1), t_all, a_all, keep_all, frame_pos=pos, mask=mask)
    return v[:, T:]


def guided(model: WorldModel, clean: Tensor, noisy: Tensor, t: Tensor, actions: Tensor, scale: float) -> Tensor:
    """Action classifier-free guidance v_null + s (v_action - v_null); s = 1 is the plain conditional."""
    v = packed_velocity(model, clean, noisy, t, actions)
    if scale == 1.0:
        return v
    null = torch.zeros(noisy.shape[:2], dtype=torch.bool, device=noisy.device)
    v_null = packed_velocity(model, clean, noisy, t, actions, keep=null)
    return v_null + scale * (v - v_null)


def expand(t: Tensor) -> Tensor:
    """(B, K) -> (B, K, 1, 1, 1) for broadcasting over latents."""
    return t[..., None, None, None]


# ---------------------------------------------------------------------------------------------------------
#                                          Stage A: TF-dCM
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsistencyConfig:
    total_steps: int = field(default=48, metadata={"min": 2})      # N: the teacher ODE is cut into N steps
    shift: float = field(default=3.0, metadata={"min": 0.01})      # time shift of the grid
    teacher_cfg: float = 1.0       # action guidance of the teacher step (1 = none; Causal-rCM T2V uses 3)
    loss_scale: float = field(default=100.0, metadata={"min": 0.0})


class ConsistencyLoss:
    """`loss, parts = ConsistencyLoss(cfg)(student, teacher, x0, actions, generator)`; `target` is the
    network for the stop-grad target (default: the student itself, as Causal-rCM; minWM uses an EMA)."""

    def __init__(self, cfg: ConsistencyConfig = ConsistencyConfig()):
        self.cfg = cfg

    def times(self, batch: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """t0 > t1 (B,) one grid step apart on the shifted grid; t0 reaches 1, t1 reaches 0."""
        delta = 1.0 / self.cfg.total_steps
        u = torch.rand(batch, generator=generator, device=device) * (1 - delta)
        shift = lambda s: shift_time(s, self.cfg.shift)  # noqa: E731 (elementwise on tensors)
        return shift(1 - u), shift((1 - u - delta).clamp_min(0.0))

    def __call__(self, student: WorldModel, teacher: WorldModel, x0: Tensor, actions: Tensor,
                 generator: torch.Generator | None = None, target: WorldModel | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """x0 (B, T, C, h, w) clean latents, actions (B, T, A)."""
        B, T = x0.shape[:2]
        t0, t1 = self.times(B, generator, x0.device)
        t0, t1 = t0[:, None].expand(B, T), t1[:, None].expand(B, T)                        # one t per clip
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t0 = (1 - expand(t0)) * x0 + expand(t0) * eps
        x_hat = x_t0 - expand(t0) * packed_velocity(student, x0, x_t0, t0, actions)       # (B, T, C, h, w)
        with torch.no_grad():
            v_teacher = guided(teacher, x0, x_t0, t0, actions, self.cfg.teacher_cfg)
            x_t1 = x_t0 - expand(t0 - t1) * v_teacher.float()                              # Euler t0 -> t1
            net = student if target is None else target
            x_hat_minus = x_t1 - expand(t1) * packed_velocity(net, x0, x_t1, t1, actions).float()
        mse = frame_mse(x_hat, x_hat_minus)                                                # (B, T)
        loss = self.cfg.loss_scale * mse.mean()
        return loss, {"loss": loss.detach(), "cm_mse": mse.mean().detach(), "t0": t0[:, 0].mean()}


# ---------------------------------------------------------------------------------------------------------
#                                     Stage B: distribution matching
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DMDConfig:
    shift: float = field(default=5.0, metadata={"min": 0.01})      # t ~ UniformShift(shift) on [t_min, t_max]
    t_min: float = field(default=0.02, metadata={"min": 0.0, "max": 1.0})   # Self-Forcing: [20, 980] / 1000
    t_max: float = field(default=0.98, metadata={"min": 0.0, "max": 1.0})
    real_cfg: float = 1.0          # action guidance of the real score (1 = none; Cosmos action SF uses none)
    norm_eps: float = field(default=1e-5, metadata={"min": 0.0})    # clamp of the DMD normalizer


def dmd_times(cfg: DMDConfig, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """One t per clip (B,), uniform in [t_min, t_max] then shifted."""
    u = cfg.t_min + (cfg.t_max - cfg.t_min) * torch.rand(batch, generator=generator, device=device)
    return shift_time(u, cfg.shift)


def noised(x: Tensor, t: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """x (B, K, ...) at one t (B,) per clip -> (x_t, eps)."""
    eps = torch.randn(x.shape, generator=generator, device=x.device)
    tb = t[:, None, None, None, None]
    return (1 - tb) * x + tb * eps, eps


def dmd_gradient(x_hat: Tensor, x0_real: Tensor, x0_fake: Tensor, eps: float) -> Tensor:
    """DMD eq. 7-8 in float64: (x0_fake - x0_real) / mean|x_hat - x0_real| per clip. Clips whose gradient is
    not finite get zero (Causal-rCM zeroes NaN samples). All inputs (B, K, C, h, w), detached."""
    x_hat, x0_real, x0_fake = x_hat.double(), x0_real.double(), x0_fake.double()
    norm = (x_hat - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(eps)
    grad = (x0_fake - x0_real) / norm
    finite = torch.isfinite(grad).flatten(1).all(dim=1)[:, None, None, None, None]
    return torch.where(finite, grad, torch.zeros_like(grad))


class DMDLoss:
    """Generator and critic losses on generated frames x_hat (B, K, ...) that follow `context` real frames.

    clean: (B, ctx + K, C, h, w) = [real seed | generated]; the generated part may carry gradient, which
    only the generator loss uses. actions (B, ctx + K, A)."""

    def __init__(self, cfg: DMDConfig = DMDConfig()):
        self.cfg = cfg

    def generator(self, teacher: WorldModel, critic: WorldModel, clean: Tensor, actions: Tensor, K: int,
                  generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        x_hat = clean[:, -K:]                                                              # with grad
        ctx = clean.detach()
        B = clean.shape[0]
        t = dmd_times(self.cfg, B, generator, clean.device)
        with torch.no_grad():
            x_t, _ = noised(x_hat.detach(), t, generator)
            tk = t[:, None].expand(B, K)
            x0_real = x_t - expand(tk) * guided(teacher, ctx, x_t, tk, actions, self.cfg.real_cfg).float()
            x0_fake = x_t - expand(tk) * packed_velocity(critic, ctx, x_t, tk, actions).float()
            grad = dmd_gradient(x_hat.detach(), x0_real, x0_fake, self.cfg.norm_eps)
            target = (x_hat.detach().double() - grad).float()
        loss = 0.5 * (x_hat.float() - target).pow(2).mean()
        return loss, {"loss_gen": loss.detach(), "dmd_grad": grad.abs().mean().float(),
                      "real_fake_gap": (x0_fake - x0_real).pow(2).mean()}

    def critic(self, critic: WorldModel, clean: Tensor, actions: Tensor, K: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        clean = clean.detach()
        x_hat = clean[:, -K:]
        B = clean.shape[0]
        t = dmd_times(self.cfg, B, generator, clean.device)
        x_t, eps = noised(x_hat, t, generator)
        v = packed_velocity(critic, clean, x_t, t[:, None].expand(B, K), actions)
        loss = frame_mse(v, eps - x_hat).mean()
        return loss, {"loss_critic": loss.detach()}
