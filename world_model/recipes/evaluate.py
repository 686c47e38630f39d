"""Evaluate a world model against the real game on held-out traces (issue 3, part 6).

    python -m world_model.recipes.evaluate --model teacher --traces assets/traces/heldout-*.jsonl --out out/eval

Every trace is first played on the real game: that gives the ground-truth frame of every tick. The model
is always seeded the way the player seeds it (Session.reset_frames with the real frames and actions of the
`context` ticks before the point where it takes over), then:

1. Autoregressive: from many start points per trace (a window every `window_stride` ticks), the model
   rolls out `max(horizons)` ticks on the trace's actions; PSNR/SSIM against the game at each horizon,
   next to the frozen-frame baseline (the last seed frame repeated).
2. Teacher-forced next frame: for each tick t the cache holds the real frames before t (the sink frames
   of the episode plus the last `window` frames, what streaming would hold), and the model predicts t.
3. Action response: from many states, roll out turn-left vs turn-right and forward vs backward, on the
   model and on the game from the same state; the model scores when its image moves the same way.
4. Idle stability: from the same states, the player stands still (no-op every tick) for 70 ticks (2 s);
   PSNR against the game's own frames of those ticks, where the image settles and then hardly changes.
5. Drift: long rollouts (the longest trace, up to `drift_ticks`) on the policy's actions, `drift_rollouts`
   of them from the same seed frames with different noise (one batch): frame statistics must stay in the
   game's range and the image must keep moving while the game does, in every rollout.

Writes OUT/metrics.json, OUT/table.md, OUT/side_by_side.mp4 (drift run, model | game; skipped, with "video":
null in metrics.json, where imageio-ffmpeg is not installed), OUT/horizon.png, OUT/drift.png and per-tick CSVs
(horizon.csv, teacher_forced.csv, probes.csv, idle.csv, drift.csv); world_model/recipes/eval_report.py writes them.
The drift check's statistics are in world_model/recipes/eval_drift.py.
docs/EVALUATION.md explains every number.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .. import metrics as M
from ..actions import DIM, NOOP, Action
from ..autoencoder import Autoencoder
from ..checkpoint import CheckpointError, load as load_checkpoint
from ..game import Game, GameConfig
from ..model import WorldModel
from ..rollout import NonFiniteError, Session
from ..sampler import SamplerConfig
from ..trace import Trace, TraceError, load as load_trace
from .eval_drift import drift_stats, drift_summary
from .eval_report import write_report

CHECKPOINTS = Path(__file__).resolve().parents[2] / "assets" / "checkpoints"
# Default denoising steps per kind: the player's (settings/play.yaml session.teacher_steps and steps).
DEFAULT_STEPS = {"teacher": 16, "student": 1}
PARTS = ("ar", "tf", "response", "idle", "drift")   # --parts: autoregressive, teacher-forced, action response,
                                                   # idle stability, drift
PROBES = {"left": Action(turn=-1.0), "right": Action(turn=1.0),
          "backward": Action(forward=-1.0), "forward": Action(forward=1.0)}


@dataclass(frozen=True)
class EvalConfig:
    context: int = 8                     # real ticks that seed the model (the player's session.context)
    window: int = 14                     # KV-cache window and sink (the player's: sink + window + 1 = training clip length)
    sink: int = 1
    steps: int | None = None             # denoising steps per frame (None: DEFAULT_STEPS for the kind)
    schedule: tuple[float, ...] | None = None   # explicit times from 1 to 0; overrides steps
    sampler: str | None = None           # euler | consistency (None: euler for teachers, else consistency)
    cfg_scale: float = 1.0               # action guidance of every denoising pass (1 = none)
    context_noise: float = 0.0           # noise level of the frames in the KV cache (sampler.py; 0 = clean)
    graphs: bool = True                  # rollouts through graphs.GraphedSession: CUDA graphs on CUDA, eager on the CPU
    parts: tuple[str, ...] = PARTS       # which evaluations run (a subset is quicker; the rest read as skipped)
    horizons: tuple[int, ...] = (1, 8, 32, 128)
    window_stride: int = 32              # ticks between autoregressive window starts
    max_windows: int = 24                # per trace, evenly spread
    tf_ticks: int = 400                  # teacher-forced ticks per trace, evenly spread
    probe_stride: int = 48               # ticks between action-response states
    max_probes: int = 12                 # states per trace
    turn_ticks: int = 3                  # ~15 px of pan per probe; ~30 px between left and right (search: 48)
    move_ticks: int = 8
    idle_horizons: tuple[int, ...] = (1, 8, 35, 70)   # no-op ticks from each probe state, ascending (70 = 2 s)
    drift_ticks: int = 2000
    drift_rollouts: int = 4              # one rollout's in-range share varied 69-89% with the noise seed (session 12)
    batch: int = 32                      # windows / ticks / states rolled out together
    seed: int = 0
    video_scale: int = 2

    def quick(self) -> "EvalConfig":
        """Everything small, for CPU tests and smoke runs."""
        return replace(self, horizons=(1, 2, 4), window_stride=4, max_windows=2, tf_ticks=4, probe_stride=8,
                       max_probes=1, turn_ticks=2, move_ticks=3, idle_horizons=(1, 3), drift_ticks=12,
                       drift_rollouts=min(2, self.drift_rollouts), batch=4,
                       video_scale=1, steps=self.steps or 2)


@dataclass
class Played:
    """A trace played on the real game: frames[i] is the frame produced by actions[i]."""
    name: str
    trace: Trace
    frames: np.ndarray           # (T, H, W, 3) uint8
    actions: np.ndarray          # (T, 5) float32
    starts: np.ndarray           # (T,) bool: frames[i] opens a new episode (death or exit restarted the game)

    def clean(self, lo: int, hi: int) -> bool:
        """No episode cut between frames lo and hi - 1 (a cut AT lo is fine: that frame starts it)."""
        return not self.starts[lo + 1:hi].any()


@dataclass
class Models:
    model: WorldModel
    autoencoder: Autoencoder
    kind: str
    device: torch.device
    dtype: torch.dtype
    sampler: SamplerConfig
    step_kw: dict[str, Any] = field(default_factory=dict)   # steps= or schedule= for Session.step

    def session(self, cfg: EvalConfig, seed: int, rollout: bool = False) -> Session:
        """A fresh Session. `rollout`: it will run many ticks at one batch size, so on CUDA (with cfg.graphs)
        its passes are captured once and replayed as graphs: the same frames (noise is drawn eagerly from the
        same generator), 3-5x faster at batch 1, where a pass is launch-bound."""
        kw = dict(window=cfg.window, sink=cfg.sink, device=self.device, dtype=self.dtype, seed=seed,
                  autoencoder=self.autoencoder, sampler=self.sampler)
        if rollout and cfg.graphs:   # on the CPU the same static step functions run uncaptured (tested there)
            from ..graphs import GraphedSession
            return GraphedSession(self.model, capture=self.device.type == "cuda", **kw)
        return Session(self.model, **kw)


# ---------------------------------------------------------------------------------------------------------
#                                          Loading and the game
# ---------------------------------------------------------------------------------------------------------

def load_models(model: str | Path, autoencoder: str | Path, cfg: EvalConfig, device: str) -> Models:
    """`model` is 'teacher', 'student' or a checkpoint path."""
    path = CHECKPOINTS / f"{model}.safetensors" if str(model) in ("teacher", "student") else Path(model)
    tensors, config, meta = load_checkpoint(path)
    kind = meta.get("kind", "")
    if kind not in ("teacher", "student"):
        raise CheckpointError(f"{path}: a {kind!r} checkpoint, expected a teacher or student")
    wm = WorldModel.from_tensors(config, tensors).to(device).eval()
    ae = Autoencoder.load(autoencoder, device=device)
    if tuple(ae.latent_shape) != tuple(wm.config.latent_shape):
        raise CheckpointError(f"{autoencoder}: latent {tuple(ae.latent_shape)} does not fit the model's "
                              f"{tuple(wm.config.latent_shape)}")
    sampler = SamplerConfig(kind=cfg.sampler or ("euler" if kind == "teacher" else "consistency"),
                            cfg_scale=cfg.cfg_scale, context_noise=cfg.context_noise)
    step_kw = {"schedule": list(cfg.schedule)} if cfg.schedule else {"steps": cfg.steps or DEFAULT_STEPS[kind]}
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return Models(wm, ae, kind, torch.device(device), dtype, sampler, step_kw)


def play_trace(trace: Trace, name: str, game: Game) -> Played:
    game.reset(trace.seed)
    frames, starts = [], []
    for a in trace.actions:
        frames.append(game.step(a))
        starts.append(game.tick_info.new_episode)
    return Played(name, trace, np.stack(frames), np.array([a.to_list() for a in trace.actions], np.float32),
                  np.array(starts))


def game_probe(game: Game, played: Played, s: int, action: Action, keep: Sequence[int]) -> np.ndarray | None:
    """The game's frames (K, H, W, 3) after keep[k] ticks (ascending) of `action`, from the trace replayed to tick s;
    None if an episode ended on the way. A fresh DoomGame every time: replays are bit-exact, savestates are not."""
    game.reset(played.trace.seed)
    for a in played.trace.actions[:s]:
        game.step(a)
    frames = []
    for i in range(1, max(keep) + 1):
        frame = game.step(action)
        if game.tick_info.new_episode:
            return None
        if i in keep:
            frames.append(frame)
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------------------
#                                          1. Autoregressive
# ---------------------------------------------------------------------------------------------------------

def spread(candidates: Sequence[int], most: int) -> list[int]:
    """At most `most` items of a sorted list, evenly spread (deterministic)."""
    if len(candidates) <= most:
        return list(candidates)
    return [candidates[round(i * (len(candidates) - 1) / max(1, most - 1))] for i in range(most)]


def seed_batch(m: Models, cfg: EvalConfig, played: Sequence[Played], starts: Sequence[int], seed: int) -> Session:
    """A Session seeded, per batch row, with the real frames and actions of the `context` ticks before s."""
    session = m.session(cfg, seed, rollout=True)
    frames = np.stack([p.frames[s - cfg.context:s] for p, s in zip(played, starts)])       # (B, ctx, H, W, 3)
    actions = np.stack([p.actions[s - cfg.context:s] for p, s in zip(played, starts)])     # (B, ctx, 5)
    with torch.no_grad():
        session.reset_frames(frames, torch.from_numpy(actions))
    return session


def rollout(m: Models, session: Session, actions: np.ndarray) -> tuple[torch.Tensor, int]:
    """Step through actions (B, T, 5); returns frames (B, T, H, W, 3) uint8 on the device and the tick of a
    non-finite output (T if none; frames from there on are black)."""
    B, T = actions.shape[:2]
    out = None
    for i in range(T):
        try:
            with torch.no_grad():
                frame = session.decode(session.step(torch.from_numpy(actions[:, i]), **m.step_kw))  # (B, H, W, 3)
        except NonFiniteError:
            return out, i
        if out is None:
            out = torch.zeros((B, T, *frame.shape[1:]), dtype=torch.uint8, device=frame.device)
        out[:, i] = frame
    return out, T


def autoregressive(m: Models, played: Sequence[Played], cfg: EvalConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Mean curves over all windows, and one row per window (trace, start tick, PSNR and the model's and the
    game's mean pixel at each horizon): the mean alone hides whether a few windows run away or all sag."""
    H = max(cfg.horizons)
    windows = []
    for p in played:
        ok = [s for s in range(cfg.context, len(p.frames) - H + 1, cfg.window_stride) if p.clean(s - cfg.context, s + H)]
        windows += [(p, s) for s in spread(ok, cfg.max_windows)]
    n = len(windows)
    curves = {k: np.zeros((n, H)) for k in ("psnr", "ssim", "frozen_psnr", "frozen_ssim")}
    # mean and std of the pixels per window and tick: brightening, and contrast that grows or fades
    brightness = {k: np.zeros((n, H)) for k in ("model_mean", "game_mean", "model_std", "game_std")}
    faults = 0
    for b0 in tqdm(range(0, n, cfg.batch), desc="autoregressive", leave=False):
        ps, ss = zip(*windows[b0:b0 + cfg.batch])
        session = seed_batch(m, cfg, ps, ss, cfg.seed + b0)
        frames, ok = rollout(m, session, np.stack([p.actions[s:s + H] for p, s in zip(ps, ss)]))
        faults += len(ps) * (ok < H)
        truth = torch.from_numpy(np.stack([p.frames[s:s + H] for p, s in zip(ps, ss)])).to(m.device)  # (B, H, ...)
        last = torch.from_numpy(np.stack([p.frames[s - 1] for p, s in zip(ps, ss)])).to(m.device)    # (B, ...)
        for i in range(H):
            rows = slice(b0, b0 + len(ps))
            if i < ok:   # a non-finite frame and all after it score 0 (worst), never NaN
                curves["psnr"][rows, i] = M.psnr(frames[:, i], truth[:, i]).cpu().numpy()
                curves["ssim"][rows, i] = M.ssim(frames[:, i], truth[:, i]).cpu().numpy()
                f = frames[:, i].float().flatten(1)
                brightness["model_mean"][rows, i] = f.mean(1).cpu().numpy()
                brightness["model_std"][rows, i] = f.std(1).cpu().numpy()
            g = truth[:, i].float().flatten(1)
            brightness["game_mean"][rows, i] = g.mean(1).cpu().numpy()
            brightness["game_std"][rows, i] = g.std(1).cpu().numpy()
            curves["frozen_psnr"][rows, i] = M.psnr(last, truth[:, i]).cpu().numpy()
            curves["frozen_ssim"][rows, i] = M.ssim(last, truth[:, i]).cpu().numpy()
    mean = {k: v.mean(0) if n else np.full(H, np.nan) for k, v in curves.items()}
    rows = [{"trace": p.name, "start": s,
             **{f"{k}_{h}": float(v[j, h - 1]) for h in cfg.horizons for k, v in (*curves.items(), *brightness.items())
                if not k.startswith("frozen_ssim")}}
            for j, (p, s) in enumerate(windows)]
    return ({"windows": n, "nonfinite_windows": faults, "curve": {k: v.tolist() for k, v in mean.items()},
             "horizons": {str(h): {k: float(mean[k][h - 1]) for k in mean} for h in cfg.horizons}}, rows)


