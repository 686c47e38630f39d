"""Exploration policy, parallel collector, clip buffer, coverage statistics and trace recording."""
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from world_model.actions import NOOP
from world_model.actions import Action
from world_model.collect import CollectConfig, Collector, play, worker_policy
from world_model.data import ClipBuffer
from world_model.game import Game, GameConfig, map_sectors
from world_model.policy import ExplorerPolicy, PolicyConfig, RoutePlanner
from world_model.recipes.coverage import forward_breaks, idle_stats, noop_runs
from world_model.recipes.record_trace import STYLES, record
from world_model.trace import load, save


def test_policy_plays_and_moves_around():
    cfg = GameConfig(buffers=True)
    with Game(cfg) as g:
        policy = ExplorerPolicy(PolicyConfig(), seed=0, planner=RoutePlanner(map_sectors(cfg)))
        items = list(play(g, policy, seed=0, ticks=600))
        xy = [(g.tick_info.x, g.tick_info.y)]
    acts = np.array([a.to_list() for _, a, _ in items[1:]])
    assert items[0][1] == NOOP and items[0][2]
    assert np.abs(acts[:, 0]).mean() > 0.1 and np.abs(acts[:, 2]).mean() > 0.05    # moves and turns
    assert len({tuple(np.round(r, 2)) for r in acts}) > 50                          # analog, varied
    assert xy[0] != (-416.0, 256.0)                                                  # left the start spot


def test_policy_is_deterministic_for_a_seed():
    cfg = GameConfig(buffers=True)

    def run():
        with Game(cfg) as g:
            return [a for _, a, _ in play(g, ExplorerPolicy(PolicyConfig(), 3, RoutePlanner(map_sectors(cfg))), 3, 200)]
    assert run() == run()


def test_route_planner_finds_paths_out_of_the_start_room():
    planner = RoutePlanner(map_sectors(GameConfig()))
    start = planner.locate(-416.0, 256.0)
    reachable = [i for i in range(len(planner.sectors)) if planner.route(start, i)]
    assert len(reachable) > 40        # of 182: many sectors are lifts, ledges or decoration
    dist = np.sqrt(((planner.centre[reachable] - planner.centre[start]) ** 2).sum(1))
    assert dist.max() > 1500          # routes lead far from the first room
    route = planner.route(start, reachable[int(np.argmax(dist))])
    assert len(route) > 5


def test_collector_delivers_aligned_chunks():
    cfg = CollectConfig(workers=2, chunk_ticks=64, game=GameConfig(buffers=True))
    with Collector(cfg, seed=0) as col:
        chunks = [col.next() for _ in range(4)]
        while {c.worker for c in chunks} != {0, 1} and len(chunks) < 40:
            chunks.append(col.next())
    assert {c.worker for c in chunks} == {0, 1}
    for c in chunks:
        assert c.frames.shape == (64, 120, 160, 3) and c.frames.dtype == np.uint8
        assert c.actions.shape == (64, 5) and c.starts.shape == (64,)
        assert (c.actions[c.starts] == 0).all()                  # start frames follow no action
    first = [c for c in chunks if c.worker == 0][0]
    assert first.starts[0]                                       # each worker's stream opens an episode


def test_collector_matches_single_process_play():
    """A worker's stream is exactly what `play` gives for the same seed: frames and actions."""
    cfg = CollectConfig(workers=1, chunk_ticks=32, mix=False, game=GameConfig(buffers=True))
    with Collector(cfg, seed=0) as col:
        chunk = col.next()
    with Game(cfg.game) as g:
        items = list(play(g, ExplorerPolicy(cfg.policy, 0, RoutePlanner(map_sectors(cfg.game))), 0, 32,
                          spawn_prob=cfg.spawn_prob))
    assert np.array_equal(chunk.frames, np.stack([f for f, _, _ in items]))
    assert np.allclose(chunk.actions[1:], [a.to_list() for _, a, _ in items[1:]])


def test_clip_buffer_never_crosses_starts_or_chunks():
    buf = ClipBuffer(100, (1,), dtype=torch.float32)
    for k in range(5):                          # chunks of 30: the 4th wraps to the front
        starts = np.zeros(30, bool)
        starts[10] = k == 1
        vals = torch.arange(30, dtype=torch.float32)[:, None] + 100 * k
        buf.add(vals, torch.zeros(30, 5), starts)
    ok = buf.starts_for(8)
    items, _ = buf.sample(256, 8, np.random.default_rng(0))
    d = items[..., 0].diff(dim=1)
    assert (d == 1).all()                       # consecutive ticks of one chunk
    assert len(ok) > 0
    for i in ok:
        assert not buf.boundary[i + 1: i + 8].any()


