"""Player settings (settings/play.yaml), parsed by the typed settings loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from settings import load
from world_model.game import GameConfig
from world_model.runtime import RuntimeConfig

ROOT = Path(__file__).resolve().parents[1]


class NoDisplay(RuntimeError):
    """No screen to open a window on. The message says so and gives the headless command. Defined here, not
    in app/window.py, so that headless runs never import moderngl."""


@dataclass(frozen=True)
class WindowConfig:
    width: int = field(default=960, metadata={"min": 160, "max": 7680})
    height: int = field(default=720, metadata={"min": 120, "max": 4320})
    fullscreen: bool = False
    vsync: bool = True
    max_fps: int = field(default=240, metadata={"min": 10, "max": 1000})  # cap when vsync is off or unavailable
    filter: Literal["nearest", "sharp"] = "sharp"                           # sharp = sharp-bilinear


@dataclass(frozen=True)
class HudConfig:
    show: bool = True
    refresh_hz: float = field(default=4.0, metadata={"min": 0.5, "max": 60.0})  # text re-render rate
    font_size: int = field(default=16, metadata={"min": 8, "max": 64})
    history: int = field(default=350, metadata={"min": 10, "max": 100_000})     # ticks kept for p50/p99


@dataclass(frozen=True)
class LoopConfig:
    # Where backend.step runs: on a worker thread the window keeps drawing the last frame and the HUD,
    # and polling input, at display rate while a slow step is in flight. auto: on for the model (and side
    # by side), off for the game (fast). Headless runs are always synchronous (nothing to draw).
    # YAML reads on/off (and true/false) as booleans, so the choices are auto, on (True), off (False).
    step_thread: bool | Literal["auto"] = field(default=False, metadata={"choices": ("auto", True, False)})


@dataclass(frozen=True)
class ModelPaths:
    """Checkpoints, relative to the repo root unless absolute. `--model PATH` replaces `student`."""

    student: str = "assets/checkpoints/student.safetensors"
    teacher: str = "assets/checkpoints/teacher.safetensors"
    autoencoder: str = "assets/checkpoints/autoencoder.safetensors"


@dataclass(frozen=True)
class SessionConfig:
    context: int = field(default=8, metadata={"min": 1, "max": 1024})   # real game ticks that seed the model
    window: int = field(default=32, metadata={"min": 1, "max": 4096})   # KV-cache rolling window, frames
    sink: int = field(default=1, metadata={"min": 0, "max": 64})        # KV-cache sink frames
    steps: int = field(default=1, metadata={"choices": (1, 2)})        # student denoising steps per frame
    teacher_steps: int = field(default=16, metadata={"min": 1, "max": 100})
    # Action classifier-free guidance of the teacher's Euler steps: v_null + s (v_action - v_null). 1 = none
    # (one pass per step); any other value costs a second pass per step. The student has guidance distilled in.
    teacher_cfg: float = field(default=1.0, metadata={"min": 0.0, "max": 20.0})
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"              # auto: bf16 on CUDA, fp32 on CPU
    snapshot_every: int = field(default=35, metadata={"min": 1})        # ticks between last-good snapshots


@dataclass(frozen=True)
class RecordConfig:
    dir: str = "out/recordings"
    screenshot_dir: str = "out/screenshots"
    crf: int = field(default=18, metadata={"min": 0, "max": 51})
    # Actions kept in memory for a recording's trace (every tick since the reset is needed to replay it).
    # Bounds memory in long play; a recording started later writes a trace marked `dropped_ticks`.
    history_s: float = field(default=600.0, metadata={"min": 1.0, "max": 86400.0})


@dataclass(frozen=True)
class PlayConfig:
    backend: Literal["model", "game", "side"] = "model"
    model: str = "student"                  # student | teacher | a checkpoint path
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = field(default=0, metadata={"min": 0, "max": 2**31 - 1})
    tick_hz: float = field(default=35.0, metadata={"min": 1.0, "max": 1000.0})
    bindings: str = "settings/bindings.yaml"
    game: GameConfig = field(default_factory=GameConfig)
    models: ModelPaths = field(default_factory=ModelPaths)
    session: SessionConfig = field(default_factory=SessionConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)   # engine (auto | eager | graphs | onnxruntime), fuse_reencode
    window: WindowConfig = field(default_factory=WindowConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    hud: HudConfig = field(default_factory=HudConfig)
    record: RecordConfig = field(default_factory=RecordConfig)


def load_play(path: str | Path, overrides: dict | None = None) -> PlayConfig:
    """settings/play.yaml -> PlayConfig; errors are SettingsError naming file, key and value."""
    return load(path, PlayConfig, overrides)


def resolve(path: str | Path) -> Path:
    """Settings paths are relative to the repo root, so the player works from any cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p