# ---------------------------------------------------------------------------------------------------------
#                                          2. Teacher forced
# ---------------------------------------------------------------------------------------------------------

def encode_all(m: Models, frames: np.ndarray, batch: int = 64) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> latents (T, C, h, w) on the device."""
    out = []
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(frames[i:i + batch]).to(m.device).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad(), torch.autocast("cuda", m.dtype, enabled=m.device.type == "cuda"):
            out.append(m.autoencoder.encode(x).float())
    return torch.cat(out)


def context_indices(p: Played, t: int, cfg: EvalConfig) -> list[int]:
    """The real frames a streaming cache would hold when predicting frame t: the episode's first `sink`
    frames plus the last `window` frames before t."""
    cut = np.flatnonzero(p.starts[:t])
    e = int(cut[-1]) if len(cut) else 0
    sink = list(range(e, min(e + cfg.sink, t)))
    return sink + list(range(max(e + cfg.sink, t - cfg.window), t))


def teacher_forced(m: Models, played: Sequence[Played], cfg: EvalConfig) -> tuple[dict[str, Any], list[dict]]:
    """Each batch re-seeds the Session (reset) with true latents, then steps once: no predicted frame ever
    enters the cache. Ticks with the same context length share a batch."""
    rows: list[dict] = []
    for p in played:
        z = encode_all(m, p.frames)                                                # (T, C, h, w)
        ticks = spread([t for t in range(cfg.context, len(p.frames)) if not p.starts[t]], cfg.tf_ticks)
        groups: dict[int, list[int]] = {}
        for t in ticks:
            groups.setdefault(len(context_indices(p, t, cfg)), []).append(t)
        for _, ts in sorted(groups.items()):
            for b0 in range(0, len(ts), cfg.batch):
                rows += _teacher_forced_batch(m, p, z, ts[b0:b0 + cfg.batch], cfg)
    rows.sort(key=lambda r: (r["trace"], r["tick"]))
    summary = {"ticks": len(rows)}
    for k in ("psnr", "copy_last_psnr", "autoencoder_psnr"):
        summary[k] = M.mean_over([r[k] for r in rows if not math.isnan(r[k])])
    summary["nonfinite"] = sum(math.isnan(r["psnr"]) for r in rows)
    return summary, rows


def _teacher_forced_batch(m: Models, p: Played, z: torch.Tensor, ts: list[int], cfg: EvalConfig) -> list[dict]:
    idx = torch.tensor([context_indices(p, t, cfg) for t in ts])                      # (B, L)
    session = m.session(cfg, cfg.seed + ts[0])
    with torch.no_grad():
        session.reset(z[idx.to(m.device)], torch.from_numpy(p.actions[idx.numpy()]))  # (B, L, C, h, w)
        truth = torch.from_numpy(p.frames[ts]).to(m.device)                          # (B, H, W, 3)
        copy = M.psnr(torch.from_numpy(p.frames[[t - 1 for t in ts]]).to(m.device), truth)
        recon = M.psnr(session.decode(z[ts]), truth)
        try:
            pred = M.psnr(session.decode(session.step(torch.from_numpy(p.actions[ts]), **m.step_kw)), truth)
        except NonFiniteError:
            pred = torch.full((len(ts),), float("nan"))
    return [{"trace": p.name, "tick": t, "psnr": float(a), "copy_last_psnr": float(b), "autoencoder_psnr": float(c)}
            for t, a, b, c in zip(ts, pred.tolist(), copy.tolist(), recon.tolist())]


# ---------------------------------------------------------------------------------------------------------
#                                          3. Action response
# ---------------------------------------------------------------------------------------------------------

def probe_ticks(name: str, cfg: EvalConfig) -> int:
    return cfg.turn_ticks if name in ("left", "right") else cfg.move_ticks


def probe_states(played: Sequence[Played], cfg: EvalConfig) -> list[tuple[Played, int]]:
    states = []
    for p in played:
        ok = [s for s in range(cfg.context, len(p.frames) + 1, cfg.probe_stride) if p.clean(s - cfg.context, s)]
        states += [(p, s) for s in spread(ok, cfg.max_probes)]
    return states


def game_probes(states: Sequence[tuple[Played, int]], cfg: EvalConfig,
                game_cfg: GameConfig = GameConfig()) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Final game frame of each probe from each state (N, H, W, 3), and which states gave all four.

    One game per probe kind, each in its own thread: ViZDoom runs its engine in a separate process, so
    the four replays run in parallel."""
    def run(kind: str) -> list[np.ndarray | None]:
        workdir = os.path.join(Game(game_cfg).workdir, f"eval-{kind}")
        with Game(game_cfg, workdir) as game:
            return [game_probe(game, p, s, PROBES[kind], [probe_ticks(kind, cfg)]) for p, s in states]

    with ThreadPoolExecutor(len(PROBES)) as pool:
        got = dict(zip(PROBES, pool.map(run, PROBES)))
    valid = np.array([all(got[k][i] is not None for k in PROBES) for i in range(len(states))], bool)
    finals = {k: np.stack([p.frames[s - 1] if f is None else f[-1] for f, (p, s) in zip(v, states)])
              for k, v in got.items()}
    return finals, valid


