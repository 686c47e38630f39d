"""Fork pairs: two clips of the real game from one state, the same prefix, then different held actions."""
import math

import numpy as np
import pytest
import torch

from world_model.actions import Action
from world_model.collect import CollectConfig, Collector, write_shards
from world_model.data import PairBuffer
from world_model.forks import ForkConfig, branch_actions, fork_pair
from world_model.game import Game, GameConfig, map_sectors
from world_model.policy import ExplorerPolicy, PolicyConfig, RoutePlanner


@pytest.fixture(scope="module")
def played():
    """A game 40 ticks into policy play, its policy and last frame."""
    cfg = GameConfig(buffers=True)
    game = Game(cfg)
    frame = game.reset(3)
    policy = ExplorerPolicy(PolicyConfig(), 3, RoutePlanner(map_sectors(cfg, game.workdir)))
    for _ in range(40):
        frame = game.step(policy.act(frame, game.tick_info))
    yield game, policy, frame
    game.close()


def heading(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a)])


@pytest.mark.parametrize("kind", ["move", "go-stop", "turn", "strafe"])
def test_pairs_share_their_prefix_and_differ_as_their_held_actions_say(played, kind):
    game, policy, frame = played
    cfg = ForkConfig(prefix=6, branch=5)
    rng = np.random.default_rng(0)
    pair, frame = fork_pair(game, policy, frame, cfg, rng, kind)
    assert pair is not None and pair.kind == kind
    assert pair.frames.shape == (2, 11, 120, 160, 3) and pair.actions.shape == (2, 11, 5)
    assert np.array_equal(pair.frames[0, :6], pair.frames[1, :6])          # one prefix, frame for frame
    assert np.array_equal(pair.actions[0, :6], pair.actions[1, :6])
    a, b = branch_actions(kind, np.random.default_rng(0))
    assert np.allclose(pair.actions[0, 6:], a.to_list()) and np.allclose(pair.actions[1, 6:], b.to_list())
    assert np.abs(pair.frames[0, 6:].astype(int) - pair.frames[1, 6:]).mean() > 2   # the branches part
    (xa, ya, ang_a), (xb, yb, ang_b) = pair.end
    if kind in ("move", "go-stop"):            # forward ends further along the view than backward / stopping
        assert np.dot([xa - xb, ya - yb], heading(ang_a)) > 5
    if kind == "turn":                         # left turns counter-clockwise (Doom angles grow that way)
        assert ((ang_a - ang_b + 180) % 360 - 180) > 10
    if kind == "strafe":                       # strafe left ends to the left of strafe right
        left = heading(ang_a + 90)
        assert np.dot([xa - xb, ya - yb], left) > 5
    for _ in range(5):                         # play goes on from the end of the second branch
        frame = game.step(policy.act(frame, game.tick_info))


def test_going_back_replays_a_branch_exactly(played):
    game, policy, frame = played
    frame = game.step(Action(forward=0.5))
    path = game.fork_point()
    acts = [Action(forward=1.0, turn=0.3), Action(forward=1.0), Action(strafe=-1.0), Action()]
    first = [game.step(a) for a in acts]
    game.step(Action(forward=-1.0))            # buttons held when going back must not leak into the replay
    game.back_to(path)
    again = [game.step(a) for a in acts]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))


def test_collector_fork_chunks_hold_whole_pairs():
    fork = ForkConfig(share=1.0, prefix=4, branch=4, gap_min=2, gap_max=6)
    cfg = CollectConfig(workers=1, chunk_ticks=32, game=GameConfig(buffers=True), fork=fork)
    with Collector(cfg, seed=0) as col:
        chunks = [col.next() for _ in range(3)]
    assert not chunks[0].forks and chunks[1].forks and chunks[2].forks   # the first chunk plays in
    for c in chunks[1:]:
        assert (np.flatnonzero(c.starts) == np.arange(0, 32, 8)).all()   # every clip opens a boundary
        for j in range(2):                                               # two pairs of two 8-tick clips
            a, b = c.frames[16 * j: 16 * j + 8], c.frames[16 * j + 8: 16 * j + 16]
            assert np.array_equal(a[:4], b[:4]) and not np.array_equal(a[4:], b[4:])
    with pytest.raises(ValueError, match="chunk_ticks"):
        CollectConfig(chunk_ticks=30, fork=fork)


