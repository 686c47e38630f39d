"""Can the DiT draw a zoom from the action alone? A synthetic test of how the action reaches the tokens, on the CPU.

    python -m world_model.recipes.zoom_toy [--steps 2000] [--seed 0] [--variants rope_only abs_pos patch_action]
        [--sample-steps 16] [--hold 0 [--hold-kinds in out left right]] [--momentum 0] [--blind 0]
        [--rollout 0 [--rollout-steps 2]] [--continue-steps N [--new-lr-mult M ...]] [--device cpu] [--json OUT]

The E1M1 teachers turn the view on the first frame after a turn input but hardly zoom after a forward input
(docs/EVALUATION.md, sessions 15-16). A turn shifts every patch the same way. A zoom moves each patch away from
the centre, left or right depending on its side. This toy takes the game out of the question. A camera looks at
a large smooth random field, and each tick's action either pans it by about one latent pixel (0.95) left or
right, or zooms it in or out by 12% about the centre. Nothing else moves, and the actions are drawn
independently, so the context frames never predict the next action: the motion of the last frame comes from its
action alone, as on a probe's first frame.

The same small WorldModel is trained as is ("rope_only"), with `abs_pos`, and with `patch_action` (same seed,
same batches, the teacher loss of losses.py). Then, for held-out clips, the last frame is predicted at t = 1
(the one-step guess of the frame) under the two actions of a pair (pan left against right, zoom in against
out), with the same noise. The pair effect is the share of the true difference between the two frames that the
difference of the predictions gets right, 1 - |d_pred - d_true|^2 / |d_true|^2, as in pair_effect.py (0: the
action is ignored). Session 17 found pan 0.87 for all three, and zoom 0.01, 0.02 and 0.80. The same effects are
also measured on the last frame sampled with --sample-steps Euler steps (the teacher's 16 by default), which is
what a player sees. With --hold P a tick repeats the previous tick's action with probability P, as a player
holds a key, so the context's motion often predicts the next frame's without reading its action.

With --momentum f the zoom walks as Doom does (docs/EVALUATION.md, session 10: friction keeps 0.906 of the
speed per tick): the zoom speed is v' = f v + (1 - f) ZOOM forward and the scale grows by v' each tick, so a
held input reaches ZOOM per tick while one tick's input moves it by only (1 - f) ZOOM, and each clip starts at a
random speed that its context frames show. The pan stays immediate, as a turn is. f = 0 is the toy above.

The variants "momentum_input" and "patch_momentum" (patch_action too) add `action_momentum`: each tick's action
input also carries the decayed average of the forward inputs (action_features, decay MOVE_DECAY = 0.906), the
speed a held input implies, so run them with --momentum 0.906 for that feature to match the toy's walk. A
probe holds a key for several ticks and the model rolls out on its own frames, so with --sample-steps the
held probe is measured as well (held_effects): after a real first frame, the model samples the other CLIP - 1
frames autoregressively under "in" held throughout and under "out", with the same noise, and the pair effect
of each tick's frames is scored against the camera that walked with the held key. With --blind P a share P of
the diffusion-forcing clips in training are blind (TeacherLossConfig.blind_prob): their last frames are
nearly pure noise, so the motion they must show comes from the actions alone.

The held probe also reports the held gain (session 23): each rollout frame's camera zoom is fitted against the
known field (fit_scale), and the model's in-out zoom is divided by the true one, as the E1M1 move probe's gain
is. With --rollout P a share P of the teacher-forcing rows see the model's own rollout from the real first frame
as context (the targets stay real), and --hold-kinds restricts --hold to some keys. toy_sweep.sh runs many of
these side by side on one GPU.

With --device cuda the clips are still drawn on the CPU and moved, and the loss draws its noise from a second
generator on the GPU, so GPU runs repeat each other but not the CPU's numbers.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from world_model.losses import TeacherLoss, TeacherLossConfig
from world_model.model import ModelConfig, WorldModel, action_features, load_weights_into
from world_model.sampler import SamplerConfig, euler_sample, schedule_for

from .common import write_json

H, W, C = 15, 20, 4          # the E1M1 latent grid, fewer channels
CLIP = 4
PAN = 2.0 / W                # times the view's 0.25 of the field: 0.95 of a view column
ZOOM = 0.12                  # log scale per zoom tick
# action index -> (forward, turn) of the v1 action vector: forward zooms, turn pans
ACTIONS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "in": (1.0, 0.0), "out": (-1.0, 0.0)}
KINDS = list(ACTIONS)


# the variants compared: the model options each one turns on
VARIANTS = {"rope_only": {}, "abs_pos": {"abs_pos": True}, "patch_action": {"patch_action": True},
            "momentum_input": {"action_momentum": True},
            "patch_momentum": {"patch_action": True, "action_momentum": True}}


def toy_config(**options: bool) -> ModelConfig:
    return ModelConfig(latent_channels=C, latent_h=H, latent_w=W, patch=2, dim=64, depth=4, heads=4,
                       mlp_ratio=2.0, **options)


def world(n: int, g: torch.Generator) -> Tensor:
    """n smooth random fields (n, C, 4H, 4W): noise blurred by a 5x5 box twice, unit std."""
    x = torch.randn(n, C, 4 * H, 4 * W, generator=g)
    for _ in range(2):
        x = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return x / x.std(dim=(1, 2, 3), keepdim=True)


def view(fields: Tensor, cx: Tensor, scale: Tensor) -> Tensor:
    """What a camera at horizontal offset cx with zoom `scale` (n,) sees of fields (n, C, 4H, 4W): (n, C, H, W).
    The camera's frame covers a quarter of the field's width and height at scale 1."""
    ys = torch.linspace(-1, 1, H) * 0.25
    xs = torch.linspace(-1, 1, W) * 0.25
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")                                    # (H, W)
    s = torch.exp(-scale)[:, None, None]
    grid = torch.stack([gx[None] * s + cx[:, None, None], gy[None] * s.expand(-1, H, W)], dim=-1)
    return F.grid_sample(fields, grid, mode="bilinear", padding_mode="border", align_corners=True)


def clips(n: int, g: torch.Generator, last: Tensor | None = None, hold: float = 0.0, momentum: float = 0.0,
          hold_kinds: Sequence[str] = KINDS, hold_turn: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """n clips of CLIP frames (n, CLIP, C, H, W) and actions (n, CLIP, 5), each action drawn at random, or with
    probability `hold` the one before it again if it is one of `hold_kinds`, as a player holds a key (`last`
    (n,) fixes the final one). Holding only some kinds mimics E1M1's data, where forward is held for long
    stretches and backward seldom (docs/DATA.md). With `hold_turn` a share of the clips (that many) also pan
    one way, at full turn, on every tick that repeats a zoom key, as E1M1's `policy.move_turn_prob` turns
    through a held move (docs/DATA.md, session 24). Frame k shows the camera after action k. Also returns the
    fields and the camera (cx, scale, zoom speed) before the last action (3, n), to redraw the last frame
    under another action (without the pan along)."""
    fields = world(n, g)
    cx = (torch.rand(n, generator=g) - 0.5) * 0.5
    scale = torch.zeros(n)
    speed = torch.zeros(n)
    kinds = torch.randint(0, len(KINDS), (n, CLIP), generator=g)
    if hold > 0:                       # drawn only then, so that hold 0 gives session 17's clips
        keep = torch.rand(n, CLIP, generator=g) < hold
        holdable = torch.tensor([kind in hold_kinds for kind in KINDS])
        for k in range(1, CLIP):
            kinds[:, k] = torch.where(keep[:, k] & holdable[kinds[:, k - 1]], kinds[:, k - 1], kinds[:, k])
    if last is not None:
        kinds[:, -1] = last
    if momentum > 0:                   # drawn only then, so that momentum 0 gives the clips above
        speed = (torch.rand(n, generator=g) * 2 - 1) * ZOOM
    along = torch.zeros(n, CLIP)       # the turn panned along a held zoom key, per tick
    if hold_turn > 0:                  # drawn only then, so that hold_turn 0 gives the clips above
        sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        pans = torch.rand(n, generator=g) < hold_turn
        zoom = torch.tensor([kind in ("in", "out") for kind in KINDS])
        held = torch.cat([torch.zeros(n, 1, dtype=torch.bool), kinds[:, 1:] == kinds[:, :-1]], 1) & zoom[kinds]
        along = torch.where(held & pans[:, None], sign[:, None], 0.0)
    frames, acts = [], torch.zeros(n, CLIP, 5)
    for k in range(CLIP):
        if k == CLIP - 1:
            before = (cx.clone(), scale.clone(), speed.clone())
        cx, scale, speed = step_camera(cx, scale, speed, kinds[:, k], momentum, along[:, k])
        frames.append(view(fields, cx, scale))
        acts[:, k, 0] = torch.tensor([ACTIONS[KINDS[i]][0] for i in kinds[:, k]])
        acts[:, k, 2] = torch.tensor([ACTIONS[KINDS[i]][1] for i in kinds[:, k]]) + along[:, k]
    return torch.stack(frames, 1), acts, fields, torch.stack(before)


def step_camera(cx: Tensor, scale: Tensor, speed: Tensor, kinds: Tensor, momentum: float = 0.0,
                along: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The camera (cx, scale, zoom speed) after one action of each kind in `kinds` (n,): the turn input pans,
    the forward input zooms, at once (momentum 0) or through the speed it pushes. `along` (n,) adds to the
    turn input (a pan held with a zoom key)."""
    forward, turn = torch.tensor([ACTIONS[KINDS[i]] for i in kinds]).unbind(-1)          # (n,), (n,)
    if along is not None:
        turn = turn + along
    speed = momentum * speed + (1 - momentum) * forward * ZOOM
    return cx + turn * PAN * 0.25 * torch.exp(-scale), scale + speed, speed


