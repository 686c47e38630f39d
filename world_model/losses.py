"""Training losses as small callables: `loss, parts = TeacherLoss(cfg)(model, latents, actions, generator)`.

Teacher (recipe.md 1a and 5): rectified flow, v-prediction, target eps - x0, on a batch split between
- TF, teacher forcing packed as [clean x0 | noisy x_t] under `teacher_forcing_mask`, one t per clip,
  loss on the noisy half only, weighted by the gaussian bell w(t) = exp(-2 (t - 1/2)^2) - exp(-1/2)
  (Causal-rCM), t ~ UniformShift(shift);
- DF, diffusion forcing: one sequence under the block-causal mask, an independent t per frame; some frames
  become noise-augmented context (t ~ U(0, context_noise), GameNGen / Diffusion Forcing) and carry no loss.
Actions are replaced by the null action on about 10% of frames so that action guidance is possible.

Deviations from the recipe, both constant factors that Adam does not see: the loss is a mean over frames
rather than 100 * sum over frames, and w(t) is divided by its peak so TF and DF terms have similar scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from world_model.model import WorldModel, block_causal_mask, teacher_forcing_mask

BELL_PEAK = 1 - math.exp(-0.5)  # w(1/2)


@dataclass(frozen=True)
class TeacherLossConfig:
    tf_fraction: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})    # share of each batch on TF
    shift: float = field(default=3.0, metadata={"min": 0.01})                      # UniformShift of t
    action_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    context_prob: float = field(default=0.25, metadata={"min": 0.0, "max": 0.9})   # DF frames made context
    context_noise: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})   # their max t
    # Blind DF clips (share blind_prob of the DF rows): clean context up to a split point, then every frame,
    # up to blind_ticks of them, nearly pure noise (t ~ U(blind_t, 1)), all with loss. Frame k + j then sees
    # no real frame after k - 1, so the motion it must show comes from the actions k..k + j alone. Why: with
    # real frames in context the model reads the walk from them and hardly steers it (docs/EVALUATION.md,
    # session 11). 0 leaves DF, and its random stream, exactly as before.
    blind_prob: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    blind_ticks: int = field(default=8, metadata={"min": 1})
    blind_t: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    # Fork pairs (world_model/forks.py): two clips from one state, differing in the action held at the end,
    # seen with the same noise and t. Besides each clip's own loss, the difference of the two predicted clean
    # frames must match the difference of the real ones, weighted `pair_weight`. Why: in the sum of the two
    # clips' losses the action's effect (e_A - e_B) carries half the weight of what the two share (e_A + e_B),
    # which in a small model is mostly detail it cannot draw anyway; this term puts the action's effect first.
    # Pairs draw t from [pair_t_min, 1], where a sample's layout, and so its motion, is decided. Session 14
    # trained the term under the bell weight instead (t around 1/2): the teacher lost the middle of the noise
    # range and sampled noise-like frames (docs/EVALUATION.md).
    pair_weight: float = field(default=1.0, metadata={"min": 0.0})
    pair_t_min: float = field(default=0.7, metadata={"min": 0.0, "max": 1.0})


def uniform_shift(shape: tuple[int, ...], shift: float, generator: torch.Generator | None,
                  device: torch.device) -> Tensor:
    """t = s u / (1 + (s - 1) u), u ~ U(0, 1)."""
    u = torch.rand(shape, generator=generator, device=device)
    return shift * u / (1 + (shift - 1) * u)


def bell_weight(t: Tensor) -> Tensor:
    """Causal-rCM "gaussian_bell", scaled to peak at 1 for t = 1/2; zero at t = 0 and t = 1."""
    return (torch.exp(-2 * (t - 0.5) ** 2) - math.exp(-0.5)) / BELL_PEAK


def frame_mse(v: Tensor, target: Tensor) -> Tensor:
    """(B, T, C, h, w) -> per-frame mean squared error (B, T) in float32."""
    return (v.float() - target.float()).pow(2).mean(dim=(2, 3, 4))


def pair_errors(model: WorldModel, x0: Tensor, actions: Tensor, t: Tensor, generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher forcing on fork pairs x0 (P, 2, T, C, h, w), actions (P, 2, T, A) at t (P,), one noise per pair,
    no action dropout. Returns per frame: each clip's velocity MSE (2P, T), pairs adjacent; the error of the
    two predictions' difference against the targets' (P, T); and the size of the targets' difference, which is
    x_B - x_A since the noise is shared (P, T), zero where the clips agree."""
    P, _, T = x0.shape[:3]
    dev = x0.device
    eps = torch.randn((P, 1, *x0.shape[2:]), generator=generator, device=dev).expand_as(x0)
    tt = t.repeat_interleave(2)[:, None].expand(2 * P, T)                          # (2P, T), pairs adjacent
    x = x0.reshape(2 * P, *x0.shape[2:])
    e = eps.reshape(2 * P, *x0.shape[2:])
    tb = tt[..., None, None, None]
    packed = torch.cat([x, (1 - tb) * x + tb * e], dim=1)                          # (2P, 2T, C, h, w)
    t_packed = torch.cat([torch.zeros_like(tt), tt], dim=1)
    pos = torch.arange(T, device=dev).repeat(2)
    v = model(packed, t_packed, actions.reshape(2 * P, T, -1).repeat(1, 2, 1),
              torch.ones((2 * P, 2 * T), dtype=torch.bool, device=dev), frame_pos=pos,
              mask=teacher_forcing_mask(T, dev))[:, T:]                           # (2P, T, C, h, w)
    target = e - x
    vf = v.float()                                          # bf16 under autocast: subtract in float32
    dtarget = (target[0::2] - target[1::2]).float()                               # (P, T, C, h, w)
    return frame_mse(v, target), frame_mse(vf[0::2] - vf[1::2], dtarget), dtarget.pow(2).mean(dim=(2, 3, 4))


