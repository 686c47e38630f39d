"""Exploration policy: plays E1M1 roughly like a person finding their way around.

It holds intentions for a while instead of drawing a new random action every tick, steers with analog
values, slows down and turns away from walls it sees in the depth buffer, presses USE on close walls
(doors), turns towards and shoots monsters from the labels buffer, notices when it is stuck and backs
out, prefers headings towards parts of the map it has visited least, and now and then rests with no
input at all for up to a few seconds (a person at a desk or a demo booth idles often).

Everything random comes from one numpy Generator seeded by the caller, so a (seed, policy config)
pair always produces the same actions against the same game.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .actions import Action
from .game import Sector, TickInfo

# Freedoom object names that are enemies (labels buffer `object_name`).
MONSTERS = frozenset({
    "ZombieMan", "ShotgunGuy", "ChaingunGuy", "DoomImp", "Demon", "Spectre", "LostSoul", "Cacodemon",
    "BaronOfHell", "HellKnight", "Revenant", "Fatso", "Arachnotron", "PainElemental", "Archvile",
    "Cyberdemon", "SpiderMastermind", "WolfensteinSS",
})


@dataclass(frozen=True)
class PolicyConfig:
    speed_min: float = field(default=0.35, metadata={"min": 0.0, "max": 1.0})   # cruising speed range
    speed_max: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    turn_gain: float = field(default=1.0, metadata={"min": 0.0, "max": 4.0})   # steering strength
    smoothing: float = field(default=0.35, metadata={"min": 0.0, "max": 1.0})  # per-tick approach to target
    probe_prob: float = field(default=0.01, metadata={"min": 0.0, "max": 1.0})  # chance per tick of a held probe action
    strafe_prob: float = field(default=0.3, metadata={"min": 0.0, "max": 1.0})
    fight: bool = True
    novelty: float = field(default=1.0, metadata={"min": 0.0, "max": 10.0})    # pull towards unvisited cells
    cell: float = field(default=128.0, metadata={"min": 16.0})                  # visitation grid cell, map units
    # Idle holds: exact no-op stretches, so the model learns that a still player sees a still image.
    # 0.0025 per tick with 10-100 tick holds: about 9% of ticks are exact no-ops (3% without holds,
    # from probe stops) and 2% slow turns (docs/DATA.md).
    idle_prob: float = field(default=0.0025, metadata={"min": 0.0, "max": 1.0})  # chance per tick to start one
    idle_ticks: tuple[int, int] = (10, 100)                                        # hold length range, inclusive
    idle_turn_prob: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})  # share that only turn slowly
    # Move probes: forward/backward held against the current motion. Doom's walking has momentum, so
    # in smooth play the previous frames predict the next one and a model can ignore the forward input
    # (docs/DATA.md); reversals, pure moves and stop-and-go are the ticks where the input decides.
    move_prob: float = field(default=0.025, metadata={"min": 0.0, "max": 1.0})  # chance per tick to start one
    # The least ticks that each leg of a move probe holds its direction (0: the ranges below, 4-12 for a
    # reversal's legs, 6-20 or 6-15 for a move). Why: the evaluation's probe holds forward or backward 8
    # ticks, and at the default ranges only 5-6% of the data's 8-tick windows hold a key against the motion
    # before it; the zoom toy walked twice as far once such holds were common (docs/DATA.md, session 23).
    # Off by default: no model has been trained with it yet.
    move_min_ticks: int = field(default=0, metadata={"min": 0, "max": 40})
    # Share of move probes that also hold a turn, of a size drawn as a held probe's (0.2-1, either way), on
    # every tick that holds forward or backward (the stops stay still). Why: probes take the place of
    # cruising, which is where the data turns; at move_prob 0.2 with 12-tick legs the mean |turn| input falls
    # to a quarter (docs/DATA.md, session 24), and a teacher trained on such data from scratch read no turn
    # at all. At 0.5 it is back above the shipped data's. Off by default: the evaluation's move probe holds
    # the key without turning.
    move_turn_prob: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    # Back out after this many ticks of pressing forward without moving (0 = off: only the 40-tick check).
    # Why: 30% of the ticks that press forward push into a wall and go nowhere; at 6 (with snap starts at
    # 0.5) it is 20% (session 15, CPU, coverage's `walls`, docs/DATA.md). Off by default: the shipped models
    # were trained without it, and no model has been trained with it yet.
    blocked_ticks: int = field(default=0, metadata={"min": 0})
    # Share of idle holds that end with forward pressed at once, as a key does, instead of a stick's ramp
    # (0 = always the ramp, as the shipped models' data): a keyboard player's start from rest.
    snap_start_prob: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    # Chance per cruising tick, where the view ahead is open, of a start from rest in the open: no input for
    # 25-40 ticks (the slide takes about 33 to settle), then full forward for 8-20. The collector's rests
    # happen mostly at walls, so without these a forward press from rest hardly ever walks (docs/DATA.md).
    open_start_prob: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})


class RoutePlanner:
    """Routes through the map's sector graph, so that exploration leaves the first room.

    Sectors are nodes; two sectors sharing a two-sided line are linked through that line's midpoint
    (a "portal"), unless the step up is higher than Doom lets a player climb (24 units). Closed doors
    (ceiling == floor) stay linked: the policy presses USE when it bumps into one.
    """

    STEP = 24.0

    def __init__(self, sectors: list[Sector]):
        self.sectors = sectors
        self.centre = np.array([s.lines[:, :4].reshape(-1, 2).mean(0) for s in sectors])   # (S, 2)
        pts = [s.lines[:, :4].reshape(-1, 2) for s in sectors]
        self.box = np.array([[p.min(0), p.max(0)] for p in pts])                            # (S, 2, 2)
        edges: dict[tuple, list[int]] = {}
        for i, s in enumerate(sectors):
            for x1, y1, x2, y2, blocking in s.lines:
                if not blocking:
                    key = tuple(sorted(((x1, y1), (x2, y2))))
                    edges.setdefault(key, []).append(i)
        self.links: dict[int, list[tuple[int, np.ndarray]]] = {i: [] for i in range(len(sectors))}
        for (p, q), owners in edges.items():
            mid = (np.array(p) + np.array(q)) / 2
            for a in owners:
                for b in owners:
                    if a != b and sectors[b].floor - sectors[a].floor <= self.STEP:
                        self.links[a].append((b, mid))

    def locate(self, x: float, y: float) -> int:
        """Index of the sector containing (x, y), or the nearest centre.

        Ray casting alone is not enough: ViZDoom lists some sectors' lines without closing their
        outline, and an open outline can give odd parity far outside it. So a sector must also hold the
        point inside its bounding box, and of several candidates the smallest box wins.
        """
        best, best_area = None, np.inf
        for i, s in enumerate(self.sectors):
            (x0, y0), (x1b, y1b) = self.box[i]
            if not (x0 <= x <= x1b and y0 <= y <= y1b):
                continue
            x1, y1, x2, y2 = s.lines[:, 0], s.lines[:, 1], s.lines[:, 2], s.lines[:, 3]
            crosses = ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / np.where(y2 == y1, 1e-9, y2 - y1) + x1)
            area = (x1b - x0) * (y1b - y0)
            if crosses.sum() % 2 == 1 and area < best_area:
                best, best_area = i, area
        if best is not None:
            return best
        return int(np.argmin(((self.centre - (x, y)) ** 2).sum(1)))

    def spawn_points(self) -> np.ndarray:
        """(N, 2) centres of sectors a player can stand in: room to stand (ceiling 56+ units above the
        floor), at least 64 units across, and the centre lies inside the sector itself."""
        pts = []
        for i, s in enumerate(self.sectors):
            (x0, y0), (x1, y1) = self.box[i]
            if s.ceiling - s.floor >= 56 and x1 - x0 >= 64 and y1 - y0 >= 64 and self.locate(*self.centre[i]) == i:
                pts.append(self.centre[i])
        return np.array(pts, dtype=np.float32)

    def route(self, start: int, goal: int) -> list[np.ndarray] | None:
        """Waypoints (portal midpoints, then the goal's centre) by breadth-first search."""
        prev = {start: None}
        queue = [start]
        for node in queue:
            if node == goal:
                break
            for nxt, mid in self.links[node]:
                if nxt not in prev:
                    prev[nxt] = (node, mid)
                    queue.append(nxt)
        if goal not in prev:
            return None
        points = [self.centre[goal]]
        node = goal
        while prev[node] is not None:
            node, mid = prev[node]
            points.append(mid)
        return points[::-1]


class ExplorerPolicy:
    """`act(frame, info) -> Action`; `info` must come from a Game with buffers=True.

    With a `planner`, cruising follows routes to rarely visited sectors; without one it steers
    towards the least visited directions around it (slower to leave the first room).
    """

    def __init__(self, cfg: PolicyConfig, seed: int, planner: RoutePlanner | None = None):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.planner = planner
        self.visits: dict[tuple[int, int], int] = {}   # kept across episodes: same map
        self.cur = np.zeros(3)                          # smoothed (forward, strafe, turn)
        self._new_episode()

    def _new_episode(self) -> None:
        self.mode, self.mode_ticks = "cruise", 0
        self.target = np.zeros(3)
        self.speed = self.rng.uniform(self.cfg.speed_min, self.cfg.speed_max)
        self.strafe = 0.0
        self.heading_bias = 0.0
        self.hist: list[tuple[float, float]] = []
        self.last_pos: tuple[float, float] | None = None
        self.blocked = 0                                # ticks in a row of forward pressed without moving
        self.probe = (0.0, 0.0, 0.0)
        self.idle = (0.0, 0.0, 0.0)
        self.moves: list[float] = []                    # a move probe's forward value per remaining tick
        self.move_turn = 0.0                            # the turn this move holds with its key (move_turn_prob)
        self.use_cooldown = 0
        self.waypoints: list[np.ndarray] = []
        self.route_age = 0

    # -- sensing -------------------------------------------------------------------------------------
    @staticmethod
    def _sectors(depth: np.ndarray) -> tuple[float, float, float]:
        """Mean depth (0..255, larger = farther) in left, centre and right thirds of the eye-level band."""
        h, w = depth.shape
        band = depth[int(h * 0.35): int(h * 0.6)].astype(np.float32)
        third = w // 3
        return band[:, :third].mean(), band[:, third: 2 * third].mean(), band[:, 2 * third:].mean()

    def _monster(self, info: TickInfo, w: int) -> float | None:
        """Horizontal offset in [-1, 1] of the biggest visible monster, or None."""
        best, size = None, 0
        for lab in info.labels or ():
            if lab.object_name in MONSTERS and lab.width * lab.height > size:
                best, size = lab, lab.width * lab.height
        if best is None or size < 12:
            return None
        return float(np.clip((best.x + best.width / 2 - w / 2) / (w / 2), -1, 1))

    def _cell(self, x: float, y: float) -> tuple[int, int]:
        return int(x // self.cfg.cell), int(y // self.cfg.cell)

    def _plan(self, info: TickInfo) -> None:
        """Pick a rarely visited sector (weighted draw) and route to it."""
        p = self.planner
        here = p.locate(info.x, info.y)
        visits = np.array([self.visits.get(self._cell(*c), 0) for c in p.centre], dtype=np.float64)
        weight = 1.0 / (1.0 + visits) ** (1.0 + self.cfg.novelty)
        weight[here] = 0.0
        for _ in range(8):
            goal = int(self.rng.choice(len(weight), p=weight / weight.sum()))
            route = p.route(here, goal)
            if route:
                self.waypoints, self.route_age = route, 0
                return
            weight[goal] = 0.0
            if weight.sum() == 0:
                break
        self.waypoints = []

    def _heading_turn(self, info: TickInfo) -> float:
        """Turn in [-1, 1] towards the next waypoint (or the least visited direction)."""
        if self.planner is None:
            return self.heading_bias
        while self.waypoints and math.dist(self.waypoints[0], (info.x, info.y)) < 40:
            self.waypoints.pop(0)
        self.route_age += 1
        if not self.waypoints or self.route_age > 700:
            self._plan(info)
        if not self.waypoints:
            return 0.0
        wx, wy = self.waypoints[0]
        want = math.degrees(math.atan2(wy - info.y, wx - info.x))
        diff = (want - info.angle + 180) % 360 - 180          # > 0: target is to the left
        return float(np.clip(-diff / 30.0, -1, 1))              # our turn axis is positive to the right

    def _novel_heading(self, info: TickInfo) -> float:
        """Turn bias in [-1, 1] towards the least-visited of 8 directions around the player."""
        c = self.cfg.cell
        best, score = 0.0, math.inf
        for k in range(8):
            rel = (k - 3.5) / 3.5 * math.pi * 0.75          # -135..135 degrees relative to view
            ang = math.radians(info.angle) + rel
            s = self.visits.get(self._cell(info.x + 2 * c * math.cos(ang), info.y + 2 * c * math.sin(ang)), 0)
            s += self.rng.uniform(0, 2)
            if s < score:
                best, score = rel, s
        return float(np.clip(-best / (math.pi * 0.75), -1, 1))

    # -- acting --------------------------------------------------------------------------------------
    def act(self, frame: np.ndarray, info: TickInfo) -> Action:
        cfg, rng = self.cfg, self.rng
        if info.new_episode:
            self._new_episode()
        cell = self._cell(info.x, info.y)
        self.visits[cell] = self.visits.get(cell, 0) + 1
        self.hist.append((info.x, info.y))
        del self.hist[:-40]
        moved = math.dist(self.last_pos, (info.x, info.y)) if self.last_pos is not None else 1.0
        self.last_pos = (info.x, info.y)
        self.blocked = self.blocked + 1 if self.cur[0] > 0.1 and moved < 0.3 else 0   # cur: the last action
        left, centre, right = self._sectors(info.depth) if info.depth is not None else (128.0, 128.0, 128.0)
        attack = use = 0
        self.use_cooldown = max(0, self.use_cooldown - 1)
        self.mode_ticks -= 1

        was_idle, snap = self.mode == "idle", False
        blocked = cfg.blocked_ticks > 0 and self.blocked >= cfg.blocked_ticks and self.mode != "unstick"
        if blocked:                                  # a held probe or move into a wall ends here too
            self.mode, self.mode_ticks, self.moves = "cruise", 0, []
        if self.mode == "probe" and self.mode_ticks > 0:
            return self._emit(np.array(self.probe), 0, 0, snap=True)
        if self.mode == "idle" and self.mode_ticks > 0:
            self.hist.clear()                        # resting is not being stuck
            return self._emit(np.array(self.idle), 0, 0, snap=True)
        if self.mode == "move" and self.moves:
            self.hist.clear()                        # going back and forth is not being stuck
            return self._emit(self._move_tick(), 0, 0, snap=True)
        stuck = len(self.hist) == 40 and math.dist(self.hist[0], self.hist[-1]) < 24 and self.mode == "cruise"
        if stuck or blocked:
            self.blocked = 0
            self.mode, self.mode_ticks = "unstick", int(rng.integers(10, 30))
            side = rng.choice([-1.0, 1.0])
            self.target = np.array([-rng.uniform(0.4, 1.0), rng.uniform(-0.5, 0.5), side * rng.uniform(0.5, 1.0)])
            self.hist.clear()
            if rng.random() < 0.3:
                self.waypoints = []                  # maybe a locked door: go somewhere else
            if self.use_cooldown == 0:
                use, self.use_cooldown = 1, 20       # maybe it was a door
        elif self.mode == "unstick" and self.mode_ticks > 0:
            pass
        elif cfg.idle_prob > 0 and rng.random() < cfg.idle_prob:
            # Rest: every input released at once (a key let go), held for idle_ticks; some holds only
            # turn slowly, as when looking around. No draw at all with idle_prob 0.
            lo, hi = cfg.idle_ticks
            self.mode, self.mode_ticks = "idle", int(rng.integers(lo, hi + 1))
            turn = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.3)) if rng.random() < cfg.idle_turn_prob else 0.0
            self.idle = (0.0, 0.0, turn)
            self.hist.clear()
            return self._emit(np.array(self.idle), 0, 0, snap=True)
        elif rng.random() < cfg.probe_prob:
            # A held "test" action: pure turns, backpedals and strafes teach action response.
            self.mode, self.mode_ticks = "probe", int(rng.integers(6, 30))
            mag = float(rng.choice([rng.uniform(0.2, 1.0), 1.0]))
            sign = float(rng.choice([-1.0, 1.0]))
            kind = int(rng.integers(0, 5))
            self.probe = [(0, 0, sign * mag), (-mag, 0, 0), (0, sign * mag, 0), (mag, 0, sign * mag * 0.5),
                          (0, 0, 0)][kind]
            return self._emit(np.array(self.probe, dtype=float), 0, 0, snap=True)
        elif rng.random() < cfg.move_prob:
            # Forward/backward decided by the input alone: a reversal (k ticks one way, then k the other),
            # a pure move in a random direction whatever the current motion, or a stop and then a move.
            self.mode = "move"
            mag = float(rng.choice([rng.uniform(0.5, 1.0), 1.0]))
            sign = float(rng.choice([-1.0, 1.0]))
            kind = rng.random()
            least = cfg.move_min_ticks

            def ticks(lo: int, hi: int) -> int:                  # lo..hi inclusive, raised to `least`
                return int(rng.integers(max(lo, least), max(hi, least) + 1))

            if kind < 0.5:
                k = ticks(4, 12)
                self.moves = [sign * mag] * k + [-sign * mag] * k
            elif kind < 0.75:
                self.moves = [sign * mag] * ticks(6, 20)
            else:
                self.moves = [0.0] * int(rng.integers(8, 17)) + [sign * mag] * ticks(6, 15)
            self.hist.clear()
            self.move_turn = 0.0
            if cfg.move_turn_prob > 0 and rng.random() < cfg.move_turn_prob:   # no draw at 0: same stream
                self.move_turn = float(rng.choice([-1.0, 1.0]) * rng.choice([rng.uniform(0.2, 1.0), 1.0]))
            return self._emit(self._move_tick(), 0, 0, snap=True)
        elif cfg.open_start_prob > 0 and centre >= 48 and rng.random() < cfg.open_start_prob:
            self.mode = "move"
            self.moves = [0.0] * int(rng.integers(25, 41)) + [1.0] * int(rng.integers(8, 21))
            self.hist.clear()
            self.move_turn = 0.0                     # a start from rest in the open walks straight
            return self._emit(self._move_tick(), 0, 0, snap=True)
        else:
            self.mode = "cruise"
            if self.mode_ticks <= 0:
                self.mode_ticks = int(rng.integers(20, 90))
                self.speed = rng.uniform(cfg.speed_min, cfg.speed_max)
                if was_idle and rng.random() < cfg.snap_start_prob:
                    self.speed, snap = 1.0, True     # a key pressed: full forward on the first tick
                self.heading_bias = self._novel_heading(info) * cfg.novelty
                self.strafe = rng.uniform(-0.8, 0.8) if rng.random() < cfg.strafe_prob else 0.0
            # Steer towards the route, nudged away from the nearer side wall.
            openness = (right - left) / 64.0
            turn = cfg.turn_gain * (self._heading_turn(info) + 0.3 * np.tanh(openness))
            fwd = self.speed * (0.4 if abs(turn) > 0.8 else 1.0)
            if centre < 12:        # a wall right ahead: slow down, maybe it is a door
                fwd = min(fwd, 0.3)
                if self.use_cooldown == 0:
                    use, self.use_cooldown = 1, 25
            self.heading_bias *= 0.97
            self.target = np.array([fwd, self.strafe, np.clip(turn, -1, 1)])
            mon = self._monster(info, frame.shape[1]) if cfg.fight else None
            if mon is not None:
                self.target[2] = np.clip(2.5 * mon, -1, 1)
                self.target[0] *= 0.5
                attack = int(abs(mon) < 0.25 and rng.random() < 0.8)
        return self._emit(self.target, attack, use, snap=snap)

    def _move_tick(self) -> np.ndarray:
        """The next tick of a move: its held forward value, with the move's held turn while the key is down."""
        f = self.moves.pop(0)
        return np.array([f, 0.0, self.move_turn if f != 0.0 else 0.0])

    def _emit(self, target: np.ndarray, attack: int, use: int, snap: bool = False) -> Action:
        # Sticks move continuously: approach the target instead of jumping (except for held probes).
        a = 1.0 if snap else self.cfg.smoothing
        self.cur = (1 - a) * self.cur + a * target
        f, s, t = (float(np.clip(round(v, 4), -1, 1)) for v in self.cur)
        return Action(forward=f, strafe=s, turn=t, attack=attack, use=use)
