"""The real game: Freedoom through ViZDoom, one v1 action per tic.

`Game.reset(seed)` gives the first frame and `Game.step(action)` the next one, as RGB uint8 [H, W, 3]
with the HUD off. Same seed and same actions give identical frames (tests/test_game.py).

Episode ends (death, level exit, optional tick limit) restart the game on seed + 1 and return that
episode's first frame; `Game.tick_info.new_episode` says so, and the data collector records it as an
episode start so that training never sees a clip across the cut.
"""
from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .actions import Action

_CHDIR_LOCK = threading.Lock()
WORKDIR = os.path.join(tempfile.gettempdir(), "dreamloop-vizdoom")   # where ViZDoom writes its files


@dataclass(frozen=True)
class GameConfig:
    wad: str = "freedoom1"          # a WAD shipped with vizdoom ("freedoom1", "freedoom2") or a path
    map: str = "E1M1"
    width: int = field(default=160, metadata={"min": 160, "max": 1920})
    height: int = field(default=120, metadata={"min": 120, "max": 1080})
    skill: int = field(default=2, metadata={"min": 1, "max": 5})
    buffers: bool = False           # depth and labels buffers (the exploration policy needs them)
    episode_ticks: int = field(default=0, metadata={"min": 0})  # 0: no limit; counts the warm-up tics

    def __post_init__(self) -> None:
        import vizdoom as vzd

        name = f"RES_{self.width}X{self.height}"
        if 0 < self.episode_ticks <= Game.WARMUP_TICS + 1:
            raise ValueError(f"episode_ticks: must be 0 or more than {Game.WARMUP_TICS + 1}, got {self.episode_ticks}")
        if not hasattr(vzd.ScreenResolution, name):
            raise ValueError(f"width/height: ViZDoom has no resolution {self.width}x{self.height}")

    @property
    def world(self) -> str:
        """World id written into traces and checkpoints, e.g. 'freedoom1:E1M1'."""
        return f"{Path(self.wad).stem}:{self.map}"

    def wad_path(self) -> str:
        import vizdoom as vzd

        shipped = Path(vzd.__file__).parent / f"{self.wad}.wad"
        if shipped.exists():
            return str(shipped)
        if Path(self.wad).exists():
            return str(Path(self.wad).resolve())
        raise FileNotFoundError(f"WAD {self.wad!r} is neither shipped with vizdoom nor a file")


@dataclass
class TickInfo:
    """What the game knows about the tick just produced (not shown to the model)."""

    x: float = 0.0
    y: float = 0.0
    angle: float = 0.0              # degrees, counter-clockwise, as Doom stores it
    health: float = 100.0
    tick: int = 0                   # tics since the episode began
    episode: int = 0                # episodes since reset()
    seed: int = 0                   # seed of the current episode
    new_episode: bool = False       # this frame is the first of a new episode
    depth: np.ndarray | None = None     # [H, W] uint8, larger is farther (buffers=True)
    labels: list | None = None          # vizdoom Label objects of visible things (buffers=True)


