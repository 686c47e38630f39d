"""Backends: what turns one action per tick into one frame. The loop sees only this interface:

    reset(seed, context_actions=()) -> frame     # (H, W, 3) uint8, the frame of the last context tick
    step(action) -> frame
    status() -> BackendStatus                    # for the HUD
    phases.last                                  # seconds per phase of the last step
    set_mode("1" | "2" | "teacher") -> str       # a line for the HUD
    snapshot() / restore(state)                  # raise Unsupported where there is no savestate
    close()

GameBackend runs the real game. ModelBackend runs a world_model Session seeded with the real game's
frames of the first `context` ticks. SideBySide runs both on the same actions and shows model | game.
"""
from __future__ import annotations

import logging
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from settings import SettingsError
from world_model.actions import NOOP, Action
from world_model.game import Game, GameConfig

from .config import PlayConfig, resolve
from .timing import GpuTimer, Phases

log = logging.getLogger(__name__)
MODES = ("1", "2", "teacher")


class BackendError(RuntimeError):
    """A backend cannot start (missing checkpoint, no GPU, ...). The message is one line for the user."""


class Unsupported(RuntimeError):
    """The backend does not offer this control; the message says so for the HUD."""


@dataclass
class BackendStatus:
    name: str                    # "game", "model student 1-step", ...
    device: str                  # "cpu (no GPU found)", "cuda: NVIDIA H100", ...
    steps: int | None = None     # denoising steps per frame (None for the game)
    cache: Any = None            # world_model.kv_cache.CacheState or None
    faults: int = 0              # NaN/Inf frames recovered from a snapshot
    savestate: bool = False


def pick_device(requested: str) -> tuple[str, str]:
    """'auto' | 'cpu' | 'cuda' -> (torch device, line for the HUD)."""
    import torch

    if requested == "cpu":
        return "cpu", "cpu" if torch.cuda.is_available() else "cpu (no GPU found)"
    if torch.cuda.is_available():
        return "cuda", f"cuda: {torch.cuda.get_device_name()}"
    if requested == "cuda":
        raise BackendError("--device cuda: no CUDA GPU is available here; use --device cpu (slower)")
    return "cpu", "cpu (no GPU found)"


# ----------------------------------------------------------------------------------------------------
# The real game
# ----------------------------------------------------------------------------------------------------

class GameBackend:
    def __init__(self, game_cfg: GameConfig):
        self.game = Game(game_cfg)
        self.phases = Phases()

    def reset(self, seed: int, context_actions: Sequence[Action] = ()) -> np.ndarray:
        frame = self.game.reset(seed)
        for a in context_actions:
            frame = self.game.step(a)
        return frame

    def step(self, action: Action) -> np.ndarray:
        self.phases.clear()
        with self.phases("game"):
            return self.game.step(action)

    def status(self) -> BackendStatus:
        return BackendStatus(name="game", device="cpu (ViZDoom)")

    def set_mode(self, mode: str) -> str:
        return "the game backend has no model steps to switch"

    def snapshot(self) -> Any:
        raise Unsupported("savestate is not supported on the game backend (model backend only)")

    def restore(self, state: Any) -> np.ndarray:
        raise Unsupported("savestate is not supported on the game backend (model backend only)")

    def close(self) -> None:
        self.game.close()


# ----------------------------------------------------------------------------------------------------
# The world model
# ----------------------------------------------------------------------------------------------------

def _missing(path: Path, what: str) -> BackendError:
    return BackendError(f"{what} checkpoint not found: {path} (train one, or pass --model PATH); "
                        f"to play the real game instead run: python main.py --backend game")


def _present(path: Path) -> bool:
    """A checkpoint exists as one file or as shards with an index."""
    return path.exists() or path.with_name(path.name.removesuffix(".safetensors") + ".index.json").exists()


