"""zoom_toy: its camera does what the actions say, and the recipe runs end to end on a few steps."""
import json

import torch

from world_model.recipes import zoom_toy
from world_model.recipes.zoom_toy import KINDS, clips, step_camera, view, world


def test_pan_shifts_the_view_by_about_one_column():
    g = torch.Generator().manual_seed(0)
    fields = world(4, g)
    cx, scale, speed = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    before = view(fields, cx, scale)                                                # (4, C, H, W)
    right = view(fields, *step_camera(cx, scale, speed, torch.full((4,), KINDS.index("right")))[:2])
    # panning right brings what was one column to the right into view: right[..., j] ~ before[..., j + 1]
    shifted = (right[..., :-1] - before[..., 1:]).pow(2).mean()
    unshifted = (right - before).pow(2).mean()
    assert shifted < 0.05 * unshifted


def test_zoom_in_magnifies_about_the_centre():
    g = torch.Generator().manual_seed(1)
    fields = world(4, g)
    cx, scale, speed = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    before = view(fields, cx, scale)
    zin = view(fields, *step_camera(cx, scale, speed, torch.full((4,), KINDS.index("in")))[:2])
    H, W = before.shape[-2:]
    # the centre pixels barely move; the corners move by about 12% of the half diagonal
    mid = (slice(None), slice(None), slice(H // 2 - 1, H // 2 + 1), slice(W // 2 - 1, W // 2 + 1))
    centre = (zin[mid] - before[mid]).pow(2).mean()
    corners = (zin[..., [0, 0, -1, -1], [0, -1, 0, -1]] - before[..., [0, 0, -1, -1], [0, -1, 0, -1]]).pow(2).mean()
    assert centre < 0.1 * corners
    # in then out returns the camera to where it was
    cx2, s2, _ = step_camera(*step_camera(cx, scale, speed, torch.full((4,), KINDS.index("in"))),
                             torch.full((4,), KINDS.index("out")))
    assert torch.allclose(cx2, cx) and torch.allclose(s2, scale)


def test_momentum_walks_up_to_the_zoom_and_coasts():
    zero = torch.zeros(1)
    fwd, left = torch.tensor([KINDS.index("in")]), torch.tensor([KINDS.index("left")])
    cx, scale, speed = zero, zero, zero
    steps = []
    for _ in range(40):
        cx, scale, speed = step_camera(cx, scale, speed, fwd, 0.9)
        steps.append(speed.item())
    assert abs(steps[0] - 0.1 * zoom_toy.ZOOM) < 1e-6                 # one tick's push: a tenth of the walk
    assert abs(steps[-1] - zoom_toy.ZOOM) < 0.02 * zoom_toy.ZOOM      # held, it reaches ZOOM per tick
    cx2, _, coast = step_camera(cx, scale, speed, left, 0.9)
    assert abs(coast.item() - 0.9 * speed.item()) < 1e-6 and cx2 < cx  # a turn tick pans at once; the zoom coasts
    # with momentum the clips start moving: the context frames differ even where no zoom is pressed
    _, _, _, before = clips(256, torch.Generator().manual_seed(4), momentum=0.9)
    assert before.shape == (3, 256) and before[2].abs().max() > 0.5 * zoom_toy.ZOOM


def test_clip_actions_match_the_drawn_motion():
    g = torch.Generator().manual_seed(2)
    last = torch.tensor([KINDS.index("left"), KINDS.index("in")])
    x, a, fields, before = clips(2, g, last=last)
    assert x.shape == (2, zoom_toy.CLIP, zoom_toy.C, zoom_toy.H, zoom_toy.W) and a.shape == (2, zoom_toy.CLIP, 5)
    assert a[0, -1, 2] == -1 and a[0, -1, 0] == 0          # left: turn -1
    assert a[1, -1, 0] == 1 and a[1, -1, 2] == 0           # in: forward +1
    redrawn = view(fields, *step_camera(*before, last)[:2])
    assert torch.allclose(redrawn, x[:, -1])


def test_hold_repeats_actions_and_hold_zero_keeps_the_old_clips():
    x0, a0, _, _ = clips(64, torch.Generator().manual_seed(3))
    x1, a1, _, _ = clips(64, torch.Generator().manual_seed(3), hold=0.0)
    assert torch.equal(x0, x1) and torch.equal(a0, a1)
    _, held, _, _ = clips(64, torch.Generator().manual_seed(3), hold=1.0)
    assert (held == held[:, :1]).all()                      # hold 1: every tick repeats the first action
    _, some, _, _ = clips(512, torch.Generator().manual_seed(3), hold=0.75)
    same = (some[:, 1:] == some[:, :-1]).all(-1).float().mean()
    assert 0.75 < same < 0.87                               # 0.75 held + 0.25 x 1/4 drawn the same again
    # holding only "in": an action after "out" is drawn afresh, one after "in" mostly repeats it
    _, part, _, _ = clips(2048, torch.Generator().manual_seed(3), hold=0.75, hold_kinds=["in"])
    prev, now = part[:, :-1, 0], part[:, 1:, 0]                  # forward: 1 "in", -1 "out"
    assert (now[prev == 1] == 1).float().mean() > 0.75
    assert abs((now[prev == -1] == -1).float().mean() - 0.25) < 0.05


class _Oracle(torch.nn.Module):
    """Knows the true last frame of pair_effects' clips under each action: v = (x_t - x0) / t, so the t = 1
    guess and an Euler sample both land on it. With `blind`, it answers as if the action were always "left"."""

    def __init__(self, n: int, seed: int, blind: bool = False, momentum: float = 0.0):
        super().__init__()
        _, _, self.fields, self.before = clips(n, torch.Generator().manual_seed(seed), momentum=momentum)
        self.blind, self.momentum = blind, momentum

    def forward(self, x, t, a):
        forward, turn = a[:, -1, 0], a[:, -1, 2]
        kinds = [KINDS.index("left") if self.blind else
                 KINDS.index({(0, -1): "left", (0, 1): "right", (1, 0): "in", (-1, 0): "out"}[(int(f), int(r))])
                 for f, r in zip(forward, turn)]
        x0 = view(self.fields, *step_camera(*self.before, torch.tensor(kinds), self.momentum)[:2])
        v = torch.zeros_like(x)
        v[:, -1] = (x[:, -1] - x0) / t[:, -1, None, None, None]
        return v


def test_pair_effects_score_an_exact_model_one_and_a_blind_one_zero():
    for steps, momentum in ((0, 0.0), (4, 0.0), (0, 0.9)):
        exact = zoom_toy.pair_effects(_Oracle(8, 5, momentum=momentum), 8, 5, steps, momentum=momentum)
        blind = zoom_toy.pair_effects(_Oracle(8, 5, blind=True, momentum=momentum), 8, 5, steps, momentum=momentum)
        assert all(abs(v - 1) < 1e-4 for v in exact.values()), (steps, momentum, exact)
        assert all(abs(v) < 1e-6 for v in blind.values()), (steps, momentum, blind)


def test_recipe_runs_and_reports_every_model(tmp_path):
    out = tmp_path / "toy.json"
    zoom_toy.main(["--steps", "3", "--batch", "2", "--eval-clips", "4", "--continue-steps", "2", "--sample-steps", "2",
                   "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"rope_only", "abs_pos", "patch_action", "continued_rope_only",
                                   "continued_patch_action"}
    for name, run in report["runs"].items():
        assert set(run["effects"]) == {"pan", "zoom", "pan_sampled", "zoom_sampled"}
        assert all(v == v for v in run["effects"].values())        # finite, not NaN
        assert run["log"][-1]["step"] == (2 if name.startswith("continued") else 3)


def test_new_lr_mult_speeds_only_the_added_map():
    base, _ = zoom_toy.train("rope_only", steps=2, batch=2, seed=0, log_every=100)
    runs = {m: zoom_toy.train("patch_action", steps=3, batch=2, seed=1, init=base, lr_max=3e-4, new_lr_mult=m,
                              log_every=100)[0] for m in (1.0, 10.0)}
    moved = {m: r.patch_action.detach().abs().max().item() for m, r in runs.items()}
    assert moved[1.0] > 0 and moved[10.0] > 5 * moved[1.0]        # Adam's step scales with the rate
    # the weights the map was added to learn at the base rate in both runs: their change does not scale up tenfold
    old = dict(base.named_parameters())
    drift = {m: max((p - old[n]).abs().max().item() for n, p in r.named_parameters() if n in old)
             for m, r in runs.items()}
    assert drift[10.0] < 3 * drift[1.0]


class _HeldOracle(torch.nn.Module):
    """Knows held_effects' clips: frame k of a rollout under a held key is the camera walked k ticks from the
    state after frame 0, so its Euler samples land on the truth. With `blind`, it walks "in" whatever is held."""

    def __init__(self, n: int, seed: int, momentum: float, blind: bool = False):
        super().__init__()
        self.fields, _, self.after0 = zoom_toy.held_start(n, torch.Generator().manual_seed(seed), momentum)
        self.momentum, self.blind = momentum, blind

    def forward(self, x, t, a):
        key = KINDS.index("in" if self.blind or a[0, -1, 0] > 0 else "out")
        state = self.after0
        for _ in range(x.shape[1] - 1):
            state = step_camera(*state, torch.full((x.shape[0],), key), self.momentum)
        v = torch.zeros_like(x)
        v[:, -1] = (x[:, -1] - view(self.fields, *state[:2])) / t[:, -1, None, None, None]
        return v


def test_held_effects_score_an_exact_rollout_one_and_a_blind_one_zero():
    exact = zoom_toy.held_effects(_HeldOracle(8, 6, 0.906), 8, 6, 4, momentum=0.906)
    blind = zoom_toy.held_effects(_HeldOracle(8, 6, 0.906, blind=True), 8, 6, 4, momentum=0.906)
    assert len(exact["zoom_ticks"]) == zoom_toy.CLIP - 1 and exact["zoom"] == exact["zoom_ticks"][-1]
    assert all(abs(v - 1) < 1e-4 for v in exact["zoom_ticks"]), exact
    assert all(abs(v) < 1e-6 for v in blind["zoom_ticks"]), blind


def test_momentum_variants_and_the_held_probe_run_with_blind_clips(tmp_path):
    out = tmp_path / "toy.json"
    zoom_toy.main(["--steps", "3", "--batch", "4", "--eval-clips", "4", "--sample-steps", "2", "--momentum", "0.906",
                   "--blind", "0.5", "--variants", "patch_action", "momentum_input", "patch_momentum",
                   "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["blind"] == 0.5 and set(report["runs"]) == {"patch_action", "momentum_input", "patch_momentum"}
    for run in report["runs"].values():
        values = list(run["effects"].values()) + run["held"]["zoom_ticks"]
        assert len(run["held"]["zoom_ticks"]) == zoom_toy.CLIP - 1
        assert all(v == v and v <= 1 for v in values), run     # not NaN, at most 1
    # the momentum variants see the decayed average of the forward inputs besides the action
    model = zoom_toy.WorldModel(zoom_toy.toy_config(**zoom_toy.VARIANTS["patch_momentum"]))
    assert model.config.action_inputs == 7 and model.patch_action.shape[1] == 7


def test_held_truth_walks_apart_under_in_and_out():
    oracle_in = _HeldOracle(4, 7, 0.906)
    x = torch.zeros(4, zoom_toy.CLIP, zoom_toy.C, zoom_toy.H, zoom_toy.W)
    t = torch.ones(4, zoom_toy.CLIP)
    a_in, a_out = torch.zeros(4, zoom_toy.CLIP, 5), torch.zeros(4, zoom_toy.CLIP, 5)
    a_in[..., 0], a_out[..., 0] = 1.0, -1.0
    gaps = [(oracle_in(x[:, :k + 1], t[:, :k + 1], a_in) - oracle_in(x[:, :k + 1], t[:, :k + 1], a_out))[:, -1]
            .pow(2).mean().item() for k in range(1, zoom_toy.CLIP)]
    assert gaps[0] > 0 and gaps[0] < gaps[1] < gaps[2]          # the held key's speed builds up tick by tick


def test_fit_scale_finds_the_camera_and_the_held_gain_is_one_for_the_truth_and_zero_blind():
    g = torch.Generator().manual_seed(8)
    fields = world(6, g)
    cx = (torch.rand(6, generator=g) - 0.5) * 0.5
    scale = torch.linspace(-0.4, 0.4, 6)
    fitted = zoom_toy.fit_scale(fields, cx, view(fields, cx, scale))
    assert (fitted - scale).abs().max() < 0.0013                 # half a search step
    exact = zoom_toy.held_effects(_HeldOracle(8, 6, 0.906), 8, 6, 4, momentum=0.906)
    blind = zoom_toy.held_effects(_HeldOracle(8, 6, 0.906, blind=True), 8, 6, 4, momentum=0.906)
    assert all(abs(v - 1) < 0.15 for v in exact["gain_ticks"]), exact     # tick 1's true gap is ~9 search steps
    assert all(e < 0.0013 for e in exact["scale_error_ticks"]), exact
    assert all(v == 0 for v in blind["gain_ticks"]), blind


def test_rollout_training_feeds_the_model_its_own_frames_as_context(monkeypatch):
    seen = []
    real_call = zoom_toy.TeacherLoss.__call__

    def spy(self, model, latents, actions, generator=None, context=None, pairs=None):
        seen.append((latents.clone(), None if context is None else context.clone()))
        return real_call(self, model, latents, actions, generator, context, pairs)

    monkeypatch.setattr(zoom_toy.TeacherLoss, "__call__", spy)
    zoom_toy.train("patch_action", steps=2, batch=8, seed=0, momentum=0.906, rollout_share=0.5, log_every=100)
    latents, context = seen[-1]
    n_roll = 2                                                   # half of the 4 teacher-forcing rows
    assert torch.equal(context[:, 0], latents[:, 0])             # the real first frame
    assert torch.equal(context[n_roll:], latents[n_roll:])       # the other rows see the real clip
    assert not torch.allclose(context[:n_roll, 1:], latents[:n_roll, 1:])
    seen.clear()
    zoom_toy.train("patch_action", steps=2, batch=8, seed=0, momentum=0.906, log_every=100)
    assert seen[-1][1] is None and torch.equal(seen[-1][0], latents)   # share 0: the same clips, no context


def test_hold_turn_pans_along_held_zoom_ticks_only_and_leaves_other_clips_as_they_were():
    g = lambda: torch.Generator().manual_seed(5)
    x0, a0, _, _ = clips(512, g(), hold=0.75)
    x1, a1, _, _ = clips(512, g(), hold=0.75, hold_turn=0.5)
    zoom = a1[..., 0] != 0
    held = torch.zeros_like(zoom)
    held[:, 1:] = zoom[:, 1:] & (a1[:, 1:, 0] == a1[:, :-1, 0])                    # a zoom key repeated
    along = zoom & (a1[..., 2] != 0)
    assert along.any() and not (along & ~held).any()                                 # pans only on held zoom ticks
    assert ((a1[..., 2].abs() == 1) | (a1[..., 2] == 0)).all()
    panned = along.any(1)
    assert 0.3 < panned.float().sum() / held.any(1).float().sum() < 0.7            # about half the clips that hold
    # the clips that do not pan along are the clips of hold_turn 0, frames included
    assert torch.equal(a0[~panned], a1[~panned]) and torch.allclose(x0[~panned], x1[~panned])
    assert not torch.allclose(x0[panned], x1[panned])
