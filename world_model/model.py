"""The causal, action-conditioned latent DiT: one latent frame per block, rectified-flow v-prediction.

    x_t = (1 - t) x0 + t eps,  target v = eps - x0,  x0_hat = x_t - t v        (recipe.md 1a, Causal-rCM)

The network sees t * 1000. Each frame i carries its own noise level t_i and action a_i; both enter every
block through per-frame adaLN from c_i = temb(t_i) + MLP(a_i) (Oasis-style). Frames where `action_mask` is
False use a learned null-action embedding instead, which is what action classifier-free guidance needs.

Tokens: a latent (C, 15, 20) is padded to (C, 16, 20) and cut into 2x2 patches, 8 x 10 = 80 tokens per frame.
Attention is between tokens of all frames under a frame-level boolean mask (True = may attend):
  - block-causal (diffusion forcing, streaming): frame i sees frames <= i, all tokens inside a frame see
    each other;
  - packed teacher forcing [clean | noisy] (Causal-rCM blockmask.py): `teacher_forcing_mask`;
  - streaming: keys are [KV-cache slots | current frames]; the cache supplies a per-slot `valid` mask and
    window-relative positions (see kv_cache.py). A FUSED pass [clean frame | noisy next frame] stores the
    clean one and denoises the noisy one in the same forward, with tables from the cache.
Positions: 2D spatial RoPE (row, column) plus temporal RoPE (frame position) on separate slices of each
head. Keys are cached before RoPE, so the cache can renumber frames when its window rolls. With
`abs_pos`, each patch of a frame also gets a learned absolute position, and with `patch_action` its own
linear map of the action (ModelConfig says why).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from settings import from_dict
from world_model import checkpoint
from world_model.kv_cache import CacheMode, KVCache

T_SCALE = 1000.0  # rectified_flow_t_scaling_factor: the network sees t * 1000


# ---------------------------------------------------------------------------------------------------------
#                                               Config
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    latent_channels: int = field(default=32, metadata={"min": 1})
    latent_h: int = field(default=15, metadata={"min": 1})
    latent_w: int = field(default=20, metadata={"min": 1})
    patch: int = field(default=2, metadata={"min": 1})
    dim: int = field(default=320, metadata={"min": 8})
    depth: int = field(default=8, metadata={"min": 1})
    heads: int = field(default=5, metadata={"min": 1})
    mlp_ratio: float = field(default=3.0, metadata={"min": 0.5})
    action_dim: int = field(default=5, metadata={"min": 1})
    # Also condition each frame on the decayed average of the forward and strafe inputs up to it
    # (action_features): Doom's walking has momentum, so the view's motion follows that sum, not the tick's
    # own input (docs/EVALUATION.md, session 10). Adds 2 inputs to the action MLP.
    action_momentum: bool = False
    # A learned absolute position per patch of the frame, added to its token (DiT uses a fixed sin-cos table
    # here). Why: RoPE gives attention only offsets between tokens, so a token can tell where it sits only from
    # content and the frame's edges; the shipped teacher's tokens know their row (a linear probe reads it with
    # R^2 0.94) but hardly their column (0.5; docs/EVALUATION.md, session 16). Turning shifts the whole view
    # the same way, which offsets suffice for; walking zooms it about the centre, so each patch must move away
    # from the centre, left or right, which needs the column. Starts at zero, so a model given it by
    # `load_weights_into` predicts exactly what its source did.
    abs_pos: bool = False
    # A learned per-patch linear map from the frame's action to its tokens, added after patchify: each patch
    # gets its own action vector, so a forward input can say "move left" to patches left of the centre and
    # "move right" to those right of it. adaLN gives every token of a frame the same action embedding, and
    # the synthetic zoom_toy shows that this DiT then learns a pan from the action (pair effect 0.87) but not
    # a zoom (0.01), with or without abs_pos (docs/EVALUATION.md, session 17). Starts at zero.
    patch_action: bool = False
    rope_theta: float = field(default=100.0, metadata={"min": 2.0})  # positions stay below ~100 frames or rows
    temporal_rope_fraction: float = field(default=0.25, metadata={"min": 0.0, "max": 1.0})

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim (dim/heads = {self.head_dim}) must be even for RoPE")
        if min(self.rope_dims) < 2:
            raise ValueError(f"head_dim {self.head_dim} too small to split into time/row/column RoPE "
                             f"slices {self.rope_dims}")

    @property
    def action_inputs(self) -> int:
        """Width of the action MLP's input: the v1 action, plus its momentum where action_momentum is on."""
        return self.action_dim + (len(MOMENTUM_AXES) if self.action_momentum else 0)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Head-dim slices rotated by (frame, row, column); each even."""
        t = 2 * round(self.head_dim * self.temporal_rope_fraction / 2)
        rest = self.head_dim - t
        h = 2 * (rest // 4)
        return t, h, rest - h

    @property
    def grid_h(self) -> int:
        return math.ceil(self.latent_h / self.patch)

    @property
    def grid_w(self) -> int:
        return math.ceil(self.latent_w / self.patch)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.latent_channels, self.latent_h, self.latent_w


# ---------------------------------------------------------------------------------------------------------
#                                         Attention masks (frame level)
# ---------------------------------------------------------------------------------------------------------

def block_causal_mask(frames: int, device: torch.device | str | None = None) -> Tensor:
    """(F, F) bool: frame i attends to frames <= i (diffusion forcing, streaming chunks)."""
    return torch.ones(frames, frames, dtype=torch.bool, device=device).tril()


def teacher_forcing_mask(frames: int, device: torch.device | str | None = None) -> Tensor:
    """(2T, 2T) bool for the packed sequence [clean 0..T-1 | noisy 0..T-1] (Causal-rCM `teacher_forcing`):
    a clean query in block b sees clean blocks <= b; a noisy query in block b sees clean blocks < b and
    its own noisy block, so every noisy frame is predicted from clean history only."""
    ones = torch.ones(frames, frames, dtype=torch.bool, device=device)
    top = torch.cat([ones.tril(), torch.zeros_like(ones)], dim=1)                            # clean queries
    bottom = torch.cat([ones.tril(-1), torch.eye(frames, dtype=torch.bool, device=device)], dim=1)  # noisy
    return torch.cat([top, bottom], dim=0)


def token_mask(frame_mask: Tensor, tokens_per_frame: int) -> Tensor:
    """(Fq, Fk) frame mask -> (Fq * P, Fk * P) token mask for scaled_dot_product_attention."""
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


# ---------------------------------------------------------------------------------------------------------
#                                  Rotary position embedding (time, row, column)
# ---------------------------------------------------------------------------------------------------------

class Rope(nn.Module):
    """Angles for 3-axis RoPE. Frame positions are supplied per call (they are window-relative when
    streaming); rows and columns are fixed by the patch grid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dt, dh, dw = cfg.rope_dims
        freqs = lambda d: cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        rows = torch.arange(cfg.grid_h, dtype=torch.float32).repeat_interleave(cfg.grid_w)     # (P,)
        cols = torch.arange(cfg.grid_w, dtype=torch.float32).repeat(cfg.grid_h)                # (P,)
        spatial = torch.cat([rows[:, None] * freqs(dh), cols[:, None] * freqs(dw)], dim=-1)    # (P, (dh+dw)/2)
        # Every angle twice, once per member of its pair, in the layout apply_rope takes.
        self.register_buffer("freq_t", freqs(dt).repeat_interleave(2), persistent=False)        # (dt,)
        self.register_buffer("spatial", spatial.repeat_interleave(2, dim=-1), persistent=False) # (P, dh+dw)
        self.register_buffer("sign", torch.tensor([-1.0, 1.0]).repeat(cfg.head_dim // 2), persistent=False)

    def forward(self, frame_pos: Tensor) -> tuple[Tensor, Tensor]:
        """frame_pos (F,) -> cos, sin each (F * P, head_dim), in the layout `apply_rope` takes: every angle
        repeated for its pair, and sin negated on the first of each pair."""
        n_frames, n_tok = frame_pos.shape[0], self.spatial.shape[0]
        temporal = frame_pos.float()[:, None, None] * self.freq_t                       # (F, 1, dt)
        angles = torch.cat([temporal.expand(-1, n_tok, -1),
                            self.spatial.expand(n_frames, -1, -1)], dim=-1)              # (F, P, Dh)
        angles = angles.flatten(0, 1)                                                     # (F*P, Dh)
        return angles.cos(), angles.sin() * self.sign


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs (x1, x2) of x (B, H, N, Dh) to (x1 c - x2 s, x1 s + x2 c), with cos and sin
    (N, Dh) from Rope. As x * cos + swap(x) * sin it is three kernels instead of seven (a streaming pass is
    launch-bound, and this runs on queries and on every cached key in every layer)."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)                              # (x2, x1) pairs
    return torch.addcmul(x * cos, swapped, sin)


# ---------------------------------------------------------------------------------------------------------
#                                   Conditioning: noise level and action
# ---------------------------------------------------------------------------------------------------------

MOMENTUM_AXES = (0, 1)     # forward and strafe: the axes Doom moves through momentum (turning is immediate)
MOVE_DECAY = 0.90625        # Doom's friction: a walking player keeps this share of its speed per tick
                            # (world_model/recipes/move_physics.py measures it on the game)


def action_features(cfg: ModelConfig, actions: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The model's action input from v1 actions (B, T, A) -> ((B, T, cfg.action_inputs), state).

    Without cfg.action_momentum: the actions themselves. With it, each tick also gets the decayed average
    of the forward and strafe inputs up to and including it, m_t = sum_k d^(t-k) a_k / sum_k d^(t-k) with
    d = MOVE_DECAY: proportional to a walking player's velocity once a few dozen ticks are in, and dividing
    by the weight makes the first ticks of a clip or a seed an average instead of a number near 0, so
    training clips and the player's seeds, which both start mid-walk, see the same thing. `state` (B, 3):
    the running weighted sums and total weight, carried from one call to the next (Session.step)."""
    if not cfg.action_momentum:
        return actions, None
    B, T = actions.shape[:2]
    axes = actions[..., list(MOMENTUM_AXES)].float()                                     # (B, T, 2)
    state = actions.new_zeros(B, len(MOMENTUM_AXES) + 1, dtype=torch.float32) if state is None else state
    out = []
    for i in range(T):
        state = torch.cat([MOVE_DECAY * state[:, :-1] + axes[:, i], MOVE_DECAY * state[:, -1:] + 1], dim=1)
        out.append(state[:, :-1] / state[:, -1:])
    return torch.cat([actions, torch.stack(out, 1).to(actions.dtype)], dim=-1), state


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t * 1000, then an MLP (DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """t (...) in [0, 1] -> (..., dim)."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (t.float() * T_SCALE)[..., None] * freqs                                   # (..., half)
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1).to(self.mlp[0].weight.dtype))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)   # x * (1 + scale) + shift, one kernel fewer