def load_models(cfg: PlayConfig, which: str, device: str) -> tuple[Any, Any]:
    """Load (world model, autoencoder) for `which` = 'student' | 'teacher' | a checkpoint path."""
    from world_model.autoencoder import Autoencoder
    from world_model.checkpoint import CheckpointError, load
    from world_model.model import WorldModel

    if which in ("student", "teacher"):
        path, kinds = resolve(getattr(cfg.models, which)), (which,)
    else:
        path, kinds = Path(which).expanduser(), ("student", "teacher")
    ae_path = resolve(cfg.models.autoencoder)
    for p, what in ((path, which if which in ("student", "teacher") else "model"), (ae_path, "autoencoder")):
        if not _present(p):
            raise _missing(p, what)
    try:
        tensors, config, meta = load(path)
        if meta.get("kind") not in kinds:
            raise BackendError(f"{path}: a {meta.get('kind')!r} checkpoint, expected {' or '.join(kinds)}")
        _check_shapes(path, config, tensors)
        model = WorldModel.from_tensors(config, tensors)
        autoencoder = Autoencoder.load(ae_path)
    except (CheckpointError, SettingsError) as e:
        raise BackendError(str(e).splitlines()[0]) from None
    except (RuntimeError, TypeError, ValueError, KeyError) as e:   # weights that do not fit the stored config
        raise BackendError(f"{path}: tensors do not match the stored model config ({str(e).splitlines()[0][:120]})") from None
    _check_pair(path, model.config, ae_path, autoencoder.config, cfg.game)
    return model.to(device).eval(), autoencoder.to(device).eval()


def _check_shapes(path: Path, config: dict, tensors: dict) -> None:
    """Compare the stored tensors with the config's model built on the meta device (no memory), so a
    checkpoint whose config is edited to a huge model fails here instead of allocating it."""
    import torch

    from world_model.model import ModelConfig, WorldModel
    from settings import from_dict

    mcfg = from_dict(dict(config), ModelConfig, source=f"{path}: config")
    if mcfg.depth > len(tensors):    # every block has weights; refuse before building thousands of blocks
        raise BackendError(f"{path}: tensors do not match the stored model config (depth {mcfg.depth}, "
                           f"{len(tensors)} tensors)")
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in WorldModel(mcfg).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != have:
        bad = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        raise BackendError(f"{path}: tensors do not match the stored model config (first difference: {bad[0]})")


def _check_pair(path: Path, m: Any, ae_path: Path, a: Any, game: GameConfig) -> None:
    """The world model, the autoencoder and the game must agree on frame and latent shapes."""
    if (a.height, a.width) != (game.height, game.width):
        raise BackendError(f"{ae_path}: autoencoder is for {a.width}x{a.height} frames, the game renders "
                           f"{game.width}x{game.height}")
    if tuple(a.latent_shape) != (m.latent_channels, m.latent_h, m.latent_w):
        raise BackendError(f"{path}: model latents {(m.latent_channels, m.latent_h, m.latent_w)} do not match "
                           f"the autoencoder's {tuple(a.latent_shape)} ({ae_path})")
    if m.action_dim != 5:
        raise BackendError(f"{path}: model takes {m.action_dim}-dim actions; action schema v1 has 5")


