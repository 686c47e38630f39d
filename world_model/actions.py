"""Action schema v1: one action per tick at Doom's 35 Hz, shared by game, model, input and traces.

    forward in [-1, 1]   backward .. forward
    strafe  in [-1, 1]   left .. right
    turn    in [-1, 1]   left .. right
    attack  in {0, 1}
    use     in {0, 1}

Full deflection is the original game's keyboard speed *without* the run key (see docs/ACTIONS.md):
forwardmove 25, sidemove 24 and angleturn 640 (3.515625 degrees per tic). Walking rather than running
keeps the per-tick image motion small enough for a small world model (about 6 px of pan per tick at 160 px).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

SCHEMA = "v1"
FIELDS = ("forward", "strafe", "turn", "attack", "use")
AXES = ("forward", "strafe", "turn")
BUTTONS = ("attack", "use")
DIM = len(FIELDS)

# ViZDoom delta-button values at full deflection (measured in docs/ACTIONS.md).
FORWARD_SPEED = 25.0   # MOVE_FORWARD_BACKWARD_DELTA: Doom forwardmove units (walk)
STRAFE_SPEED = 24.0    # MOVE_LEFT_RIGHT_DELTA: Doom sidemove units (walk)
TURN_DEGREES = 640 * 360 / 65536  # TURN_LEFT_RIGHT_DELTA: degrees per tic (keyboard angleturn 640)


class SchemaError(ValueError):
    """An action (or a file carrying actions) does not match schema v1."""


@dataclass(frozen=True)
class Action:
    forward: float = 0.0
    strafe: float = 0.0
    turn: float = 0.0
    attack: int = 0
    use: int = 0

    def __post_init__(self) -> None:
        for name in AXES:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not -1.0 <= v <= 1.0:
                raise SchemaError(f"{name}: must be a number in [-1, 1], got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in BUTTONS:
            v = getattr(self, name)
            if isinstance(v, bool):
                v = int(v)
            if v not in (0, 1) or isinstance(v, float) and not v.is_integer():
                raise SchemaError(f"{name}: must be 0 or 1, got {v!r}")
            object.__setattr__(self, name, int(v))

    def to_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in FIELDS}

    def to_list(self) -> list[float]:
        """The model's input vector, in FIELDS order."""
        return [float(getattr(self, name)) for name in FIELDS]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Action":
        """Strict parse: every field present, nothing extra. Errors name the field."""
        if not isinstance(data, Mapping):
            raise SchemaError(f"expected an object with fields {list(FIELDS)}, got {type(data).__name__}")
        extra = set(data) - set(FIELDS)
        if extra:
            raise SchemaError(f"{sorted(extra)[0]}: unknown field (v1 fields: {', '.join(FIELDS)})")
        for name in FIELDS:
            if name not in data:
                raise SchemaError(f"{name}: missing field")
        return cls(**{name: data[name] for name in FIELDS})

    def doom_buttons(self) -> list[float]:
        """Values for ViZDoom's buttons in game.BUTTONS order.

        Signs: ViZDoom's deltas are positive for forward, right strafe and right turn.
        """
        return [
            self.forward * FORWARD_SPEED,
            self.strafe * STRAFE_SPEED,
            self.turn * TURN_DEGREES,
            float(self.attack),
            float(self.use),
        ]


NOOP = Action()


def check_schema(version: Any, what: str) -> None:
    """Refuse files written for another action schema."""
    if version != SCHEMA:
        raise SchemaError(f"{what} uses action schema {version!r}; this build uses {SCHEMA!r}")


def stack(actions: Sequence[Action]) -> list[list[float]]:
    """[T] actions -> [T][DIM] nested list (wrap with torch.tensor where needed)."""
    return [a.to_list() for a in actions]