def test_recorded_trace_replays_bit_exact(tmp_path):
    trace = record(ticks=40, seed=11, context=4)
    save(trace, tmp_path / "t.jsonl")
    t = load(tmp_path / "t.jsonl")
    assert t.actions == trace.actions and t.extra["policy"] == "train"

    def replay():
        with Game() as g:
            return np.stack([g.reset(t.seed)] + [g.step(a) for a in t.actions])
    assert np.array_equal(replay(), replay())


def test_random_spawns_start_episodes_across_the_map():
    cfg = GameConfig(buffers=True)
    planner = RoutePlanner(map_sectors(cfg))
    spots = planner.spawn_points()
    assert len(spots) > 30
    starts = set()
    for seed in range(4):
        with Game(cfg) as g:
            frame, action, start = next(play(g, ExplorerPolicy(PolicyConfig(), seed, planner), seed, 5, spawn_prob=1.0))
            assert start and action == NOOP and g.tick_info.new_episode
            starts.add((round(g.tick_info.x), round(g.tick_info.y)))
    assert len(starts) > 1 and (-416, 256) not in starts          # not the level start
    with Game(cfg) as g:                                          # spawn_prob 0: the level start, as traces need
        next(play(g, ExplorerPolicy(PolicyConfig(), 0, planner), 0, 5))
        assert (g.tick_info.x, g.tick_info.y) == (-416.0, 256.0)


def runs_of(actions: list[Action], keep) -> list[tuple[int, int, Action]]:
    """(start, length, action) of the runs of identical consecutive actions for which keep(action) holds."""
    out, i = [], 0
    while i < len(actions):
        j = i
        while j < len(actions) and actions[j] == actions[i]:
            j += 1
        if keep(actions[i]):
            out.append((i, j - i, actions[i]))
        i = j
    return out


def idle_play(cfg: PolicyConfig, ticks: int = 400, seed: int = 5) -> list[Action]:
    gcfg = GameConfig(buffers=True)
    with Game(gcfg) as g:
        return [a for _, a, _ in play(g, ExplorerPolicy(cfg, seed, RoutePlanner(map_sectors(gcfg))), seed, ticks)][1:]


def test_idle_holds_are_exact_noop_stretches_and_the_policy_moves_on_after_them():
    cfg = replace(PolicyConfig(), idle_prob=0.03, idle_ticks=(40, 50), idle_turn_prob=0.0, probe_prob=0.0,
                  move_prob=0.0)
    acts = idle_play(cfg)
    holds = runs_of(acts, lambda a: a == NOOP)
    long = [(i, n) for i, n, _ in holds if n >= 40]
    assert len(long) >= 2 and all(n <= 50 * 2 for _, n, _ in holds)     # two holds may meet, never more
    for i, n in long:
        after = acts[i + n: i + n + 10]
        assert after and all(a.forward >= 0 for a in after)           # cruises on: resting was not "stuck"
    assert not runs_of(idle_play(replace(cfg, idle_prob=0.0)), lambda a: a == NOOP)   # no holds without it


def test_some_idle_holds_only_turn_slowly():
    cfg = replace(PolicyConfig(), idle_prob=0.03, idle_ticks=(30, 30), idle_turn_prob=1.0, probe_prob=0.0,
                  move_prob=0.0)
    turns = runs_of(idle_play(cfg), lambda a: a.forward == a.strafe == 0 and 0.1 <= abs(a.turn) <= 0.3)
    assert [n for _, n, _ in turns if n >= 30]


def test_workers_idle_at_different_rates_and_zero_stays_zero():
    rates = [worker_policy(PolicyConfig(), w, mix=True).idle_prob for w in range(16)]
    base = PolicyConfig().idle_prob
    assert min(rates) < 0.7 * base and max(rates) > 1.3 * base and len(set(rates)) == 16
    assert all(worker_policy(replace(PolicyConfig(), idle_prob=0.0), w, True).idle_prob == 0 for w in range(4))
    assert worker_policy(PolicyConfig(), 3, mix=False).idle_prob == base