class Game:
    """One ViZDoom instance. Not thread-safe; use one per process or thread."""

    WARMUP_TICS = 7   # measured: forward input first moves the player on the 8th tic

    def __init__(self, cfg: GameConfig = GameConfig(), workdir: str | None = None):
        self.cfg = cfg
        # ViZDoom writes _vizdoom/ and _vizdoom.ini into the current directory: keep them out of the repo.
        self.workdir = workdir or WORKDIR
        os.makedirs(self.workdir, exist_ok=True)
        self._game = None
        self.tick_info = TickInfo()
        self._fork_files: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------------------
    def _new_game(self, seed: int):
        import vizdoom as vzd

        g = vzd.DoomGame()
        g.set_doom_game_path(self.cfg.wad_path())
        g.set_doom_map(self.cfg.map)
        g.set_doom_skill(self.cfg.skill)
        g.set_doom_config_path(os.path.join(self.workdir, "_vizdoom.ini"))
        g.set_screen_resolution(getattr(vzd.ScreenResolution, f"RES_{self.cfg.width}X{self.cfg.height}"))
        g.set_screen_format(vzd.ScreenFormat.RGB24)
        g.set_render_hud(False)
        g.set_render_crosshair(False)
        g.set_render_messages(False)
        g.set_automap_buffer_enabled(False)   # the automap breaks replays (platform.md)
        g.set_depth_buffer_enabled(self.cfg.buffers)
        g.set_labels_buffer_enabled(self.cfg.buffers)
        g.set_window_visible(False)
        g.set_sound_enabled(False)
        g.set_mode(vzd.Mode.PLAYER)
        g.set_episode_start_time(0)            # otherwise input is ignored for the first tics
        g.set_episode_timeout(self.cfg.episode_ticks)
        for b in (vzd.Button.MOVE_FORWARD_BACKWARD_DELTA, vzd.Button.MOVE_LEFT_RIGHT_DELTA,
                  vzd.Button.TURN_LEFT_RIGHT_DELTA, vzd.Button.ATTACK, vzd.Button.USE):
            g.add_available_button(b)
        for v in (vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y, vzd.GameVariable.ANGLE,
                  vzd.GameVariable.HEALTH):
            g.add_available_game_variable(v)
        g.set_seed(seed % (2**31))
        _init_in(g, self.workdir)
        g.new_episode()
        # The engine ignores input for its first tics; spend them here so that every frame we
        # return answers the action that produced it.
        for _ in range(self.WARMUP_TICS):
            g.advance_action(1)
        return g

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None
        for path in self._fork_files:
            if os.path.exists(path):
                os.remove(path)
        self._fork_files.clear()

    def __enter__(self) -> "Game":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- play ----------------------------------------------------------------------------------------
    def reset(self, seed: int) -> np.ndarray:
        """Start a fresh episode. A fresh DoomGame each time: re-initialising one object is not
        bit-exact (platform.md, gotcha 6)."""
        self.close()
        self._game = self._new_game(seed)
        self.tick_info = TickInfo(seed=seed, new_episode=True)
        return self._observe()

    def step(self, action: Action) -> np.ndarray:
        """Apply one action for one tic and return the next frame [H, W, 3] uint8."""
        if self._game is None:
            raise RuntimeError("Game.step before Game.reset")
        self._game.make_action(action.doom_buttons(), 1)
        if self._game.is_episode_finished():
            info = self.tick_info
            self.close()
            self._game = self._new_game(info.seed + 1)
            self.tick_info = TickInfo(seed=info.seed + 1, episode=info.episode + 1, new_episode=True)
            return self._observe()
        self.tick_info.tick += 1
        self.tick_info.new_episode = False
        return self._observe()

    def warp(self, x: float, y: float) -> np.ndarray:
        """Move the player to (x, y) (ZDoom's `warp` command) and return the frame seen from there.
        The collector uses it to start episodes all over the map; the frame opens a new episode."""
        if self._game is None:
            raise RuntimeError("Game.warp before Game.reset")
        self._game.send_game_command(f"warp {x:.1f} {y:.1f}")
        self._game.advance_action(1)
        if self._game.is_episode_finished():
            return self.step(Action())
        self.tick_info.new_episode = True
        return self._observe()

    def fork_point(self, path: str | None = None) -> str:
        """Save the game and load it straight back; return the file. Loading it again later restarts play
        from the same state, so branches played from it with the same actions are identical (the data
        collector's fork pairs, world_model/forks.py). Why load at once: ViZDoom's save runs a tic or two
        before it writes, so the state on file is not the one shown last; after the load, every frame a
        step returns belongs to play from the file. The screen shown before the next step is stale."""
        if self._game is None:
            raise RuntimeError("Game.fork_point before Game.reset")
        # One file per process and game: collectors of two runs on one machine share worker folders (w0,
        # w1, ...), and a file another process overwrote mid-load fails ("Unknown class type in archive").
        path = path or os.path.join(self.workdir, f"fork-{os.getpid()}-{id(self):x}.zds")
        self._fork_files.add(path)
        self._game.save(path)
        self._load(path)
        return path

    def back_to(self, path: str) -> None:
        """Load a file written by `fork_point` in this episode (a new episode has another game object)."""
        if self._game is None:
            raise RuntimeError("Game.back_to before Game.reset")
        self._load(path)
        self.tick_info.new_episode = False

    def _load(self, path: str) -> None:
        # The buttons held before a load act on the first tic after it (measured: two loads of one file
        # then differ by 15 grey levels per pixel on the first frame); release them so replays match.
        self._game.set_action(Action().doom_buttons())
        self._game.load(path)

    def _observe(self) -> np.ndarray:
        state = self._game.get_state()
        info = self.tick_info
        x, y, angle, health = state.game_variables
        info.x, info.y, info.angle, info.health = float(x), float(y), float(angle), float(health)
        if self.cfg.buffers:
            info.depth = state.depth_buffer
            info.labels = state.labels
        frame = state.screen_buffer
        assert frame.shape == (self.cfg.height, self.cfg.width, 3), frame.shape
        return frame


def _init_in(g, workdir: str) -> None:
    """Start the engine with `workdir` as its current directory, where it writes _vizdoom/."""
    with _CHDIR_LOCK:
        here = os.getcwd()
        os.chdir(workdir)
        try:
            g.init()
        finally:
            os.chdir(here)


@dataclass(frozen=True)
class Sector:
    floor: float
    ceiling: float
    lines: np.ndarray          # [L, 5] float32: x1, y1, x2, y2, is_blocking


_SECTORS: dict[tuple[str, str], list[Sector]] = {}


def map_sectors(cfg: GameConfig, workdir: str | None = None) -> list[Sector]:
    """The map's sectors (floor/ceiling heights and line segments), read once per (wad, map).

    Used by the exploration policy to plan routes and by the coverage report to draw the map; the
    model never sees it. Read from a separate short-lived DoomGame so that per-tick states stay small.
    """
    key = (cfg.wad, cfg.map)
    if key not in _SECTORS:
        import vizdoom as vzd

        game = Game(GameConfig(wad=cfg.wad, map=cfg.map), workdir)
        g = vzd.DoomGame()
        g.set_doom_game_path(cfg.wad_path())
        g.set_doom_map(cfg.map)
        g.set_doom_config_path(os.path.join(game.workdir, "_vizdoom.ini"))
        g.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        g.set_window_visible(False)
        g.set_sound_enabled(False)
        g.set_sectors_info_enabled(True)
        _init_in(g, game.workdir)
        g.new_episode()
        state = g.get_state()
        _SECTORS[key] = [
            Sector(float(s.floor_height), float(s.ceiling_height),
                   np.array([[ln.x1, ln.y1, ln.x2, ln.y2, ln.is_blocking] for ln in s.lines], np.float32))
            for s in state.sectors
        ]
        g.close()
    return _SECTORS[key]
