"""Fork pairs: two clips from one game state that differ only in the action held at the end.

Why: the shipped teachers barely walk when told to (forward against backward right on 17% of the evaluation's
probes, zoom gain near 0, docs/EVALUATION.md), while turning works. In ordinary play the context frames
already show where the player is going, so a small model can predict the walk from them and leave the forward
input unused. A fork pair is the probe's situation with the game's own answer: the same prefix of real play,
then forward held in one clip and backward in the other (or left/right turns and strafes, or walk/stop). Their
difference is what the action alone does, and the teacher's pair loss (losses.py, `TeacherLoss.pair_loss`) asks
the model's two predictions to differ by exactly that.

How: `Game.fork_point` saves and reloads the game; the policy plays the prefix once and records its actions;
the game goes back to the fork point and replays them, so both prefixes are the same frames, or nearly: a
load does not restore everything (animated wall textures, the weapon sprite's state), so in some rooms most
replays differ from the first play in a few hundred pixels. A pair whose prefixes differ by more than
`prefix_tol`, or that runs into an episode's end, is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .actions import NOOP, Action, DIM
from .game import Game
from .policy import ExplorerPolicy

# What the two branches hold, with how often each kind is drawn. The move pair is the evaluation's probe
# (full forward against full backward for 8 ticks); the others keep turning, strafing and stopping in the mix.
KINDS: tuple[tuple[str, float], ...] = (("move", 0.45), ("go-stop", 0.15), ("turn", 0.25), ("strafe", 0.15))


@dataclass(frozen=True)
class ForkConfig:
    share: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})   # share of chunks made of pairs
    prefix: int = field(default=8, metadata={"min": 1})      # ticks of policy play both clips share
    branch: int = field(default=8, metadata={"min": 1})      # ticks of the held action that differs
    gap_min: int = field(default=20, metadata={"min": 0})    # unrecorded policy ticks before each pair,
    gap_max: int = field(default=80, metadata={"min": 0})    # so the pairs of a chunk start in different places
    # Largest mean |difference| (grey levels, all pixels and channels) between the two prefixes' frames. One
    # worker's pairs measured on the CPU (session 15): 85% exact; the rest differ by 0.65 (median) and 1.38
    # (3rd quartile) in some rooms, where dropping every inexact pair stopped the collector. A move pair's
    # branches differ by more than 2 (tests/test_forks.py).
    prefix_tol: float = field(default=1.0, metadata={"min": 0.0})
    # Share of pairs played from rest: every input released for `settle` ticks (Doom's slide takes about 33
    # to stop), then a prefix of no-ops, so the branches start a walk or turn from a still image. In play the
    # player comes to rest mostly against walls, so forward from rest hardly ever walks (docs/DATA.md).
    rest_share: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    settle: int = field(default=35, metadata={"min": 0})

    @property
    def clip(self) -> int:
        return self.prefix + self.branch


class ForkPair(NamedTuple):
    frames: np.ndarray    # (2, P + L, H, W, 3) uint8: frames[k, i] was produced by actions[k, i]
    actions: np.ndarray   # (2, P + L, 5) float32, identical over the prefix
    kind: str
    end: np.ndarray       # (2, 3) player x, y, angle after each branch (tests check the direction)


def branch_actions(kind: str, rng: np.random.Generator) -> tuple[Action, Action]:
    if kind == "move":
        return Action(forward=1.0), Action(forward=-1.0)
    if kind == "go-stop":
        return Action(forward=1.0), NOOP
    if kind == "turn":
        m = float(rng.uniform(0.5, 1.0))
        return Action(turn=-m), Action(turn=m)
    if kind == "strafe":
        return Action(strafe=-1.0), Action(strafe=1.0)
    raise ValueError(f"fork kind: {kind!r}")


def draw_kind(rng: np.random.Generator) -> str:
    names, p = zip(*KINDS)
    return str(rng.choice(names, p=np.asarray(p) / sum(p)))


def prefix_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest mean |a - b| over frames: a, b (P, H, W, 3) uint8 -> grey levels."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))                                  # (P, H, W, 3)
    return float(d.reshape(len(d), -1).mean(1).max())


def fork_pair(game: Game, policy: ExplorerPolicy, frame: np.ndarray, cfg: ForkConfig,
              rng: np.random.Generator, kind: str | None = None,
              rest: bool = False) -> tuple[ForkPair | None, np.ndarray]:
    """Play one pair from the game's current state (with `rest`, after cfg.settle ticks of no input, and with
    a prefix of no-ops). Returns (the pair or None where it was dropped, the frame the game shows now). The
    game goes on from the end of the second branch."""
    kind = kind or draw_kind(rng)
    held = branch_actions(kind, rng)
    for _ in range(cfg.settle if rest else 0):
        frame = game.step(NOOP)
        if game.tick_info.new_episode:
            return None, frame
    path = game.fork_point()
    frames = np.empty((2, cfg.clip, *frame.shape), np.uint8)
    actions = np.empty((2, cfg.clip, DIM), np.float32)
    end = np.zeros((2, 3), np.float32)
    prefix: list[Action] = []
    for k in range(2):
        if k:
            game.back_to(path)
        for i in range(cfg.clip):
            if i < cfg.prefix:
                if k == 0:
                    prefix.append(NOOP if rest else policy.act(frame, game.tick_info))
                a = prefix[i]
            else:
                a = held[k]
            frame = game.step(a)
            if game.tick_info.new_episode:      # died or left the level: the fork point is gone
                return None, frame
            frames[k, i], actions[k, i] = frame, a.to_list()
        info = game.tick_info
        end[k] = (info.x, info.y, info.angle)
    if prefix_difference(frames[0, :cfg.prefix], frames[1, :cfg.prefix]) > cfg.prefix_tol:
        return None, frame
    return ForkPair(frames, actions, kind, end), frame
