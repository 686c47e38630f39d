"""Parallel data collection: many ViZDoom processes playing the exploration policy.

Each worker owns a game, a policy and a few shared-memory slots. It fills a slot with `chunk_ticks`
consecutive ticks (frames, the actions that produced them, episode starts), hands the slot index to
the parent through a queue and moves on to a free slot. The parent copies the chunk out and gives
the slot back, so frames cross process boundaries with one memcpy and no pickling.

Alignment: actions[i] is the action applied on the tick that produced frames[i]; where starts[i] is
True, frames[i] opens an episode and actions[i] is the no-op. A chunk with `forks` set holds fork pairs
instead (forks.py): each clip opens with a start, and its first action is the one that produced it.

    with Collector(CollectConfig(workers=16), seed=0) as col:
        for chunk in col:          # forever, until you break
            ...
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import dataclass, field, replace
from multiprocessing import shared_memory
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from .actions import DIM, NOOP, Action
from .forks import ForkConfig, fork_pair
from .game import WORKDIR, Game, GameConfig, map_sectors
from .policy import ExplorerPolicy, PolicyConfig, RoutePlanner


@dataclass(frozen=True)
class CollectConfig:
    workers: int = field(default=16, metadata={"min": 1, "max": 256})
    chunk_ticks: int = field(default=256, metadata={"min": 8})
    slots: int = field(default=4, metadata={"min": 2})             # shared-memory slots per worker
    pin: bool = True                                                # one core per worker (ViZDoom runs faster)
    mix: bool = True                                                # each worker perturbs the policy config
    spawn_prob: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})  # episodes started anywhere
    game: GameConfig = GameConfig(buffers=True)
    policy: PolicyConfig = PolicyConfig()
    fork: ForkConfig = ForkConfig()                                 # chunks of fork pairs (forks.py)

    def __post_init__(self) -> None:
        if self.fork.share > 0 and self.chunk_ticks % (2 * self.fork.clip):
            raise ValueError(f"chunk_ticks: must be a multiple of 2 x (fork.prefix + fork.branch) = "
                             f"{2 * self.fork.clip} when fork.share > 0, got {self.chunk_ticks}")


class Chunk(NamedTuple):
    frames: np.ndarray    # (N, H, W, 3) uint8
    actions: np.ndarray   # (N, 5) float32
    starts: np.ndarray    # (N,) bool
    worker: int
    pos: np.ndarray       # (N, 3) float32: player x, y, angle (for coverage reports; not a model input)
    forks: bool = False   # fork pairs: clips of fork.clip ticks, each pair's two clips side by side


def worker_policy(base: PolicyConfig, seed: int, mix: bool) -> PolicyConfig:
    """A per-worker variation of the policy, so the data holds several play styles."""
    if not mix:
        return base
    rng = np.random.default_rng([seed, 7])
    lo = rng.uniform(0.2, 0.6)
    return replace(base, speed_min=lo, speed_max=float(rng.uniform(lo + 0.2, 1.0)),
                   turn_gain=float(rng.uniform(0.7, 1.4)), smoothing=float(rng.uniform(0.2, 0.6)),
                   probe_prob=float(rng.uniform(0.005, 0.03)), strafe_prob=float(rng.uniform(0.1, 0.5)),
                   fight=bool(rng.random() < 0.85),
                   # drawn last, so the other fields stay what they were for a seed; some workers idle
                   # 4x more than others (0.4x to 1.6x the base rate), and idle_prob 0 stays 0
                   idle_prob=float(base.idle_prob * rng.uniform(0.4, 1.6)),
                   # and move probes 0.5x to 1.5x the base rate (drawn after the idle rate, same reason)
                   move_prob=float(base.move_prob * rng.uniform(0.5, 1.5)))


def play(game: Game, policy: ExplorerPolicy, seed: int, ticks: int,
         spawn_prob: float = 0.0) -> Iterator[tuple[np.ndarray, Action, bool]]:
    """Policy play on one game: yields (frame, action applied on the tick that led to it, episode start).

    The first item comes from reset() and carries the no-op. Where a death or exit restarted the game,
    the frame opens the new episode and the action is the one applied on the old episode's last tick.
    With `spawn_prob`, that share of episodes starts at a random standing spot of the map instead of
    the level start (a warp right after the reset), so data covers rooms that the policy rarely walks
    to before it dies; traces use spawn_prob 0, so they replay from reset(seed) alone.
    """
    rng = np.random.default_rng([seed, 11])
    spots = policy.planner.spawn_points() if spawn_prob > 0 and policy.planner is not None else None

    def start(frame: np.ndarray) -> np.ndarray:
        if spots is not None and len(spots) and rng.random() < spawn_prob:
            x, y = spots[rng.integers(len(spots))]
            return game.warp(float(x), float(y))
        return frame

    frame = start(game.reset(seed))
    yield frame, NOOP, True
    for _ in range(ticks - 1):
        action = policy.act(frame, game.tick_info)
        frame = game.step(action)
        if game.tick_info.new_episode:
            frame = start(frame)
        yield frame, action, game.tick_info.new_episode


def _slot_layout(cfg: CollectConfig) -> tuple[tuple[int, ...], int, int, int]:
    shape = (cfg.chunk_ticks, cfg.game.height, cfg.game.width, 3)
    nf = int(np.prod(shape))
    na = cfg.chunk_ticks * DIM * 4
    return shape, nf, na, nf + na + cfg.chunk_ticks * 12 + cfg.chunk_ticks


def _views(buf, cfg: CollectConfig):
    shape, nf, na, _ = _slot_layout(cfg)
    frames = np.ndarray(shape, np.uint8, buf, 0)
    actions = np.ndarray((cfg.chunk_ticks, DIM), np.float32, buf, nf)
    pos = np.ndarray((cfg.chunk_ticks, 3), np.float32, buf, nf + na)
    starts = np.ndarray((cfg.chunk_ticks,), np.bool_, buf, nf + na + cfg.chunk_ticks * 12)
    return frames, actions, starts, pos


def _worker(idx: int, cfg: CollectConfig, seed: int, names: list[str], free: mp.Queue, done: mp.Queue,
            stop: mp.Event) -> None:
    try:
        if cfg.pin and hasattr(os, "sched_setaffinity"):
            cpus = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpus[idx % len(cpus)]})   # inherited by the engine process
        shms = [shared_memory.SharedMemory(name=n) for n in names]
        views = [_views(s.buf, cfg) for s in shms]
        game = Game(cfg.game, workdir=os.path.join(WORKDIR, f"w{idx}"))   # one per worker: no shared ini
        planner = RoutePlanner(map_sectors(cfg.game, game.workdir))
        policy = ExplorerPolicy(worker_policy(cfg.policy, seed, cfg.mix), seed, planner)
        stream = play(game, policy, seed, ticks=2**62, spawn_prob=cfg.spawn_prob)
        fork_rng = np.random.default_rng([seed, 13])
        tally = ForkTally()
        last = None
        while not stop.is_set():
            try:
                slot = free.get(timeout=0.5)
            except queue.Empty:
                continue
            frames, actions, starts, pos = views[slot]
            forks = cfg.fork.share > 0 and last is not None and fork_rng.random() < cfg.fork.share
            if forks:
                last = _fork_chunk(cfg, game, policy, stream, last, fork_rng, tally, frames, actions, starts, pos)
            else:
                for i in range(cfg.chunk_ticks):
                    f, a, s = next(stream)
                    info = game.tick_info
                    pos[i] = (info.x, info.y, info.angle)
                    frames[i] = f
                    actions[i] = NOOP.to_list() if s else a.to_list()   # a start frame follows no action
                    starts[i] = s
                last = f
            done.put((idx, slot, forks))
        game.close()
        del views
        for s in shms:
            s.close()
    except Exception:
        done.put((idx, traceback.format_exc(), False))


@dataclass
class ForkTally:
    made: int = 0       # pairs this worker has made
    in_a_row: int = 0   # pairs dropped since the last one made


def _fork_chunk(cfg: CollectConfig, game: Game, policy: ExplorerPolicy, stream, last: np.ndarray,
                rng: np.random.Generator, tally: ForkTally, frames, actions, starts, pos) -> np.ndarray:
    """Fill a slot with fork pairs: clip k of pair j at ticks (2j + k) * clip.., each clip opening with a
    start (a boundary for clip sampling). Between pairs the policy plays on unrecorded, so each pair starts
    somewhere else. Returns the frame the game shows now."""
    clip, i = cfg.fork.clip, 0
    while i < cfg.chunk_ticks:
        for _ in range(int(rng.integers(cfg.fork.gap_min, cfg.fork.gap_max + 1))):
            last, _, _ = next(stream)
        rest = cfg.fork.rest_share > 0 and rng.random() < cfg.fork.rest_share   # no draw at 0: same pairs as before
        pair, last = fork_pair(game, policy, last, cfg.fork, rng, rest=rest)
        if pair is None:
            tally.in_a_row += 1
            # Deaths and rooms whose replays differ (forks.py) drop pairs, 80 in a row in one room (session 15);
            # the policy walks on between tries. 50 drops before any pair means replay itself is broken.
            if tally.in_a_row >= (50 if tally.made == 0 else 5000):
                raise RuntimeError(f"fork pairs: {tally.in_a_row} dropped in a row after {tally.made} made "
                                   "(prefixes differ or every branch ends the episode)")
            continue
        tally.made, tally.in_a_row = tally.made + 1, 0
        for k in range(2):
            sl = slice(i, i + clip)
            frames[sl], actions[sl] = pair.frames[k], pair.actions[k]
            starts[sl] = False
            starts[i] = True
            pos[sl] = pair.end[k]
            i += clip
    return last


class Collector:
    """Runs `cfg.workers` game processes and yields their chunks as they arrive."""

    def __init__(self, cfg: CollectConfig, seed: int):
        self.cfg = cfg
        ctx = mp.get_context("spawn")   # no fork: the parent may hold CUDA or torch threads
        _, _, _, nbytes = _slot_layout(cfg)
        self.stop = ctx.Event()
        self.done = ctx.Queue()
        self.shms, self.free, self.procs = [], [], []
        for w in range(cfg.workers):
            shms = [shared_memory.SharedMemory(create=True, size=nbytes) for _ in range(cfg.slots)]
            free = ctx.Queue()
            for s in range(cfg.slots):
                free.put(s)
            self.shms.append(shms)
            self.free.append(free)
            p = ctx.Process(target=_worker, daemon=True,
                            args=(w, cfg, seed * 100_003 + w, [s.name for s in shms], free, self.done, self.stop))
            p.start()
            self.procs.append(p)
        self.views = [[_views(s.buf, cfg) for s in shms] for shms in self.shms]
        self.ticks = 0
        self.t0 = time.perf_counter()

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            yield self.next()

    def next(self, timeout: float = 300.0) -> Chunk:
        deadline = time.perf_counter() + timeout
        while True:
            try:
                w, slot, forks = self.done.get(timeout=1.0)
                break
            except queue.Empty:
                dead = [i for i, p in enumerate(self.procs) if p.exitcode not in (None, 0)]
                if dead or time.perf_counter() > deadline:
                    self.close()
                    raise RuntimeError(f"collector: no chunk (workers that died: {dead}, "
                                       f"waited up to {timeout:.0f} s)") from None
        return self._take(w, slot, forks)

    def poll(self) -> Chunk | None:
        """A chunk if one is ready, else None: lets a training loop drain data between steps."""
        try:
            w, slot, forks = self.done.get_nowait()
        except queue.Empty:
            return None
        return self._take(w, slot, forks)

    def _take(self, w: int, slot: int | str, forks: bool = False) -> Chunk:
        if isinstance(slot, str):
            self.close()
            raise RuntimeError(f"collector worker {w} failed:\n{slot}")
        frames, actions, starts, pos = self.views[w][slot]
        chunk = Chunk(frames.copy(), actions.copy(), starts.copy(), w, pos.copy(), forks)
        self.free[w].put(slot)
        self.ticks += len(chunk.starts)
        return chunk

    @property
    def rate(self) -> float:
        """Frames per second delivered since start."""
        return self.ticks / max(1e-9, time.perf_counter() - self.t0)

    def close(self) -> None:
        if not self.procs:
            return
        self.stop.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        self.procs = []
        self.views = []
        for shms in self.shms:
            for s in shms:
                s.close()
                s.unlink()
        self.shms = []

    def __enter__(self) -> "Collector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_shards(cfg: CollectConfig, seed: int, ticks: int, out: str | Path, shard_ticks: int = 4096) -> list[Path]:
    """Collect `ticks` ticks and write them as npz shards for inspection.

    Chunks of different workers interleave in a shard: a worker's ticks are consecutive only within
    the rows that carry its `worker` id. Rows from chunks of fork pairs carry `forks` True: their clips are
    pairs from one state (forks.py), not a stretch of play.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths, parts, have = [], [], 0
    with Collector(cfg, seed) as col:
        while have < ticks:
            c = col.next()
            parts.append(c)
            have += len(c.starts)
            if sum(len(p.starts) for p in parts) >= shard_ticks or have >= ticks:
                path = out / f"shard-{len(paths):05d}.npz"
                np.savez(path, frames=np.concatenate([p.frames for p in parts]),
                         actions=np.concatenate([p.actions for p in parts]),
                         starts=np.concatenate([p.starts for p in parts]),
                         worker=np.concatenate([np.full(len(p.starts), p.worker) for p in parts]),
                         forks=np.concatenate([np.full(len(p.starts), p.forks) for p in parts]))
                paths.append(path)
                parts = []
    return paths