def test_written_shards_tell_fork_rows_from_play(tmp_path):
    fork = ForkConfig(share=1.0, prefix=4, branch=4, gap_min=2, gap_max=6)
    cfg = CollectConfig(workers=1, chunk_ticks=32, game=GameConfig(buffers=True), fork=fork)
    (path,) = write_shards(cfg, seed=0, ticks=96, out=tmp_path, shard_ticks=4096)
    with np.load(path) as z:
        forks, starts = z["forks"], z["starts"]
    assert forks.shape == starts.shape == (96,)
    assert not forks[:32].any() and forks[32:].all()          # the first chunk plays in, then pairs only


def test_pair_buffer_keeps_pairs_whole_and_rings():
    buf = PairBuffer(3, 2, (1,), dtype=torch.float32)
    items = torch.arange(16, dtype=torch.float32)[:, None]          # 4 pairs of two 2-tick clips
    buf.add(items, torch.zeros(16, 5))
    assert len(buf) == 3 and buf.head == 1
    x, a = buf.sample(5, np.random.default_rng(0))
    assert x.shape == (5, 2, 2, 1) and a.shape == (5, 2, 2, 5)
    assert ((x[:, 1, 0] - x[:, 0, 0]) == 2).all()                   # clip B follows clip A of its pair
    assert set(x[:, 0, 0, 0].tolist()) <= {4.0, 8.0, 12.0}          # pair 0 was overwritten by pair 3
    with pytest.raises(ValueError, match="whole pairs"):
        buf.add(items[:6], torch.zeros(6, 5))


def test_two_games_in_one_folder_fork_without_touching_each_others_files(tmp_path):
    """Two collectors on one machine share worker folders (session 14 lost a GPU run to one file for both)."""
    games = [Game(GameConfig(), workdir=str(tmp_path)) for _ in range(2)]
    for g, seed in zip(games, (1, 2)):
        g.reset(seed)
    paths = [g.fork_point() for g in games]
    assert paths[0] != paths[1]
    first = [[g.step(Action(forward=1.0)) for _ in range(3)] for g in games]
    for g, p in zip(games, paths):
        g.back_to(p)
    again = [[g.step(Action(forward=1.0)) for _ in range(3)] for g in games]
    assert all(np.array_equal(x, y) for a, b in zip(first, again) for x, y in zip(a, b))
    for g, p in zip(games, paths):
        g.close()
        assert not (tmp_path / p).exists()


def test_pair_effect_recipe_plays_pairs_and_reads_an_action_blind_model_as_zero():
    from world_model.model import ModelConfig, WorldModel
    from world_model.recipes.pair_effect import effects, play_pairs
    import settings
    frames, actions = play_pairs("move", 1, seed=5, cfg=ForkConfig(prefix=3, branch=2))
    assert frames.shape == (1, 2, 5, 120, 160, 3) and actions.shape == (1, 2, 5, 5)
    assert (actions[0, 0, 3:, 0] == 1).all() and (actions[0, 1, 3:, 0] == -1).all()
    torch.manual_seed(0)
    model = WorldModel(settings.load("settings/model/tiny.yaml", ModelConfig)).eval()   # outputs 0 until trained
    x0 = torch.randn((1, 2, 5, *model.config.latent_shape))
    x0[:, 1, :3] = x0[:, 0, :3]                                                     # one prefix
    out = effects(model, x0, torch.from_numpy(actions), t=1.0, prefix=3)
    assert set(out) == {"all", "tick1", "tick2"} and all(v == pytest.approx(0.0, abs=1e-6) for v in out.values())


