"""The real game: determinism, action mapping, resolution and position reporting."""
import hashlib

import numpy as np
import pytest

from settings import SettingsError, from_dict
from world_model.actions import FORWARD_SPEED, STRAFE_SPEED, TURN_DEGREES, Action
from world_model.game import Game, GameConfig

ACTIONS = [Action(forward=1.0)] * 10 + [Action(turn=-0.5, strafe=0.3)] * 10 + [Action(attack=1, forward=-0.4)] * 5


def _run(seed, actions, cfg=GameConfig()):
    with Game(cfg) as g:
        frames = [g.reset(seed)] + [g.step(a) for a in actions]
    return hashlib.sha256(np.stack(frames).tobytes()).hexdigest(), frames


def test_same_seed_and_actions_give_identical_frames():
    h1, frames = _run(5, ACTIONS)
    h2, _ = _run(5, ACTIONS)
    assert h1 == h2
    assert frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[-1])        # the actions did something


def test_different_actions_give_different_frames():
    h1, _ = _run(5, ACTIONS)
    h2, _ = _run(5, [Action(turn=1.0)] * len(ACTIONS))
    assert h1 != h2


def test_action_maps_to_vizdoom_delta_buttons():
    assert Action(forward=1, strafe=-1, turn=0.5, attack=1, use=0).doom_buttons() == [
        FORWARD_SPEED, -STRAFE_SPEED, 0.5 * TURN_DEGREES, 1.0, 0.0]
    assert TURN_DEGREES == pytest.approx(3.515625)


def test_axes_move_the_player_the_documented_way():
    with Game() as g:
        g.reset(0)
        x0, y0, a0 = g.tick_info.x, g.tick_info.y, g.tick_info.angle
        for _ in range(20):
            g.step(Action(forward=1.0))
        dx, dy = g.tick_info.x - x0, g.tick_info.y - y0
        heading = np.radians(a0)
        assert dx * np.cos(heading) + dy * np.sin(heading) > 20          # forward is along the view
        g.reset(0)
        g.step(Action(turn=1.0))
        turned = (g.tick_info.angle - a0 + 180) % 360 - 180
        assert turned == pytest.approx(-TURN_DEGREES, abs=1e-3)         # right turn: Doom angle decreases
        g.reset(0)
        for _ in range(8):
            g.step(Action(strafe=1.0))
        dx, dy = g.tick_info.x - x0, g.tick_info.y - y0
        right = heading - np.pi / 2
        assert dx * np.cos(right) + dy * np.sin(right) > 10               # strafe +1 is to the right


def test_resolution_is_configurable_and_validated():
    with Game(GameConfig(width=320, height=240)) as g:
        assert g.reset(0).shape == (240, 320, 3)
    with pytest.raises(SettingsError, match="width/height"):
        from_dict({"width": 161, "height": 120}, GameConfig, "game.yaml")


def test_buffers_and_world_id():
    cfg = GameConfig(buffers=True)
    assert cfg.world == "freedoom1:E1M1"
    with Game(cfg) as g:
        g.reset(1)
        assert g.tick_info.depth.shape == (120, 160)
        assert isinstance(g.tick_info.labels, list)


def test_episode_end_restarts_on_next_seed():
    with Game(GameConfig(episode_ticks=12)) as g:     # the limit counts the 7 warm-up tics too
        g.reset(3)
        infos = []
        for _ in range(8):
            g.step(Action())
            infos.append((g.tick_info.new_episode, g.tick_info.seed, g.tick_info.episode))
    restart = [i for i, (new, _, _) in enumerate(infos) if new]
    assert restart, infos
    assert infos[restart[0]][1:] == (4, 1)


def test_walking_has_momentum_and_turning_does_not():
    """recipes/move_physics: one tick of forward is a small thrust that builds up and decays by Doom's
    friction, while one tick of turn rotates the view by the whole keyboard step at once."""
    from world_model.actions import TURN_DEGREES
    from world_model.recipes.move_physics import measure
    m = measure(ticks=6, coast=3)
    walk, coast = m["walk"], m["coast"]
    assert 0.5 < walk[0] < 1.0 and all(b > a for a, b in zip(walk, walk[1:]))      # thrust ~0.78 units, growing
    assert all(abs(b / a - 0.90625) < 0.01 for a, b in zip(coast, coast[1:]))      # friction 0xE800 / 0x10000
    assert abs(m["turn_degrees"] - TURN_DEGREES) < 0.05


def test_forward_speed_follows_the_momentum_feature_on_a_trace():
    """recipes/move_physics --trace: on a held-out trace replayed in the game, the player's forward speed
    follows the model's momentum input (ModelConfig.action_momentum) more closely than the tick's input."""
    from world_model.recipes.move_physics import trace_velocity
    r = trace_velocity("assets/traces/heldout-10001.jsonl", ticks=300)
    assert r["ticks"] > 250 and r["correlation"] > 0.8 and r["correlation"] > r["correlation_own_input"]
    assert 3.0 < r["units_per_momentum"] < 9.0
