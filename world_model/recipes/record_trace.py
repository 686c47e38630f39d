"""Write N ticks of exploration-policy play as a trace file.

    python -m world_model.recipes.record_trace --ticks 600 --seed 1000 --out assets/traces/heldout-1000.jsonl

The trace replays bit-exactly on the game (`python main.py replay TRACE --backend game --out DIR`).
`--style heldout` uses a policy mix that differs from the training collector's (no monster fighting,
more probes, slower turns, more idle holds), for held-out evaluation; `--style heldout-idle` is that mix
resting much more often, for at least 35 ticks each time (assets/traces/heldout-idle-10200.jsonl).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from ..game import Game, GameConfig, map_sectors
from ..policy import ExplorerPolicy, PolicyConfig, RoutePlanner
from ..trace import Trace, save
from ..collect import play

STYLES = {
    "train": PolicyConfig(),
    "heldout": replace(PolicyConfig(), fight=False, probe_prob=0.04, turn_gain=0.8, speed_min=0.5, smoothing=0.25,
                       idle_prob=0.004, idle_turn_prob=0.3),
}
STYLES["heldout-idle"] = replace(STYLES["heldout"], idle_prob=0.02, idle_ticks=(35, 100))


def record(ticks: int, seed: int, context: int = 8, style: str = "train", game_cfg: GameConfig = GameConfig()) -> Trace:
    cfg = replace(game_cfg, buffers=True)
    with Game(cfg) as game:
        policy = ExplorerPolicy(STYLES[style], seed, RoutePlanner(map_sectors(cfg)))
        actions = [a for _, a, _ in play(game, policy, seed, ticks + 1)][1:]
    return Trace(seed=seed, actions=actions, world=cfg.world, context=context, extra={"policy": style})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ticks", type=int, required=True, help="actions to record (context included)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--style", choices=sorted(STYLES), default="train")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    trace = record(args.ticks, args.seed, args.context, args.style)
    save(trace, args.out)
    print(f"wrote {args.out}: {len(trace.actions)} ticks, seed {args.seed}, context {args.context}, style {args.style}")


if __name__ == "__main__":
    main()
