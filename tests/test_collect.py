"""Exploration policy, parallel collector, clip buffer and trace recording."""
import numpy as np
import torch

from world_model.actions import NOOP
from world_model.collect import CollectConfig, Collector, play
from world_model.data import ClipBuffer
from world_model.game import Game, GameConfig, map_sectors
from world_model.policy import ExplorerPolicy, PolicyConfig, RoutePlanner
from world_model.recipes.record_trace import record
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