# ---------------------------------------------------------------------------------------------------------
#                                        Transformer block
# ---------------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)  # QK-norm: keeps logits bounded in bf16
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor, rope_q: tuple[Tensor, Tensor], rope_k: tuple[Tensor, Tensor], mask: Tensor,
                cache: KVCache | None, layer: int, cache_mode: CacheMode) -> Tensor:
        """x (B, F, P, D); mask (F*P, K) additive (0 or -inf) over keys [cache slots | current tokens] (FUSED:
        [cache slots | sink slots again | current tokens])."""
        B, n_frames, P, D = x.shape
        qkv = self.qkv(x).view(B, n_frames * P, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                              # each (B, H, N, Dh)
        q, k = self.q_norm(q), self.k_norm(k)                                            # pre-RoPE
        k_all, v_all = k, v
        fused = cache is not None and cache_mode is CacheMode.FUSED
        if fused:
            k_all, v_all = cache.read_fused(layer, k, v)                                  # (B, H, K, Dh)
        elif cache is not None:
            k_ctx, v_ctx = cache.read(layer)                                              # (B, H, S*P, Dh)
            k_all = torch.cat([k_ctx.to(k.dtype), k], dim=2)                              # (B, H, K, Dh)
            v_all = torch.cat([v_ctx.to(v.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(apply_rope(q, *rope_q), apply_rope(k_all, *rope_k), v_all,
                                             attn_mask=mask)                              # (B, H, N, Dh)
        if cache is not None and cache_mode is not CacheMode.READONLY:
            n = P if fused else n_frames * P   # FUSED stores only its first (clean) frame
            # stored at the next advance (kv_cache.write): it may overwrite the slot of a frame just attended
            cache.write(layer, k[:, :, :n], v[:, :, :n])
        return self.proj(out.transpose(1, 2).reshape(B, n_frames, P, D))


class Block(nn.Module):
    """DiT block with per-frame adaLN-Zero modulation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, cfg.dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))

    def forward(self, x: Tensor, c: Tensor, rope_q: tuple[Tensor, Tensor], rope_k: tuple[Tensor, Tensor],
                mask: Tensor, cache: KVCache | None, layer: int, cache_mode: CacheMode) -> Tensor:
        """x (B, F, P, D), c (B, F, D): one modulation per frame, broadcast over its P tokens."""
        mods = self.ada(c)[:, :, None].chunk(6, dim=-1)                                   # 6 x (B, F, 1, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        h = modulate(self.norm1(x), shift_a, scale_a)
        x = torch.addcmul(x, gate_a, self.attn(h, rope_q, rope_k, mask, cache, layer, cache_mode))
        return torch.addcmul(x, gate_m, self.mlp(modulate(self.norm2(x), shift_m, scale_m)))


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.linear = nn.Linear(cfg.dim, cfg.patch * cfg.patch * cfg.latent_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c)[:, :, None].chunk(2, dim=-1)                           # (B, F, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))                          # (B, F, P, p*p*C)


# ---------------------------------------------------------------------------------------------------------
#                                              WorldModel
# ---------------------------------------------------------------------------------------------------------

class WorldModel(nn.Module):
    """Predicts the rectified-flow velocity v = eps - x0 of every input frame."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        p, C = cfg.patch, cfg.latent_channels
        self.patch_embed = nn.Linear(C * p * p, cfg.dim)
        self.t_embed = TimestepEmbedder(cfg.dim)
        self.action_embed = nn.Sequential(nn.Linear(cfg.action_inputs, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.null_action = nn.Parameter(torch.randn(cfg.dim) * 0.02)  # used where action_mask is False
        self.pos_embed = nn.Parameter(torch.zeros(cfg.tokens_per_frame, cfg.dim)) if cfg.abs_pos else None
        self.patch_action = (nn.Parameter(torch.zeros(cfg.tokens_per_frame, cfg.action_inputs, cfg.dim))
                             if cfg.patch_action else None)                               # (P, A, D)
        self.rope = Rope(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT: xavier linears, then zero the adaLN modulations and the output so every block starts as
        # the identity and the initial prediction is v = 0.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.t_embed.mlp, self.action_embed):
            nn.init.normal_(emb[0].weight, std=0.02)
            nn.init.normal_(emb[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for lin in (self.final.ada[-1], self.final.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---- tokens ----

    def patchify(self, x: Tensor) -> Tensor:
        """(B, F, C, h, w) -> (B, F, P, D), zero-padding h and w up to multiples of the patch."""
        cfg, p = self.config, self.config.patch
        B, n_frames = x.shape[:2]
        x = F.pad(x, (0, cfg.grid_w * p - cfg.latent_w, 0, cfg.grid_h * p - cfg.latent_h))
        x = x.reshape(B, n_frames, cfg.latent_channels, cfg.grid_h, p, cfg.grid_w, p)
        x = x.permute(0, 1, 3, 5, 2, 4, 6).flatten(4).flatten(2, 3)                      # (B, F, P, C*p*p)
        return self.patch_embed(x.to(self.patch_embed.weight.dtype))

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, F, P, p*p*C) -> (B, F, C, h, w), cropping the padding."""
        cfg, p = self.config, self.config.patch
        B, n_frames = x.shape[:2]
        x = x.reshape(B, n_frames, cfg.grid_h, cfg.grid_w, cfg.latent_channels, p, p)
        x = x.permute(0, 1, 4, 2, 5, 3, 6)                                              # (B, F, C, gh, p, gw, p)
        x = x.reshape(B, n_frames, cfg.latent_channels, cfg.grid_h * p, cfg.grid_w * p)
        return x[..., :cfg.latent_h, :cfg.latent_w]

    def embed(self, x: Tensor, action: Tensor, action_mask: Tensor | None = None) -> Tensor:
        """The tokens the blocks start from: x (B, F, C, h, w), action (B, F, cfg.action_inputs) -> (B, F, P, D).
        The patches, plus the position table and the per-patch action map where the config has them."""
        h = self.patchify(x)                                                              # (B, F, P, D)
        if self.pos_embed is not None:
            h = h + self.pos_embed.to(h.dtype)                                            # same in every frame
        if self.patch_action is not None:
            a = action.to(h.dtype)
            if action_mask is not None:                                                   # the null action: none
                a = a * action_mask[..., None].to(h.dtype)
            h = h + torch.einsum("bfa,pad->bfpd", a, self.patch_action.to(h.dtype))       # (B, F, P, D)
        return h

    def condition(self, t: Tensor, action: Tensor, action_mask: Tensor | None) -> Tensor:
        """t (B, F), action (B, F, cfg.action_inputs) from action_features, action_mask (B, F) bool or None
        -> c (B, F, D)."""
        a = self.action_embed(action.to(self.null_action.dtype))                          # (B, F, D)
        if action_mask is not None:
            a = torch.where(action_mask[..., None], a, self.null_action.to(a.dtype))
        return self.t_embed(t) + a

    # ---- forward ----

    def forward(self, x: Tensor, t: Tensor, action: Tensor, action_mask: Tensor | None = None, *,
                frame_pos: Tensor | None = None, mask: Tensor | None = None,
                cache: KVCache | None = None, cache_mode: CacheMode = CacheMode.READONLY,
                commit: bool = True) -> Tensor:
        """Velocity for every frame.

        x (B, F, C, h, w) noisy latents; t (B, F) noise levels in [0, 1]; action (B, F, A);
        action_mask (B, F) bool, False -> null action (None = all True).
        Without a cache: frame_pos (F,) temporal positions (default 0..F-1) and mask (F, F) frame-level
        (default block-causal). With a cache: the frames follow the cached ones, positions come from the
        cache, and `mask` (F, F) only covers the current frames (default block-causal); in APPEND mode their
        keys/values are stored and, with commit=True, the cache advances past them (commit=False leaves that
        to the caller: a CUDA graph must not run the host half of `advance`). FUSED mode takes F = 2,
        [clean frame at t=0 | noisy next frame]: the first is stored as APPEND would, the second is denoised
        as a READONLY pass after that append would (kv_cache.py). Returns v (B, F, C, h, w) in x's dtype.
        """
        n_frames, P = x.shape[1], self.config.tokens_per_frame
        if mask is None:
            mask = block_causal_mask(n_frames, x.device)
        if cache is None:
            q_pos = torch.arange(n_frames, device=x.device) if frame_pos is None else frame_pos
            k_pos, full_mask = q_pos, mask
        else:
            if frame_pos is not None:
                raise ValueError("frame_pos is set by the cache when streaming; pass one or the other")
            if cache_mode is CacheMode.FUSED:
                if n_frames != 2:
                    raise ValueError(f"a FUSED pass takes 2 frames [clean | noisy], got {n_frames}")
                q_pos, ctx_pos, ctx_mask = cache.fused_tables()                           # (2,), (Kc,), (2, Kc)
            else:
                if cache_mode is CacheMode.APPEND:
                    cache.check_append(n_frames)
                q_pos = cache.query_positions(n_frames)                                   # (F,)
                ctx_pos, ctx_mask = cache.slot_pos, cache.valid.expand(n_frames, -1)      # (slots,), (F, slots)
            k_pos = torch.cat([ctx_pos, q_pos])                                           # (Kc + F,)
            full_mask = torch.cat([ctx_mask, mask], dim=1)                                # (F, Kc + F)
        c = self.condition(t, action, action_mask)                                        # (B, F, D)
        h = self.embed(x, action, action_mask)                                            # (B, F, P, D)
        # Tables and mask once per pass in the weights' dtype, not once per layer: with bf16 weights a
        # streaming pass is launch-bound, and a bool mask would be turned into an additive one in every layer.
        # (fp32 weights under autocast keep fp32 tables, as the models were trained.)
        dt = self.patch_embed.weight.dtype
        rope_q = tuple(r.to(dt) for r in self.rope(q_pos))                                # 2 x (F*P, Dh)
        rope_k = tuple(r.to(dt) for r in self.rope(k_pos))                                # 2 x (K, Dh)
        attn_mask = torch.zeros(full_mask.shape[0] * P, full_mask.shape[1] * P, dtype=dt, device=x.device)
        attn_mask = attn_mask.masked_fill(~token_mask(full_mask, P), float("-inf"))       # (F*P, K)
        for i, block in enumerate(self.blocks):
            h = block(h, c, rope_q, rope_k, attn_mask, cache, i, cache_mode)
        if cache is not None and cache_mode is not CacheMode.READONLY and commit:
            cache.advance(n_frames if cache_mode is CacheMode.APPEND else 1)
        return self.unpatchify(self.final(h, c)).to(x.dtype)

    # ---- helpers for sessions and checkpoints ----

    def new_cache(self, *, batch: int, sink: int, window: int, device: torch.device | str,
                  dtype: torch.dtype) -> KVCache:
        cfg = self.config
        return KVCache(layers=cfg.depth, batch=batch, heads=cfg.heads, head_dim=cfg.head_dim,
                       tokens_per_frame=cfg.tokens_per_frame, sink=sink, window=window, device=device, dtype=dtype)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def state_for_save(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Weights as contiguous CPU tensors (optionally cast, e.g. to bf16) for checkpoint.save."""
        return {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
                .contiguous().cpu() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, config: ModelConfig | Mapping[str, Any], tensors: Mapping[str, Tensor]) -> "WorldModel":
        """Rebuild from a checkpoint's config (dataclass or plain dict) and tensors; strict about keys."""
        if not isinstance(config, ModelConfig):
            config = from_dict(dict(config), ModelConfig, source="checkpoint config")
        model = cls(config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
        return model


def load_weights_into(model: WorldModel, src: WorldModel) -> None:
    """Copy src's weights into model. Their configs must match, except that model may add action momentum
    (its two new action inputs start with zero weights), the absolute position table or the per-patch action
    map (zeros): the copy predicts exactly what src does, and training decides what the addition is worth."""
    a, b = src.config_dict(), model.config_dict()
    addable = ("action_momentum", "abs_pos", "patch_action")
    if {**a, **{k: b[k] for k in addable}} != b or any(a[k] and not b[k] for k in addable):
        raise checkpoint.CheckpointError(f"weights of another model config: {a} against {b}")
    state = src.state_dict()
    w = state["action_embed.0.weight"]                                                    # (dim, inputs)
    extra = model.config.action_inputs - w.shape[1]
    if extra:
        state["action_embed.0.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra)], dim=1)
    if model.pos_embed is not None and "pos_embed" not in state:
        state["pos_embed"] = torch.zeros_like(model.pos_embed)
    if model.patch_action is not None:
        pa = state.get("patch_action", model.patch_action.new_zeros(model.patch_action.shape[0], 0,
                                                                    model.patch_action.shape[2]))
        extra = model.config.action_inputs - pa.shape[1]                                  # momentum added too
        state["patch_action"] = torch.cat([pa, pa.new_zeros(pa.shape[0], extra, pa.shape[2])], dim=1)
    model.load_state_dict(state)


def save_model(path: str | Path, model: WorldModel, *, kind: str = "teacher",
               dtype: torch.dtype | None = torch.bfloat16, meta: Mapping[str, str] | None = None) -> list[Path]:
    """Write a WorldModel checkpoint (weights cast to `dtype`, config in the metadata) via checkpoint.save."""
    return checkpoint.save(path, model.state_for_save(dtype), kind=kind, config=model.config_dict(), meta=meta)


def load_model(path: str | Path, kind: str | None = None) -> WorldModel:
    """Rebuild a WorldModel (float32 weights) from a checkpoint written by `save_model`."""
    tensors, config, _ = checkpoint.load(path, kind)
    return WorldModel.from_tensors(config, tensors)