def train(variant: str, steps: int, batch: int, seed: int, *, init: WorldModel | None = None, lr_max: float = 1e-3,
          new_lr_mult: float = 1.0, hold: float = 0.0, momentum: float = 0.0, blind: float = 0.0,
          hold_kinds: Sequence[str] = KINDS, rollout_share: float = 0.0, rollout_steps: int = 2,
          hold_turn: float = 0.0, log_every: int = 250, device: str = "cpu") -> tuple[WorldModel, list[dict]]:
    """Train the variant's model for `steps` (from `init`'s weights where given, what the variant adds at zero).
    Parameters that `init` lacks learn at `new_lr_mult` times the rate: a continuation's low rate suits weights
    that are already trained, not a map that starts at zero. `blind`: the loss's blind_prob (0 leaves its
    random stream as it was). `rollout_share`: the share of the teacher-forcing rows whose clean frames 1..CLIP-1
    are the model's own rollout (`rollout`, `rollout_steps` Euler steps, the clip's actions) from the real frame
    0, while the targets stay the real frames: from where its own rollout left the camera, the model must reach
    where the actions took the true one (train_teacher's `rollout_rows`, with the toy's held keys)."""
    torch.manual_seed(seed)
    model = WorldModel(toy_config(**VARIANTS[variant]))
    old_names = set(dict(init.named_parameters())) if init is not None else None
    if init is not None:
        load_weights_into(model, init)
    model.to(device)
    named = list(model.named_parameters())
    new = [p for n, p in named if old_names is not None and n not in old_names]
    rest = [p for n, p in named if old_names is None or n in old_names]
    groups = [{"params": rest, "mult": 1.0}] + ([{"params": new, "mult": new_lr_mult}] if new else [])
    opt = torch.optim.AdamW(groups, lr=lr_max, weight_decay=0.0)
    loss_fn = TeacherLoss(TeacherLossConfig(action_dropout=0.0, blind_prob=blind))
    g = torch.Generator().manual_seed(seed)
    # the loss's noise comes from a generator on the model's device; on the CPU that is g, as it always was
    g_loss = g if torch.device(device).type == "cpu" else torch.Generator(device).manual_seed(seed)
    # the rollout's noise has its own stream, so the clips and the loss's noise stay those of rollout_share 0
    g_roll = torch.Generator(device).manual_seed(seed + 7)
    n_roll = round(round(batch * loss_fn.cfg.tf_fraction) * rollout_share)
    roll_schedule = schedule_for(SamplerConfig(steps=rollout_steps))
    log = []
    for step in range(1, steps + 1):
        x, a, _, _ = clips(batch, g, hold=hold, momentum=momentum, hold_kinds=hold_kinds, hold_turn=hold_turn)
        x, a = x.to(device), a.to(device)
        lr = lr_max * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * group["mult"]
        feats = action_features(model.config, a)[0]
        context = None
        if n_roll:
            noise = torch.randn((n_roll, CLIP - 1, C, H, W), generator=g_roll, device=device)
            context = torch.cat([x[:n_roll, :1], rollout(model, x[:n_roll, 0], feats[:n_roll], noise, roll_schedule)], 1)
            context = torch.cat([context, x[n_roll:]], 0)                                 # (batch, CLIP, C, H, W)
        loss, _ = loss_fn(model, x, feats, g_loss, context)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps:
            log.append({"step": step, "loss": loss.item()})
            print(f"  {variant} step {step}: loss {log[-1]['loss']:.4f}", flush=True)
    return model, log


