"""How strongly one tick of input moves the player in the real game: walking has momentum, turning has none.

    python -m world_model.recipes.move_physics [--ticks 20] [--seed 3] [--trace assets/traces/heldout-10001.jsonl]

From a standing start the player walks forward for `ticks` ticks, then stands still for 6; the distance
covered on every tick is printed, then the view angle that one tick of full turn gives. Why it matters
(docs/EVALUATION.md, session 10): a model predicting the next frame from real context frames sees the
velocity in those frames, so the current forward input only explains its thrust (the first tick's
distance), while a turn input explains the whole change of view.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from ..actions import Action
from ..game import Game, GameConfig


def measure(ticks: int = 20, seed: int = 3, coast: int = 6) -> dict[str, list[float] | float]:
    """Map units moved per tick while walking from rest (`walk`), then per no-op tick (`coast`), and the
    degrees one full-turn tick rotates the view (`turn_degrees`, positive to the right)."""
    import vizdoom as vzd

    with Game(GameConfig()) as game:
        game.reset(seed)
        var = game._game.get_game_variable
        where = lambda: np.array([var(vzd.GameVariable.POSITION_X), var(vzd.GameVariable.POSITION_Y)])
        steps = []
        for action in [Action(forward=1.0)] * ticks + [Action()] * coast:
            before = where()
            game.step(action)
            steps.append(float(np.linalg.norm(where() - before)))
        angle = var(vzd.GameVariable.ANGLE)
        game.step(Action(turn=1.0))
        turned = (angle - var(vzd.GameVariable.ANGLE) + 540.0) % 360.0 - 180.0   # Doom's angle grows leftwards
    return {"walk": steps[:ticks], "coast": steps[ticks:], "turn_degrees": turned}


def trace_velocity(path: str, ticks: int = 2000) -> dict[str, float]:
    """Replay a trace on the game and compare, tick by tick, the player's forward speed (displacement along
    the view direction) with the momentum feature of the model's input (action_features: the decayed average
    of the forward inputs). Returns their correlation over ticks inside an episode and the speed per unit of
    momentum (least squares), which is about 8.3 map units per tick where nothing blocks the player."""
    import math

    import torch
    import vizdoom as vzd

    from ..model import ModelConfig, action_features
    from ..trace import load as load_trace

    trace = load_trace(path)
    actions = trace.actions[:ticks]
    feats, _ = action_features(ModelConfig(action_momentum=True), torch.tensor([[a.to_list() for a in actions]]))
    momentum = feats[0, :, 5].numpy()                                                    # (T,) forward
    speed, keep = [], []
    with Game(GameConfig()) as game:
        game.reset(trace.seed)
        var = game._game.get_game_variable
        for a in actions:
            x, y = var(vzd.GameVariable.POSITION_X), var(vzd.GameVariable.POSITION_Y)
            game.step(a)
            angle = math.radians(var(vzd.GameVariable.ANGLE))
            dx, dy = var(vzd.GameVariable.POSITION_X) - x, var(vzd.GameVariable.POSITION_Y) - y
            speed.append(dx * math.cos(angle) + dy * math.sin(angle))
            keep.append(not game.tick_info.new_episode)
    s, m, k = np.array(speed), momentum, np.array(keep)
    s, m = s[k], m[k]
    return {"ticks": int(k.sum()), "correlation": float(np.corrcoef(s, m)[0, 1]),
            "units_per_momentum": float((s * m).sum() / max((m * m).sum(), 1e-9)),
            "correlation_own_input": float(np.corrcoef(s, np.array([a.forward for a in actions])[k])[0, 1])}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ticks", type=int, default=20)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--trace", help="also replay this trace and correlate forward speed with the momentum feature")
    args = p.parse_args(argv)
    m = measure(args.ticks, args.seed)
    walk, coast = m["walk"], m["coast"]
    print("map units per tick, walking from rest:", " ".join(f"{x:.2f}" for x in walk))
    print("then standing still:                  ", " ".join(f"{x:.2f}" for x in coast))
    print(f"one tick's thrust is {walk[0]:.2f} units, {walk[0] / walk[-1]:.0%} of the speed after {len(walk)} ticks; "
          f"friction keeps {coast[1] / coast[0]:.3f} of the speed per tick")
    print(f"one tick of full turn: {m['turn_degrees']:.2f} degrees, all of it on that tick")
    if args.trace:
        r = trace_velocity(args.trace)
        print(f"{args.trace}: over {r['ticks']} ticks the forward speed correlates {r['correlation']:.3f} with the "
              f"momentum feature ({r['units_per_momentum']:.2f} units per tick at momentum 1) and "
              f"{r['correlation_own_input']:.3f} with the tick's own forward input")


if __name__ == "__main__":
    main()