class ModelBackend:
    """A world_model Session driven one action per tick, seeded from real game frames.

    `models` maps a name ('student', 'teacher') to (world model, autoencoder) already built, or the
    backend loads them from `cfg.models` on first use (`loader`, for tests).
    """

    def __init__(self, cfg: PlayConfig, *, device: str, device_note: str, models: dict[str, tuple[Any, Any]] | None = None,
                 student: str = "student"):
        self.cfg = cfg
        self.device, self.device_note = device, device_note
        self.dtype = self._dtype()
        self.models = dict(models or {})
        self.student = student           # name or path of the student model
        self.mode = "teacher" if student == "teacher" else str(cfg.session.steps)
        self.game = Game(cfg.game)
        self.phases = Phases()
        self.timer = GpuTimer(device)
        self.session = None
        self.seed = 0
        self.history: deque[tuple[np.ndarray, Action]] = deque(maxlen=cfg.session.context)
        self.faults = 0
        self.ticks = 0
        self._good: Any = None           # last good (snapshot, history, frame)
        self.frame: np.ndarray | None = None
        self._get(self._model_name())    # fail now, with one line, if the checkpoint is missing

    def _dtype(self) -> Any:
        import torch

        d = self.cfg.session.dtype
        if d == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[d]

    def _model_name(self) -> str:
        return "teacher" if self.mode == "teacher" else self.student

    def _get(self, name: str) -> tuple[Any, Any]:
        if name not in self.models:
            from world_model.runtime import cast_for_inference

            model, ae = load_models(self.cfg, name, self.device)
            self.models[name] = cast_for_inference(model, ae, runtime=self.cfg.runtime, device=self.device,
                                                   dtype=self.dtype)
        return self.models[name]

    @property
    def steps(self) -> int:
        return self.cfg.session.teacher_steps if self.mode == "teacher" else int(self.mode)

    # -- play ----------------------------------------------------------------------------------------
    def reset(self, seed: int, context_actions: Sequence[Action] = ()) -> np.ndarray:
        """Play the context ticks on the real game, then seed a fresh Session with their frames.

        With no context actions (interactive play) the model is seeded from `session.context` no-op ticks.
        """
        self.seed = seed
        actions = list(context_actions) or [NOOP] * self.cfg.session.context
        self.game.reset(seed)
        frames = [self.game.step(a) for a in actions]
        self.game.close()               # the game is only needed for seeding
        self.history = deque(zip(frames, actions), maxlen=self.cfg.session.context)
        return self._seed_session(frames, actions)

    def _seed_session(self, frames: Sequence[np.ndarray], actions: Sequence[Action]) -> np.ndarray:
        import torch

        from world_model.runtime import make_session

        model, ae = self._get(self._model_name())
        s, rt = self.cfg.session, self.cfg.runtime
        from world_model.sampler import SamplerConfig

        # The teacher integrates the flow ODE (Euler); a distilled student takes consistency steps
        # ([1, 0] or [1, t_mid, 0], re-noising in between), the schedules it was trained for.
        sampler = (SamplerConfig(kind="euler", cfg_scale=s.teacher_cfg) if self.mode == "teacher"
                   else SamplerConfig(kind="consistency"))
        try:    # engine from settings runtime.engine: eager torch, CUDA graphs or onnxruntime
            self.session = make_session(model, runtime=rt, onnx_dir=resolve(rt.onnx_dir), window=s.window, sink=s.sink,
                                        device=self.device, dtype=self.dtype, seed=self.seed, autoencoder=ae,
                                        sampler=sampler)
        except (ValueError, RuntimeError) as e:
            if type(e).__name__ == "OutOfMemoryError":
                raise
            raise BackendError(f"runtime.engine {rt.engine}: {str(e).splitlines()[0]}") from None
        with torch.no_grad():
            self.session.reset_frames(np.stack(frames),                                     # (T, H, W, 3)
                                      torch.tensor([a.to_list() for a in actions]))       # (T, 5)
        self.frame = frames[-1]
        self.ticks = 0
        self._good = (self.session.snapshot(), list(self.history), self.frame)
        if self.device.startswith("cuda"):
            self._warm_up()
        return self.frame

    def _warm_up(self) -> None:
        """One throw-away tick, then back to the snapshot: CUDA-graph capture, cuBLAS set-up and the
        allocator's first growth happen here, at reset, instead of making the first played tick late
        (measured on the H100: the first tick took 0.3-1.1 s and counted as late). The restore brings
        back the cache, the RNG and the counters, so play is unchanged."""
        import torch

        snap = self.session.snapshot()
        with torch.no_grad():
            self.session.step_decoded(NOOP, steps=self.steps)
        self.session.restore(snap)

    def step(self, action: Action) -> np.ndarray:
        import torch

        from world_model.rollout import NonFiniteError

        self.phases.clear()
        try:
            with torch.no_grad():
                # denoise, decode and the copy to host memory, one host sync (Session.step_decoded)
                with self.phases("model"):
                    self.timer.start()
                    _, frames = self.session.step_decoded(action, steps=self.steps, host=True)  # (1, H, W, 3)
                    self.timer.stop()
                with self.phases("copy"):
                    frame = frames[0].cpu().numpy()              # (H, W, 3) uint8; already on the host
        except NonFiniteError:
            return self._recover()
        if self.timer.cuda:
            self.phases.last["model_gpu"] = self.timer.elapsed()
        self.frame = frame
        self.history.append((frame, action))
        self.ticks += 1
        if self.ticks % self.cfg.session.snapshot_every == 0:
            self._good = (self.session.snapshot(), list(self.history), frame)
        return frame

    def _recover(self) -> np.ndarray:
        """A NaN/Inf latent: go back to the last good snapshot and carry on (issue 7)."""
        self.faults += 1
        state, history, frame = self._good
        self.session.restore(state)
        self.history = deque(history, maxlen=self.history.maxlen)
        self.frame = frame
        log.warning("non-finite model output; restored the last good snapshot (fault %d)", self.faults)
        return frame

    # -- controls ------------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        old_name = self._model_name()
        old_mode, self.mode = self.mode, mode
        if self._model_name() != old_name:
            try:
                self._get(self._model_name())
            except BackendError as e:
                self.mode = old_mode
                return str(e)
            if self.session is not None:    # carry on from the frames on screen, with the other model
                frames, actions = zip(*self.history)
                self._seed_session(frames, actions)
        elif self.session is not None and self.device.startswith("cuda"):
            self._warm_up()                 # the other step count's graphs, captured now, not mid-play
        return f"model: {self.status().name}"

    def snapshot(self) -> Any:
        return (self.mode, self.session.snapshot(), list(self.history), self.frame)

    def restore(self, state: Any) -> np.ndarray:
        mode, snap, history, frame = state
        if mode != self.mode and (mode == "teacher") != (self.mode == "teacher"):
            raise Unsupported("that savestate belongs to the other model; switch back to restore it")
        self.session.restore(snap)
        self.history = deque(history, maxlen=self.history.maxlen)
        self.frame = frame
        return frame

    def status(self) -> BackendStatus:
        if self.mode == "teacher":
            name = "teacher"
        else:
            name = self.student if self.student in ("student", "teacher") else Path(self.student).stem
        cache = self.session.cache_state() if self.session is not None else None
        return BackendStatus(name=f"model {name} {self.steps}-step", device=self.device_note, steps=self.steps,
                             cache=cache, faults=self.faults, savestate=True)

    def close(self) -> None:
        self.game.close()