def pair_effects(model: WorldModel, n: int, seed: int, steps: int = 0, hold: float = 0.0, momentum: float = 0.0
                 ) -> dict[str, float]:
    """Pan left against right and zoom in against out on the last frame of n held-out clips (context actions
    drawn with `hold`): the one-step guess at t = 1 (steps 0), or the frame sampled with `steps` Euler steps on
    the teacher's grid (SamplerConfig's shift), from the same noise under both actions."""
    g = torch.Generator().manual_seed(seed)
    x, a, fields, before = clips(n, g, hold=hold, momentum=momentum)
    noise = torch.randn(n, C, H, W, generator=g)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, noise = x.to(dev), noise.to(dev)
    out = {}
    for name, (ka, kb) in {"pan": ("left", "right"), "zoom": ("in", "out")}.items():
        preds, truths = [], []
        for kind in (ka, kb):
            k = torch.full((n,), KINDS.index(kind))
            cx, scale, _ = step_camera(*before, k, momentum)
            truths.append(view(fields, cx, scale).to(dev))                                # (n, C, H, W)
            acts = a.clone().to(dev)
            acts[:, -1, 0], acts[:, -1, 2] = ACTIONS[kind]
            acts = action_features(model.config, acts)[0] if isinstance(model, WorldModel) else acts

            def velocity(xt: Tensor, t: float, use_action: bool = True) -> Tensor:      # (n, C, H, W)
                times = torch.zeros(n, CLIP, device=dev)
                times[:, -1] = t
                return model(torch.cat([x[:, :-1], xt[:, None]], 1), times, acts)[:, -1]

            with torch.no_grad():
                if steps:
                    preds.append(euler_sample(velocity, noise, schedule_for(SamplerConfig(steps=steps))))
                else:
                    preds.append(noise - velocity(noise, 1.0))                            # x0_hat at t = 1
        d_pred, d_true = preds[0] - preds[1], truths[0] - truths[1]
        out[name] = float(1 - (d_pred - d_true).pow(2).sum() / d_true.pow(2).sum())
    return out