def test_move_probes_reverse_and_start_from_rest_whatever_the_motion():
    cfg = replace(PolicyConfig(), move_prob=0.05, probe_prob=0.0, idle_prob=0.0)
    acts = idle_play(cfg, ticks=600)
    pure = runs_of(acts, lambda a: a.strafe == a.turn == 0 and a.attack == a.use == 0)
    reversals = [(i, n) for (i, n, a), (j, m, b) in zip(pure, pure[1:])
                 if j == i + n and n == m and 4 <= n <= 12 and a.forward == -b.forward != 0]
    starts = [(i, n) for (i, n, a), (j, m, b) in zip(pure, pure[1:])
              if j == i + n and a == NOOP and n >= 8 and abs(b.forward) >= 0.5]
    assert reversals and starts
    stream = {0: [(np.array([a.to_list() for a in acts], np.float32), np.zeros(len(acts), bool))]}
    off = [a.to_list() for a in idle_play(replace(cfg, move_prob=0.0), ticks=600)]
    assert forward_breaks(stream)["reversal"] > 2 * forward_breaks({0: [(np.array(off), np.zeros(len(off), bool))]})["reversal"]


def test_move_min_ticks_lengthens_every_held_leg_of_a_move_probe():
    cfg = replace(PolicyConfig(), move_prob=0.05, probe_prob=0.0, idle_prob=0.0, move_min_ticks=10)
    pure = runs_of(idle_play(cfg, ticks=600), lambda a: a.strafe == a.turn == 0 and a.attack == a.use == 0)
    legs = [n for (i, n, a), (j, m, b) in zip(pure, pure[1:]) if j == i + n and n == m and a.forward == -b.forward != 0]
    assert legs and all(10 <= n <= 12 for n in legs)


def test_move_turn_prob_holds_one_turn_through_both_legs_of_a_reversal():
    cfg = replace(PolicyConfig(), move_prob=0.05, probe_prob=0.0, idle_prob=0.0, move_min_ticks=10, move_turn_prob=1.0)
    acts = idle_play(cfg, ticks=600)
    held = runs_of(acts, lambda a: a.strafe == 0 and a.turn != 0 and abs(a.forward) >= 0.5 and a.attack == a.use == 0)
    # a reversal: two legs of 10-12 ticks, the same turn held through both while the key flips
    legs = [(n, a.turn) for (i, n, a), (j, m, b) in zip(held, held[1:])
            if j == i + n and n == m and a.forward == -b.forward and a.turn == b.turn]
    assert legs and all(10 <= n <= 12 and 0.2 <= abs(t) <= 1 for n, t in legs)


def test_forward_breaks_counts_reversals_and_starts_within_episodes():
    f = np.r_[np.ones(10), -np.ones(3), np.zeros(8), np.ones(2)].astype(np.float32)
    a = np.zeros((len(f), 5), np.float32)
    a[:, 0] = f
    st = np.zeros(len(f), bool)
    got = forward_breaks({0: [(a, st)]})
    assert got["ticks"] == len(f) - 8
    assert round(got["reversal"] * got["ticks"]) == 3   # every backward tick: the last 8 still mean forward
    assert round(got["start_from_rest"] * got["ticks"]) == 1
    st[12] = True                                    # an episode start hides the windows that hold it
    assert forward_breaks({0: [(a, st)]})["ticks"] < got["ticks"]


def test_workers_probe_moves_at_different_rates_and_zero_stays_zero():
    rates = [worker_policy(PolicyConfig(), w, mix=True).move_prob for w in range(16)]
    assert len(set(rates)) == 16 and min(rates) < 0.8 * PolicyConfig().move_prob
    assert all(worker_policy(replace(PolicyConfig(), move_prob=0.0), w, True).move_prob == 0 for w in range(4))


def test_noop_runs_per_worker_stream_and_start_ticks_break_them():
    a = np.zeros((12, 5), np.float32)
    a[[2, 3, 7], 0] = 1.0
    starts = np.zeros(12, bool)
    starts[9] = True                                    # an episode start: its no-op is a placeholder
    assert noop_runs(a, starts).tolist() == [2, 3, 1, 2]
    moving = np.ones((12, 5), np.float32)
    stats = idle_stats({0: [(a[:6], starts[:6]), (a[6:], starts[6:])], 1: [(moving, np.zeros(12, bool))]})
    assert stats["noop_longest_run"] == 3 and stats["noop_runs_35_plus"] == 0
    assert stats["noop_fraction"] == 8 / 23 and stats["noop_fraction_in_runs_10_plus"] == 0