class TeacherLoss:
    def __init__(self, cfg: TeacherLossConfig = TeacherLossConfig()):
        self.cfg = cfg

    def __call__(self, model: WorldModel, latents: Tensor, actions: Tensor,
                 generator: torch.Generator | None = None, context: Tensor | None = None,
                 pairs: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """latents (B, T, C, h, w) clean, actions (B, T, A). Returns the scalar loss and detached parts.
        `context` (B, T, C, h, w): what the teacher-forcing rows see as their clean frames (default: latents).
        `pairs`: fork pairs (P, 2, T, C, h, w) and their actions (P, 2, T, A), 2P more rows (`pair_loss`)."""
        B = latents.shape[0]
        if pairs is not None:
            n = 2 * pairs[0].shape[0]
            loss_pair, parts = self.pair_loss(model, *pairs, generator)
            total, rest = self(model, latents, actions, generator, context)
            parts.update(rest)
            total = (total * B + loss_pair * n) / (B + n)
            parts["loss"] = total.detach()
            return total, parts
        n_tf = round(B * self.cfg.tf_fraction)
        parts: dict[str, Tensor] = {}
        total = latents.new_zeros((), dtype=torch.float32)
        if n_tf > 0:
            ctx = None if context is None else context[:n_tf]
            loss_tf, parts["mse_tf"] = self.teacher_forcing(model, latents[:n_tf], actions[:n_tf], generator, ctx)
            parts["loss_tf"] = loss_tf.detach()
            total = total + loss_tf * n_tf / B
        if n_tf < B:
            loss_df, parts["mse_df"] = self.diffusion_forcing(model, latents[n_tf:], actions[n_tf:], generator)
            parts["loss_df"] = loss_df.detach()
            total = total + loss_df * (B - n_tf) / B
        parts["loss"] = total.detach()
        return total, parts

    def _keep_actions(self, shape: tuple[int, int], generator: torch.Generator | None, device) -> Tensor:
        return torch.rand(shape, generator=generator, device=device) >= self.cfg.action_dropout  # (B, T)

    def teacher_forcing(self, model: WorldModel, x0: Tensor, actions: Tensor, generator: torch.Generator | None,
                        context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """context (B, T, C, h, w): the clean half, the frames each noisy frame sees before it (default x0).
        Frames the model rolled out itself there teach it to bring its own drift back to the game's frames,
        which stay the targets (train_teacher.py, `rollout_rows`)."""
        B, T = x0.shape[:2]
        eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        t = uniform_shift((B, 1), self.cfg.shift, generator, x0.device).expand(B, T)      # one t per clip
        tb = t[..., None, None, None]
        xt = (1 - tb) * x0 + tb * eps
        clean = x0 if context is None else context.detach()
        packed = torch.cat([clean, xt], dim=1)                                            # (B, 2T, C, h, w)
        t_packed = torch.cat([torch.zeros_like(t), t], dim=1)                             # (B, 2T)
        keep = torch.cat([torch.ones_like(t, dtype=torch.bool),                           # clean half keeps
                          self._keep_actions((B, T), generator, x0.device)], dim=1)       # its actions
        pos = torch.arange(T, device=x0.device).repeat(2)  # frame i has one position in both halves
        v = model(packed, t_packed, actions.repeat(1, 2, 1), keep, frame_pos=pos,
                  mask=teacher_forcing_mask(T, x0.device))[:, T:]                         # noisy half
        mse = frame_mse(v, eps - x0)                                                      # (B, T)
        return (bell_weight(t) * mse).mean(), mse.mean().detach()

    def pair_loss(self, model: WorldModel, x0: Tensor, actions: Tensor, generator: torch.Generator | None,
                  t: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher forcing on fork pairs x0 (P, 2, T, C, h, w), actions (P, 2, T, A), both clips of a pair under
        the same noise and t ~ U(pair_t_min, 1) (`t` fixes it, for validation), no action dropout. Each clip
        has its own bell-weighted loss; the pair term is the error of x0_hat_A - x0_hat_B against x_A - x_B,
        which is t^2 |dv - dtarget|^2 since x0_hat = x_t - t v and the noise is shared. Parts: mse_pair (each
        clip's own), and pair_effect: the share of the targets' difference that the predictions' difference
        gets right, 1 - |dv - dtarget|^2 / |dtarget|^2 over the frames where the clips differ (0: the model
        ignores the action there, 1: it draws the game's difference exactly)."""
        P, dev = x0.shape[0], x0.device
        lo = self.cfg.pair_t_min
        t_pair = (torch.full((P,), t, device=dev) if t is not None
                  else lo + (1 - lo) * torch.rand((P,), generator=generator, device=dev))
        mse, diff, zero = pair_errors(model, x0, actions, t_pair, generator)
        differ = (zero > 0).float()                                # (P, T): the branch frames
        n = differ.sum().clamp(min=1.0)
        w = bell_weight(t_pair.repeat_interleave(2))[:, None]      # (2P, 1): each clip's own loss
        loss = (w * mse).mean() + self.cfg.pair_weight * (t_pair[:, None] ** 2 * diff * differ).sum() / n
        effect = 1 - (diff * differ).sum() / zero.sum().clamp(min=1e-12)
        return loss, {"loss_pair": loss.detach(), "mse_pair": mse.mean().detach(), "pair_effect": effect.detach()}

    def diffusion_forcing(self, model: WorldModel, x0: Tensor, actions: Tensor,
                          generator: torch.Generator | None, blind_prob: float | None = None
                          ) -> tuple[Tensor, Tensor]:
        """blind_prob: share of blind clips (default cfg.blind_prob; validation passes 0, so its DF number
        stays comparable across runs)."""
        B, T = x0.shape[:2]
        dev = x0.device
        eps = torch.randn(x0.shape, generator=generator, device=dev)
        t = uniform_shift((B, T), self.cfg.shift, generator, dev)                        # per frame
        context = torch.rand((B, T), generator=generator, device=dev) < self.cfg.context_prob
        t_ctx = torch.rand((B, T), generator=generator, device=dev) * self.cfg.context_noise
        t = torch.where(context, t_ctx, t)
        blind_prob = self.cfg.blind_prob if blind_prob is None else blind_prob
        if blind_prob > 0 and T > 1:
            t, context = self._blind(t, t_ctx, context, blind_prob, generator)
        tb = t[..., None, None, None]
        xt = (1 - tb) * x0 + tb * eps
        v = model(xt, t, actions, self._keep_actions((B, T), generator, dev), mask=block_causal_mask(T, dev))
        mse = frame_mse(v, eps - x0)                                                      # (B, T)
        target = (~context).float()
        loss = (mse * target).sum() / target.sum().clamp(min=1.0)  # target frames only
        return loss, loss.detach()

    def _blind(self, t: Tensor, t_ctx: Tensor, context: Tensor, prob: float,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Make a share `prob` of the clips blind (see TeacherLossConfig): t and context (B, T) -> new ones."""
        B, T = t.shape
        dev = t.device
        blind = (torch.rand((B, 1), generator=generator, device=dev) < prob)                        # (B, 1)
        span = min(self.cfg.blind_ticks, T - 1)                    # at least one clean frame stays before
        k = T - 1 - torch.randint(0, span, (B, 1), generator=generator, device=dev)                # (B, 1)
        after = torch.arange(T, device=dev)[None] >= k                                              # (B, T)
        t_blind = self.cfg.blind_t + (1 - self.cfg.blind_t) * torch.rand((B, T), generator=generator, device=dev)
        t = torch.where(blind, torch.where(after, t_blind, t_ctx), t)
        return t, torch.where(blind, ~after, context)