class _ReplayGame:
    """A stand-in for Game whose replays after a load differ from the first play by `off` grey levels on a
    quarter of each frame, like the rooms where ViZDoom's load does not restore animated textures."""

    def __init__(self, off: int):
        self.off, self.loads, self.t = off, 0, 0
        self.tick_info = type("Info", (), {"new_episode": False, "x": 0.0, "y": 0.0, "angle": 0.0})()

    def fork_point(self) -> str:
        self.t0 = self.t
        return "file"

    def back_to(self, path: str) -> None:
        self.loads, self.t = self.loads + 1, self.t0

    def step(self, action: Action) -> np.ndarray:
        self.t += 1
        frame = np.full((8, 8, 3), 10 * self.t, np.uint8)
        frame[:4, :4] += np.uint8(self.off * 4 * self.loads)     # a quarter of the pixels: mean = off
        return frame


class _Policy:
    def act(self, frame, info) -> Action:
        return Action(forward=0.5)


@pytest.mark.parametrize("off, tol, kept", [(0, 0.0, True), (1, 1.0, True), (1, 0.5, False), (3, 1.0, False)])
def test_pairs_whose_prefixes_differ_a_little_are_kept_and_more_dropped(off, tol, kept):
    cfg = ForkConfig(prefix=3, branch=2, prefix_tol=tol)
    pair, _ = fork_pair(_ReplayGame(off), _Policy(), np.zeros((8, 8, 3), np.uint8), cfg, np.random.default_rng(0), "move")
    assert (pair is not None) == kept


def test_collector_keeps_trying_where_pairs_drop_after_some_were_made(monkeypatch):
    """Session 15: a worker stopped a GPU run after 50 drops in a row in one room. Only a worker that never
    made a pair (replay broken) gives up after 50."""
    from world_model import collect
    cfg = CollectConfig(workers=1, chunk_ticks=32, fork=ForkConfig(share=1.0, prefix=4, branch=4, gap_min=0, gap_max=0))
    good = fork_pair.__globals__["ForkPair"](np.zeros((2, 8, 2, 2, 3), np.uint8), np.zeros((2, 8, 5), np.float32),
                                            "move", np.zeros((2, 3), np.float32))
    results = iter([None] * 49 + [good] + [None] * 300 + [good] + [None] * 50)   # a chunk holds 2 pairs
    monkeypatch.setattr(collect, "fork_pair", lambda *a, **k: (next(results), None))
    stream = iter(lambda: (None, None, False), 0)
    views = (np.zeros((32, 2, 2, 3), np.uint8), np.zeros((32, 5), np.float32), np.zeros(32, bool), np.zeros((32, 3), np.float32))
    tally = collect.ForkTally()
    collect._fork_chunk(cfg, None, None, stream, None, np.random.default_rng(0), tally, *views)
    assert tally.made == 2 and tally.in_a_row == 0                    # 349 drops, then the chunk filled
    with pytest.raises(RuntimeError, match="50 dropped in a row after 0 made"):
        collect._fork_chunk(cfg, None, None, stream, None, np.random.default_rng(0), collect.ForkTally(), *views)


def test_pairs_from_rest_settle_first_and_share_a_still_prefix(played):
    game, policy, frame = played
    cfg = ForkConfig(prefix=4, branch=4, settle=35)
    pair, frame = fork_pair(game, policy, frame, cfg, np.random.default_rng(1), "move", rest=True)
    assert pair is not None
    assert (pair.actions[:, :4] == 0).all()                                     # a prefix of no-ops
    still = np.abs(np.diff(pair.frames[0, :4].astype(int), axis=0)).mean()      # the slide has settled
    assert still < 1.0, still
    assert np.abs(pair.frames[0, 4:].astype(int) - pair.frames[1, 4:]).mean() > 1   # forward and backward part