def test_the_idle_heldout_trace_holds_long_rests_and_stays_in_one_episode():
    path = Path(__file__).resolve().parents[1] / "assets/traces/heldout-idle-10200.jsonl"
    t = load(path)
    assert t.seed == 10200 and t.extra["policy"] == "heldout-idle" and len(t.actions) == 600
    assert len([n for _, n, _ in runs_of(t.actions, lambda a: a == NOOP) if n >= 35]) >= 3
    assert STYLES["heldout"].idle_prob > 0                              # every held-out style rests sometimes
    with Game() as g:
        g.reset(t.seed)
        cuts = [g.step(a) is None or g.tick_info.new_episode for a in t.actions]
    assert not any(cuts)


def test_forward_breaks_vectorised_matches_the_definition_tick_by_tick():
    from world_model.data import forward_breaks as breaks
    rng = np.random.default_rng(0)
    for _ in range(10):
        f = np.repeat(np.where(rng.random(400) < 0.3, 0, np.round(rng.uniform(-1, 1, 400), 2)), 5).astype(np.float32)
        st = rng.random(len(f)) < 0.005
        rev, start = breaks(f, st)
        for t in range(len(f)):
            prev, now = f[max(0, t - 8):t], f[t]
            ok = t >= 8 and not st[t - 7:t + 1].any()
            want_rev = ok and abs(now) >= 0.5 and abs(prev.mean()) >= 0.2 and np.sign(now) != np.sign(prev.mean())
            want_start = ok and abs(now) >= 0.5 and bool((np.abs(prev) < 0.05).all())
            assert rev[t] == want_rev and start[t] == want_start, t