# ----------------------------------------------------------------------------------------------------
# Side by side
# ----------------------------------------------------------------------------------------------------

class SideBySide:
    """model | game on the same actions: for checking action conditioning by eye."""

    GAP = 2   # black columns between the halves

    def __init__(self, model: ModelBackend, game: GameBackend):
        self.model, self.game = model, game
        self.phases = Phases()

    def _join(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        gap = np.zeros((a.shape[0], self.GAP, 3), np.uint8)
        return np.concatenate([a, gap, b], axis=1)

    def reset(self, seed: int, context_actions: Sequence[Action] = ()) -> np.ndarray:
        ctx = list(context_actions)[: self.model.cfg.session.context] or [NOOP] * self.model.cfg.session.context
        return self._join(self.model.reset(seed, ctx), self.game.reset(seed, ctx))

    def step(self, action: Action) -> np.ndarray:
        a, b = self.model.step(action), self.game.step(action)
        self.phases.last = {**self.model.phases.last, **self.game.phases.last}
        return self._join(a, b)

    def status(self) -> BackendStatus:
        s = self.model.status()
        s.name = f"{s.name} | game"
        s.savestate = False
        return s

    def set_mode(self, mode: str) -> str:
        return self.model.set_mode(mode)

    def snapshot(self) -> Any:
        raise Unsupported("savestate is not supported side by side (the game half has none)")

    def restore(self, state: Any) -> np.ndarray:
        raise Unsupported("savestate is not supported side by side (the game half has none)")

    def close(self) -> None:
        self.model.close()
        self.game.close()


def make_backend(cfg: PlayConfig, kind: str, model: str, device: str) -> Any:
    """Build the backend named on the command line; BackendError on anything the user must fix."""
    if kind == "game":
        return GameBackend(cfg.game)
    dev, note = pick_device(device)
    if model == "student" and not _present(resolve(cfg.models.student)) and _present(resolve(cfg.models.teacher)):
        # Until a distilled student ships, the default model is the teacher (slower, more steps).
        print(f"dreamloop: no student checkpoint yet ({cfg.models.student}): playing the teacher",
              file=sys.stderr)
        model = "teacher"
    mb = ModelBackend(cfg, device=dev, device_note=note, student=model)
    return mb if kind == "model" else SideBySide(mb, GameBackend(cfg.game))