def rollout(model: WorldModel, frame0: Tensor, acts: Tensor, noise: Tensor, schedule: list[float]) -> Tensor:
    """The model's own frames 1..T-1 (n, T-1, C, H, W) after the real frame0 (n, C, H, W), under action features
    acts (n, T, A): frame k is Euler-sampled on `schedule` from noise[:, k - 1] with the context [frame0, the
    model's frames 1..k-1] at t = 0. No gradient: training uses it as context, held_effects as the probe."""
    n, dev = frame0.shape[0], frame0.device
    frames = [frame0]
    for k in range(1, acts.shape[1]):
        context = torch.stack(frames, 1)                                                  # (n, k, C, H, W)

        def velocity(xt: Tensor, t: float, use_action: bool = True) -> Tensor:          # (n, C, H, W)
            times = torch.zeros(n, k + 1, device=dev)
            times[:, -1] = t
            return model(torch.cat([context, xt[:, None]], 1), times, acts[:, :k + 1])[:, -1]

        with torch.no_grad():
            frames.append(euler_sample(velocity, noise[:, k - 1], schedule))
    return torch.stack(frames[1:], 1)


def fit_scale(fields: Tensor, cx: Tensor, frames: Tensor, span: float = 0.6, num: int = 480, margin: int = 2
              ) -> Tensor:
    """The camera zoom (n,) whose view of fields (n, C, 4H, 4W) at offset cx (n,) best matches frames
    (n, C, H, W): a search over `num` + 1 log scales in [-span, span] (steps of 0.0025 by default), on the
    frame less `margin` latent pixels on each side, where a zoom out shows what no earlier frame held."""
    inner = (..., slice(margin, H - margin), slice(margin, W - margin))
    best = torch.full((len(cx),), float("inf"))
    best_scale = torch.zeros(len(cx))
    for s in torch.linspace(-span, span, num + 1):
        err = (view(fields, cx, s.expand(len(cx)))[inner] - frames[inner]).pow(2).mean(dim=(1, 2, 3))
        better = err < best
        best, best_scale = torch.where(better, err, best), torch.where(better, s, best_scale)
    return best_scale