def test_clip_buffer_draws_clips_with_forward_breaks_more_often_when_asked():
    buf = ClipBuffer(400, (1,), dtype=torch.float32)
    for k in range(4):                                  # chunks of 100 ticks: walking forward, one reversal each
        f = np.ones(100, np.float32)
        f[60 + k:66 + k] = -1.0
        a = torch.zeros(100, 5)
        a[:, 0] = torch.from_numpy(f)
        buf.add(torch.arange(100, dtype=torch.float32)[:, None] + 1000 * k, a, np.zeros(100, bool))
    starts = buf.starts_for(8)
    has = buf.with_breaks(starts, 8)
    assert 0 < has.mean() < 0.2                         # few clips hold a tick of the reversal
    flagged = set(np.flatnonzero(buf.breaks))          # ticks are items: 1000 * chunk + tick, at slot 100 * chunk + tick

    def share(items: torch.Tensor) -> float:            # drawn clips with a flagged tick on frames 1..7
        slots = (items[..., 0] // 1000 * 100 + items[..., 0] % 1000).long()
        return float(np.mean([any(int(s) in flagged for s in row[1:]) for row in slots]))

    assert share(buf.sample(2000, 8, np.random.default_rng(0), break_weight=1e6)[0]) == 1.0
    uniform = share(buf.sample(4000, 8, np.random.default_rng(1))[0])
    assert abs(uniform - has.mean()) < 0.03
    assert share(buf.sample(4000, 8, np.random.default_rng(1), break_weight=4.0)[0]) > 2 * uniform


def pushes(cfg: PolicyConfig, ticks: int = 1500, seed: int = 1000001) -> list[int]:
    """Lengths of the spells of pressing forward without moving (under 0.3 map units a tick)."""
    gcfg = GameConfig(buffers=True)
    with Game(gcfg) as g:
        pol = ExplorerPolicy(cfg, seed, RoutePlanner(map_sectors(gcfg)))
        rows = [(a.forward, g.tick_info.x, g.tick_info.y, s) for _, a, s in play(g, pol, seed, ticks, spawn_prob=0.5)]
    spells, n = [], 0
    for (f, x, y, s), (_, x0, y0, _) in zip(rows[1:], rows):
        if f > 0.1 and not s and math.dist((x, y), (x0, y0)) < 0.3:
            n += 1
        elif n:
            spells, n = spells + [n], 0
    return spells


def test_blocked_ticks_backs_out_of_walls_sooner():
    cfg = worker_policy(PolicyConfig(), 1000001, mix=True)
    assert max(pushes(cfg)) > 10                                   # without it the policy leans on walls
    assert max(pushes(replace(cfg, blocked_ticks=6))) <= 7         # with it, it backs out


def test_snap_starts_leave_idle_holds_with_full_forward_at_once():
    cfg = replace(PolicyConfig(), idle_prob=0.03, idle_ticks=(20, 30), idle_turn_prob=0.0, probe_prob=0.0, move_prob=0.0)
    def firsts(c: PolicyConfig) -> list[float]:
        acts = idle_play(c, ticks=600)
        return [acts[i + n].forward for i, n, _ in runs_of(acts, lambda a: a == NOOP) if n >= 20 and i + n < len(acts)]
    assert 1.0 in firsts(replace(cfg, snap_start_prob=1.0))
    assert max(firsts(cfg)) < 0.5                                  # the stick's ramp


def test_wall_pushes_tells_a_walk_from_rest_from_a_push_into_a_wall():
    from world_model.recipes.coverage import wall_pushes
    f = np.r_[np.zeros(4), np.ones(4), np.zeros(4), np.ones(4)].astype(np.float32)
    x = np.r_[np.zeros(4), np.cumsum([0.78, 1.49, 2.1, 2.7]), np.full(8, 7.07)]    # walks off, then leans on a wall
    pos = np.stack([x, np.zeros(16), np.zeros(16)], 1).astype(np.float32)
    a = np.zeros((16, 5), np.float32)
    a[:, 0] = f
    got = wall_pushes({0: [(pos[:8], a[:8], np.zeros(8, bool)), (pos[8:], a[8:], np.zeros(8, bool))]})
    assert got["presses_from_rest"] == 2 and got["presses_from_rest_that_move"] == 0.5
    assert got["forward_ticks_pushing"] == 0.5
    st = np.zeros(16, bool)
    st[12] = True                                        # an episode start there: that press does not count
    assert wall_pushes({0: [(pos, a, st)]})["presses_from_rest"] == 1


def test_open_starts_rest_until_still_then_walk_off_at_full_forward():
    cfg = replace(PolicyConfig(), idle_prob=0.0, probe_prob=0.0, move_prob=0.0, open_start_prob=0.05)
    def starts(c: PolicyConfig) -> list[int]:
        acts = idle_play(c, ticks=800)
        return [n for i, n, _ in runs_of(acts, lambda a: a == NOOP) if i + n < len(acts) and acts[i + n].forward == 1.0]
    got = starts(cfg)
    assert got and all(25 <= n for n in got)                       # long enough for the slide to settle
    assert not starts(replace(cfg, open_start_prob=0.0))


def test_held_moves_counts_a_backward_hold_that_reverses_a_walk():
    from world_model.recipes.coverage import held_moves
    f = np.r_[np.ones(8), -np.ones(16)].astype(np.float32)            # walk forward, then hold backward
    x = np.r_[2.0 * np.arange(1, 9), 16 - 2.0 * np.arange(1, 9), np.zeros(8)]   # backs 16 units, then a wall
    pos = np.stack([x, np.zeros(24), np.zeros(24)], 1).astype(np.float32)
    a = np.zeros((24, 5), np.float32)
    a[:, 0] = f
    got = held_moves({0: [(pos, a, np.zeros(24, bool))]})
    assert got["windows"] == 9 and got["forward_held"] == 0            # windows start at ticks 8..16
    assert got["backward_held"] == 1.0                                 # every window holds backward
    assert got["backward_held_walking"] == got["backward_held_walking_against_motion"] == 1 / 9
    assert got["backward_held_against_motion"] == 5 / 9     # windows 8..12: the 8 ticks before mean more than -0.2
    st = np.zeros(24, bool)
    st[12] = True                                                      # a new episode: its windows drop out
    assert held_moves({0: [(pos, a, st)]})["windows"] < 9


def test_held_moves_clip_share_weighs_clips_as_training_draws_them():
    from world_model.recipes.coverage import held_moves
    f = np.r_[np.ones(8), -np.ones(16), np.zeros(16)].astype(np.float32)   # walk, back up, stand
    a = np.zeros((40, 5), np.float32)
    a[:, 0] = f
    pos = np.zeros((40, 3), np.float32)
    one = held_moves({0: [(pos, a, np.zeros(40, bool))]}, move_weight=1.0)
    # 25 clips of 16 ticks; those starting at 0..4 hold backward on ticks 8..15 against ticks 0..7's walk
    assert one["clips_backward_held_against_motion"] == 5 / 25 and one["clips_forward_held_against_motion"] == 0
    # the reversal's breaks fall on ticks 8..11, so clips 0..10 are drawn 4 times as often
    four = held_moves({0: [(pos, a, np.zeros(40, bool))]}, move_weight=4.0)
    assert four["clips_backward_held_against_motion"] == 5 * 4 / (11 * 4 + 14)