def model_probes(m: Models, states: Sequence[tuple[Played, int]], cfg: EvalConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Same probes on the model: seed at each state, snapshot, and restore before each probe, so all four
    start from the same cache and the same noise."""
    finals = {k: [] for k in PROBES}
    valid = []
    for b0 in tqdm(range(0, len(states), cfg.batch), desc="probes (model)", leave=False):
        ps, ss = zip(*states[b0:b0 + cfg.batch])
        session = seed_batch(m, cfg, ps, ss, cfg.seed + b0)
        start = session.snapshot()
        ok = np.ones(len(ps), bool)
        for k, a in PROBES.items():
            session.restore(start)
            n = probe_ticks(k, cfg)
            frames, done = rollout(m, session, np.tile(np.array(a.to_list(), np.float32), (len(ps), n, 1)))
            ok &= done == n
            finals[k].append(frames[:, -1].cpu().numpy() if done == n else np.stack([p.frames[s - 1] for p, s in zip(ps, ss)]))
        valid.append(ok)
    return {k: np.concatenate(v) for k, v in finals.items()}, np.concatenate(valid)


# Thresholds of metrics.agreement: the game must move clearly, the model at least one search step and a
# quarter of the game's response.
TURN_MIN_GAME, TURN_MIN_MODEL = 4.0, 2.0          # pixels of pan between the left and right probes
MOVE_MIN_GAME, MOVE_MIN_MODEL = 0.05, 0.024       # log scale between the backward and forward probes


def responses(finals: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Pairwise responses (N,): pan from the turn-left to the turn-right frame (px; negative for the game),
    zoom from the backward to the forward frame (log scale; positive). Comparing the two probes with each
    other cancels the momentum the player carried into the state."""
    f = {k: torch.from_numpy(v).to(device) for k, v in finals.items()}
    return {"turn": M.estimate_shift(f["left"], f["right"], max_shift=48),
            "move": M.estimate_zoom(f["backward"], f["forward"], max_log_scale=0.6)}


def action_response(model_finals: dict[str, np.ndarray], game_finals: dict[str, np.ndarray], valid: np.ndarray,
                    device: torch.device | str = "cpu") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Score = fraction of scorable (state, probe pair) where the model's response agrees with the game's."""
    device = torch.device(device)
    mod, ref = responses(model_finals, device), responses(game_finals, device)
    keep = torch.from_numpy(valid).to(device)
    out, per = {}, {}
    limits = {"turn": (TURN_MIN_GAME, TURN_MIN_MODEL), "move": (MOVE_MIN_GAME, MOVE_MIN_MODEL)}
    for k, (lo_game, lo_model) in limits.items():
        scorable, correct = M.agreement(mod[k], ref[k], min_reference=lo_game, min_model=lo_model)
        scorable &= keep
        correct &= keep
        # gain: the model's response as a fraction of the game's, median over the scorable states (negative:
        # the wrong way). The score says whether the model moves the right way; the gain says how far.
        gain = (mod[k][scorable] / ref[k][scorable]).median() if scorable.any() else torch.tensor(float("nan"))
        out[k] = {"score": float(correct.sum() / scorable.sum()) if scorable.any() else float("nan"),
                  "correct": int(correct.sum()), "scored": int(scorable.sum()), "states": int(len(valid)),
                  "gain": float(gain)}
        per.update({f"{k}_model": mod[k].cpu().numpy(), f"{k}_game": ref[k].cpu().numpy(),
                    f"{k}_scorable": scorable.cpu().numpy(), f"{k}_correct": correct.cpu().numpy()})
    scored = out["turn"]["scored"] + out["move"]["scored"]
    out["combined"] = {"score": (out["turn"]["correct"] + out["move"]["correct"]) / scored if scored else float("nan"),
                       "correct": out["turn"]["correct"] + out["move"]["correct"], "scored": scored}
    return out, per


# ---------------------------------------------------------------------------------------------------------
#                                          4. Idle stability
# ---------------------------------------------------------------------------------------------------------

def game_idle(states: Sequence[tuple[Played, int]], cfg: EvalConfig,
              game_cfg: GameConfig = GameConfig()) -> tuple[np.ndarray, np.ndarray]:
    """The game's frames after each of idle_horizons no-op ticks from each state (N, K, H, W, 3), and which
    states stayed in one episode. The image settles (momentum, view bob) in ~35 ticks, then hardly changes."""
    with Game(game_cfg, os.path.join(Game(game_cfg).workdir, "eval-idle")) as game:
        got = [game_probe(game, p, s, NOOP, cfg.idle_horizons) for p, s in states]
    blank = np.zeros((len(cfg.idle_horizons), *states[0][0].frames.shape[1:]), np.uint8)
    return np.stack([blank if f is None else f for f in got]), np.array([f is not None for f in got], bool)


def model_idle(m: Models, states: Sequence[tuple[Played, int]], cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """The same on the model, seeded as for the action probes: frames (N, K, H, W, 3), and per state the
    number of finite ticks (frames from the first non-finite one on are black)."""
    H, keep = max(cfg.idle_horizons), [h - 1 for h in cfg.idle_horizons]
    frames, finite = [], []
    for b0 in tqdm(range(0, len(states), cfg.batch), desc="idle (model)", leave=False):
        ps, ss = zip(*states[b0:b0 + cfg.batch])
        session = seed_batch(m, cfg, ps, ss, cfg.seed + b0)
        out, ok = rollout(m, session, np.zeros((len(ps), H, DIM), np.float32))
        frames.append(np.zeros((len(ps), len(keep), *ps[0].frames.shape[1:]), np.uint8) if out is None
                      else out[:, keep].cpu().numpy())
        finite.append(np.full(len(ps), ok))
    return np.concatenate(frames), np.concatenate(finite)


def idle_stats(model: np.ndarray, game: np.ndarray, last: np.ndarray, valid: np.ndarray, finite: np.ndarray,
               horizons: Sequence[int]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """PSNR of the model's frames (N, K, H, W, 3) and of the frozen frame (the last seed frame, (N, H, W, 3))
    against the game's (N, K, H, W, 3) at each idle horizon; means over the `valid` states. A frame at or
    after a non-finite tick scores 0."""
    keep = torch.from_numpy(valid)
    out: dict[str, Any] = {"states": int(valid.sum()), "nonfinite_states": int((finite < max(horizons))[valid].sum()),
                           "horizons": {}}
    per: dict[str, np.ndarray] = {}
    for k, h in enumerate(horizons):
        mod = torch.where(torch.from_numpy(finite >= h), M.psnr(model[:, k], game[:, k]), 0.0)   # (N,)
        frozen = M.psnr(last, game[:, k])                                                        # (N,)
        per[f"psnr_{h}"], per[f"frozen_psnr_{h}"] = mod.numpy(), frozen.numpy()
        out["horizons"][str(h)] = {"psnr": float(mod[keep].mean()) if keep.any() else float("nan"),
                                   "frozen_psnr": float(frozen[keep].mean()) if keep.any() else float("nan")}
    return out, per


# ---------------------------------------------------------------------------------------------------------
#                                          5. Drift
# ---------------------------------------------------------------------------------------------------------

def drift(m: Models, p: Played, cfg: EvalConfig) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Roll the model from the trace's first context ticks over up to drift_ticks of its actions,
    cfg.drift_rollouts times in one batch (the rows draw different noise). Returns the summary over the
    rollouts, the first rollout's frames (the video and drift.csv) and the game's."""
    T = min(cfg.drift_ticks, len(p.frames) - cfg.context)
    R = cfg.drift_rollouts
    session = seed_batch(m, cfg, [p] * R, [cfg.context] * R, cfg.seed)
    actions = p.actions[cfg.context:cfg.context + T]
    frames, ok = rollout(m, session, np.repeat(actions[None], R, axis=0))
    model = frames[:, :ok].cpu().numpy() if ok else np.zeros((R, 0, *p.frames.shape[1:]), np.uint8)
    game = p.frames[cfg.context:cfg.context + T]
    runs = [drift_stats(model[r], game, actions, T) for r in range(R)]
    return drift_summary(runs), model[0], game


# ---------------------------------------------------------------------------------------------------------
#                                          Recipe
# ---------------------------------------------------------------------------------------------------------

def evaluate(m: Models, traces: Sequence[str | Path], out: Path, cfg: EvalConfig, *, model_name: str = "",
             game_cfg: GameConfig = GameConfig()) -> dict[str, Any]:
    """Run all five evaluations and write every output file into `out`. Returns the metrics dict."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    with Game(game_cfg) as game:
        played = [play_trace(load_trace(t, world=game_cfg.world), Path(t).stem, game) for t in traces]
    lap("game")
    ar = tf = resp = idle = dr = None      # a part left out of cfg.parts stays None ("skipped" in the table)
    window_rows, tf_rows, per, idle_per = [], [], {}, {}
    model_frames = game_frames = np.zeros((0, 1, 1, 3), np.uint8)
    if "ar" in cfg.parts:
        ar, window_rows = autoregressive(m, played, cfg)
        lap("autoregressive")
    if "tf" in cfg.parts:
        tf, tf_rows = teacher_forced(m, played, cfg)
        lap("teacher_forced")
    states = probe_states(played, cfg) if {"response", "idle"} & set(cfg.parts) else []
    if "response" in cfg.parts:
        game_finals, game_ok = game_probes(states, cfg, game_cfg)
        model_finals, model_ok = model_probes(m, states, cfg)
        resp, per = action_response(model_finals, game_finals, game_ok, m.device)
        resp["nonfinite_states"] = int((~model_ok).sum())
        lap("action_response")
    if "idle" in cfg.parts:
        idle_game, idle_ok = game_idle(states, cfg, game_cfg)
        idle_model, finite = model_idle(m, states, cfg)
        last = np.stack([p.frames[s - 1] for p, s in states])
        idle, idle_per = idle_stats(idle_model, idle_game, last, idle_ok, finite, cfg.idle_horizons)
        lap("idle")
    if "drift" in cfg.parts:
        longest = max(played, key=lambda p: len(p.frames))
        dr, model_frames, game_frames = drift(m, longest, cfg)
        dr["trace"] = longest.name
        lap("drift")

    sampling = (f"schedule {list(cfg.schedule)}" if cfg.schedule else f"{m.step_kw['steps']} steps") + f" {m.sampler.kind}"
    if m.sampler.cfg_scale != 1.0:
        sampling += f" cfg {m.sampler.cfg_scale:g}"
    res = {"model": model_name, "kind": m.kind, "sampling": sampling, "device": str(m.device),
           "dtype": str(m.dtype).removeprefix("torch."), "traces": [p.name for p in played],
           "config": asdict(cfg), "autoregressive": ar, "teacher_forced": tf, "action_response": resp,
           "idle": idle, "drift": dr, "seconds": seconds}
    probe_rows = [{"trace": p.name, "tick": s, **{k: v[i].item() for k, v in per.items()}}
                  for i, (p, s) in enumerate(states)] if resp else []
    idle_rows = [{"trace": p.name, "tick": s, "valid": bool(idle_ok[i]),
                  **{k: v[i].item() for k, v in idle_per.items()}} for i, (p, s) in enumerate(states)] if idle else []
    write_report(out, res, tf_rows=tf_rows, probe_rows=probe_rows, idle_rows=idle_rows, window_rows=window_rows,
                 model_frames=model_frames,
                 game_frames=game_frames,
                 start=cfg.context, horizons=cfg.horizons, video_scale=cfg.video_scale)
    return res


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="teacher | student | a checkpoint path")
    ap.add_argument("--autoencoder", default=str(CHECKPOINTS / "autoencoder.safetensors"))
    ap.add_argument("--traces", nargs="+", required=True, help="trace files (a quoted glob is expanded too)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, help=f"denoising steps per frame (default: teacher "
                    f"{DEFAULT_STEPS['teacher']}, student {DEFAULT_STEPS['student']})")
    ap.add_argument("--schedule", help="explicit times, e.g. 1,0.8333,0 (overrides --steps)")
    ap.add_argument("--sampler", choices=("euler", "consistency"))
    ap.add_argument("--cfg", type=float, default=1.0, help="action guidance scale (1 = none; costs a second pass)")
    ap.add_argument("--context-noise", type=float, default=0.0,
                    help="noise level at which frames enter the KV cache (0 = clean, the default)")
    ap.add_argument("--no-graphs", action="store_true", help="eager rollouts on CUDA too")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", type=int, default=EvalConfig.context)
    ap.add_argument("--window", type=int, default=EvalConfig.window)
    ap.add_argument("--sink", type=int, default=EvalConfig.sink)
    ap.add_argument("--drift-ticks", type=int, default=EvalConfig.drift_ticks)
    ap.add_argument("--drift-rollouts", type=int, default=EvalConfig.drift_rollouts,
                    help="drift rollouts with different noise, in one batch (the check must hold in all)")
    ap.add_argument("--batch", type=int, default=EvalConfig.batch)
    ap.add_argument("--max-windows", type=int, default=EvalConfig.max_windows,
                    help="autoregressive windows per trace, evenly spread (fewer is quicker)")
    ap.add_argument("--tf-ticks", type=int, default=EvalConfig.tf_ticks,
                    help="teacher-forced ticks per trace, evenly spread (fewer is quicker)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="tiny counts everywhere, for CPU smoke tests")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    traces = sorted({f for t in args.traces for f in (glob.glob(t) or [t])})
    schedule = tuple(float(x) for x in args.schedule.split(",")) if args.schedule else None
    parts = tuple(x for x in args.parts.split(",") if x)
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"error: --parts takes a comma list of {','.join(PARTS)}, got {args.parts!r}")
    cfg = EvalConfig(context=args.context, window=args.window, sink=args.sink, steps=args.steps, schedule=schedule,
                     sampler=args.sampler, cfg_scale=args.cfg,
                     context_noise=args.context_noise, graphs=not args.no_graphs,
                     drift_ticks=args.drift_ticks, drift_rollouts=args.drift_rollouts, batch=args.batch,
                     seed=args.seed, parts=parts,
                     max_windows=args.max_windows, tf_ticks=args.tf_ticks)
    if args.quick:
        cfg = replace(cfg.quick(), drift_ticks=min(args.drift_ticks, cfg.quick().drift_ticks))
    try:
        m = load_models(args.model, args.autoencoder, cfg, args.device)
        res = evaluate(m, traces, Path(args.out), cfg, model_name=args.model)
    except (CheckpointError, TraceError) as e:
        raise SystemExit(f"error: {str(e).splitlines()[0]}") from None
    print((Path(args.out) / "table.md").read_text(), end="")
    files = sorted(f.name for f in Path(args.out).iterdir() if f.suffix in (".json", ".md", ".mp4", ".png", ".csv"))
    print(f"wrote {args.out}: {' '.join(files)} ({res['seconds']})")


if __name__ == "__main__":
    main()