def held_start(n: int, g: torch.Generator, momentum: float) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The held probe's start: n fields, a random first action (n,) and the camera (cx, scale, speed) after it,
    from a random speed that one frame cannot show (none without momentum)."""
    fields = world(n, g)
    cx = (torch.rand(n, generator=g) - 0.5) * 0.5
    first = torch.randint(0, len(KINDS), (n,), generator=g)
    speed = (torch.rand(n, generator=g) * 2 - 1) * ZOOM if momentum > 0 else torch.zeros(n)
    return fields, first, step_camera(cx, torch.zeros(n), speed, first, momentum)


def held_effects(model: WorldModel, n: int, seed: int, steps: int = 16, momentum: float = 0.0
                 ) -> dict[str, float | list[float]]:
    """The held probe: zoom "in" held against "out" for ticks 1..CLIP-1 of n held-out clips, rolled out on the
    model's own frames. Frame 0 is real (the camera after a random action 0, drawn as clips draws it); each later
    frame k is sampled with `steps` Euler steps (the teacher's grid) from the context [real frame 0, the model's
    frames 1..k-1] at t = 0, with the same noise per tick under both keys. The truth walks the camera from the
    state after frame 0 with the held key (step_camera). Returns per tick (ticks 1..CLIP-1):
    - "zoom_ticks": the pair effect, 1 - |d_pred - d_true|^2 / |d_true|^2 ("zoom": the last tick's); it also
      counts as error the detail in which the two rollouts come to differ;
    - "gain_ticks": the median over clips of the model's in-out zoom (fit_scale on each rollout's frame) over
      the true one, as the E1M1 move probe's gain: 1 walks as far as the game, 0 does not walk apart;
    - "scale_error_ticks": the mean |fitted - true| zoom of the frames, both keys (log scale); with momentum it
      is mostly the start speed, which one frame cannot show and which cancels in the gain."""
    g = torch.Generator().manual_seed(seed)
    fields, first, (cx, scale, speed) = held_start(n, g, momentum)
    frame0 = view(fields, cx, scale)                                                      # (n, C, H, W)
    noise = torch.randn(n, CLIP - 1, C, H, W, generator=g)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    schedule = schedule_for(SamplerConfig(steps=steps))
    preds, truths, scales = [], [], []
    for kind in ("in", "out"):
        k_held = torch.full((n,), KINDS.index(kind))
        acts = torch.zeros(n, CLIP, 5)
        acts[:, 0, 0] = torch.tensor([ACTIONS[KINDS[i]][0] for i in first])
        acts[:, 0, 2] = torch.tensor([ACTIONS[KINDS[i]][1] for i in first])
        acts[:, 1:, 0], acts[:, 1:, 2] = ACTIONS[kind]
        acts = (action_features(model.config, acts)[0] if isinstance(model, WorldModel) else acts).to(dev)
        state, truth, true_scale = (cx, scale, speed), [], []
        for _ in range(1, CLIP):
            state = step_camera(*state, k_held, momentum)
            truth.append(view(fields, *state[:2]))
            true_scale.append(state[1])
        preds.append(rollout(model, frame0.to(dev), acts, noise.to(dev), schedule).cpu())  # (n, CLIP-1, C, H, W)
        truths.append(torch.stack(truth, 1))
        scales.append((torch.stack(true_scale, 1),                                        # (n, CLIP-1)
                       torch.stack([fit_scale(fields, cx, preds[-1][:, j]) for j in range(CLIP - 1)], 1)))
    d_pred, d_true = preds[0] - preds[1], truths[0] - truths[1]
    ticks = (1 - (d_pred - d_true).pow(2).sum(dim=(0, 2, 3, 4)) / d_true.pow(2).sum(dim=(0, 2, 3, 4))).tolist()
    (true_in, fit_in), (true_out, fit_out) = scales
    gain = ((fit_in - fit_out) / (true_in - true_out)).median(dim=0).values.tolist()
    error = ((fit_in - true_in).abs() + (fit_out - true_out).abs()).mean(dim=0).div(2).tolist()
    return {"zoom": ticks[-1], "zoom_ticks": ticks, "gain_ticks": gain, "scale_error_ticks": error}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-clips", type=int, default=256)
    ap.add_argument("--hold", type=float, default=0.0,
                    help="probability that a tick repeats the previous tick's action, in training and held-out clips")
    ap.add_argument("--hold-kinds", nargs="+", choices=KINDS, default=KINDS,
                    help="the actions that --hold repeats in training (default all; the held-out clips hold all)")
    ap.add_argument("--hold-turn", type=float, default=0.0,
                    help="share of training clips that also pan one way on every held zoom tick (with --hold)")
    ap.add_argument("--momentum", type=float, default=0.0,
                    help="share of the zoom speed kept per tick (Doom's walk: 0.906); 0: the zoom follows the input at once")
    ap.add_argument("--blind", type=float, default=0.0,
                    help="share of blind diffusion-forcing clips in training (TeacherLossConfig.blind_prob)")
    ap.add_argument("--rollout", type=float, default=0.0,
                    help="share of the teacher-forcing rows that see the model's own rollout as context in training")
    ap.add_argument("--rollout-steps", type=int, default=2, help="Euler steps of that rollout")
    ap.add_argument("--sample-steps", type=int, default=16,
                    help="also measure the pair effects on frames sampled with this many Euler steps (0: skip)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["rope_only", "abs_pos", "patch_action"])
    ap.add_argument("--continue-steps", type=int, default=0,
                    help="then continue the trained rope_only model this long, as is and with patch_action added")
    ap.add_argument("--new-lr-mult", type=float, nargs="*", default=[],
                    help="with --continue-steps, also continue with patch_action added at these multiples of the "
                         "rate for the map alone")
    ap.add_argument("--device", default="cpu", help="where the models train (cpu, cuda)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.continue_steps and "rope_only" not in args.variants:
        ap.error("--continue-steps continues the rope_only model: keep it among --variants")
    report = {"steps": args.steps, "batch": args.batch, "seed": args.seed, "hold": args.hold,
              "hold_kinds": args.hold_kinds, "hold_turn": args.hold_turn, "momentum": args.momentum,
              "blind": args.blind, "rollout": args.rollout, "rollout_steps": args.rollout_steps, "device": args.device,
              "sample_steps": args.sample_steps,
              "config": asdict(toy_config()),
              "runs": {}}
    models = {}

    def run(name: str, variant: str, **train_args) -> None:
        t0 = time.perf_counter()
        model, log = train(variant, batch=args.batch, device=args.device, blind=args.blind,
                           hold_kinds=args.hold_kinds, rollout_share=args.rollout, rollout_steps=args.rollout_steps,
                           hold_turn=args.hold_turn, **train_args)
        models[name] = model.eval()
        effects = pair_effects(model, args.eval_clips, args.seed + 1000, hold=args.hold, momentum=args.momentum)
        line = f"{name}: pair effect at t = 1, pan {effects['pan']:.3f}, zoom {effects['zoom']:.3f}"
        if args.sample_steps:
            sampled = pair_effects(model, args.eval_clips, args.seed + 1000, args.sample_steps, hold=args.hold,
                                   momentum=args.momentum)
            effects.update({f"{k}_sampled": v for k, v in sampled.items()})
            line += f"; sampled ({args.sample_steps} steps) pan {sampled['pan']:.3f}, zoom {sampled['zoom']:.3f}"
        report["runs"][name] = {"effects": effects, "log": log}
        if args.sample_steps:
            held = held_effects(model, args.eval_clips, args.seed + 2000, args.sample_steps, momentum=args.momentum)
            report["runs"][name]["held"] = held
            line += "; held zoom by tick " + " ".join(f"{v:.3f}" for v in held["zoom_ticks"])
            line += ", gain " + " ".join(f"{v:.2f}" for v in held["gain_ticks"])
        report["runs"][name]["seconds"] = time.perf_counter() - t0
        print(f"{line} ({time.perf_counter() - t0:.0f} s)", flush=True)

    for name in args.variants:
        run(name, name, steps=args.steps, seed=args.seed, hold=args.hold, momentum=args.momentum)
    # A continuation, as the E1M1 teachers get new inputs: the same later batches (seed + 1) at a lower rate
    for variant in ("rope_only", "patch_action") if args.continue_steps else ():
        run(f"continued_{variant}", variant, steps=args.continue_steps, seed=args.seed + 1,
            init=models["rope_only"], lr_max=3e-4, hold=args.hold, momentum=args.momentum)
    for mult in args.new_lr_mult if args.continue_steps else ():
        run(f"continued_patch_action_lr{mult:g}x", "patch_action", steps=args.continue_steps, seed=args.seed + 1,
            init=models["rope_only"], lr_max=3e-4, new_lr_mult=mult, hold=args.hold, momentum=args.momentum)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
