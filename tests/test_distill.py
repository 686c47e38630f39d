"""Distillation (issue 4) on CPU: TF-dCM and Self-Forcing DMD losses, the rollout's gradient paths, the
critic/generator ratio, the student checkpoint, and the recipe end to end (synthetic and real data)."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import settings
from world_model import checkpoint
from world_model.autoencoder import Autoencoder, AutoencoderConfig
from world_model.data import ClipBuffer
from world_model.distill_losses import (ConsistencyConfig, ConsistencyLoss, DMDConfig, DMDLoss, dmd_gradient,
                                        guided, packed_velocity)
from world_model.model import ModelConfig, WorldModel, load_model, save_model
from world_model.recipes import distill
from world_model.rollout import Session
from world_model.sampler import SamplerConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "settings/train/distill_tiny.yaml"
CFG = ModelConfig(latent_channels=4, latent_h=5, latent_w=6, dim=32, depth=2, heads=2, mlp_ratio=2.0)


def make_teacher(seed: int = 0, cfg: ModelConfig = CFG) -> WorldModel:
    """A tiny model whose output depends on its inputs (the zero-initialised layers get small weights)."""
    torch.manual_seed(seed)
    model = WorldModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


def clips(B: int = 4, T: int = 5, seed: int = 1, cfg: ModelConfig = CFG) -> tuple[torch.Tensor, torch.Tensor]:
    """Temporally correlated latents (B, T, C, h, w) and actions (B, T, 5)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn((B, 1, *cfg.latent_shape), generator=g)
    drift = 0.3 * torch.randn((B, T, *cfg.latent_shape), generator=g).cumsum(1)
    actions = torch.randint(-1, 2, (B, T, 5), generator=g).float()
    return base + drift, actions


class MemoryFeeder:
    """Stands in for recipes.feeder.Feeder: latents already in ClipBuffers, no collector."""

    def __init__(self, cfg: ModelConfig = CFG, frames: int = 256):
        self.train = ClipBuffer(frames, cfg.latent_shape, torch.float32)
        self.heldout = ClipBuffer(frames, cfg.latent_shape, torch.float32)
        for buf, seed in ((self.train, 1), (self.heldout, 2)):
            x, a = clips(B=frames // 32, T=32, seed=seed, cfg=cfg)
            for xi, ai in zip(x, a):
                buf.add(xi, ai, np.eye(1, 32, dtype=bool)[0])
        self.frames = 2 * frames

    def fill(self, frames, log=print):
        pass

    def drain(self, limit=None):
        pass

    def close(self):
        pass


@pytest.fixture()
def teacher_path(tmp_path) -> Path:
    path = tmp_path / "teacher.safetensors"
    save_model(path, make_teacher(), kind="teacher", dtype=None)
    return path


def tiny(teacher: Path, **over) -> distill.DistillConfig:
    return settings.load(TINY, distill.DistillConfig, {"teacher": str(teacher), **over})


# ---------------------------------------------------------------------------------------------------------
#                                              Stage A
# ---------------------------------------------------------------------------------------------------------

def test_packed_velocity_matches_teacher_forcing_forward():
    """Scoring only the last K noisy frames gives the same velocities as the full packed TF sequence."""
    model = make_teacher()
    x, a = clips(B=2, T=5)
    noisy = torch.randn_like(x)
    t = torch.rand(2, 5)
    full = packed_velocity(model, x, noisy, t, a)                                  # K = T
    last = packed_velocity(model, x, noisy[:, 2:], t[:, 2:], a)                    # K = 3
    torch.testing.assert_close(last, full[:, 2:], atol=1e-5, rtol=1e-4)


def test_consistency_times_one_grid_step_apart():
    loss = ConsistencyLoss(ConsistencyConfig(total_steps=48, shift=3.0))
    t0, t1 = loss.times(4096, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (t0 > t1).all() and t0.max() <= 1.0 and t1.min() >= 0.0
    assert t0.max() > 0.999 and t1.min() < 0.01          # the chain reaches pure noise and the data
    unshift = lambda t: t / (3.0 - 2.0 * t)              # inverse of UniformShift(3)
    torch.testing.assert_close(unshift(t0) - unshift(t1), torch.full_like(t0, 1 / 48), atol=1e-5, rtol=0)


def test_cm_steps_lower_the_loss():
    teacher = make_teacher().requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True)
    loss_fn = ConsistencyLoss()
    x, a = clips(B=4, T=4)
    fixed = lambda: loss_fn(student, teacher, x, a, torch.Generator().manual_seed(7))[0]  # noqa: E731
    before = float(fixed().detach())
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    for i in range(15):
        loss, _ = loss_fn(student, teacher, x, a, torch.Generator().manual_seed(7))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before > 0 and float(fixed().detach()) < 0.7 * before
    assert all(p.grad is None for p in teacher.parameters())


def test_guidance_extrapolates_from_the_null_action_and_guided_losses_run():
    """guided(s) = v_null + s (v_action - v_null), with v_null from the null-action embedding on every noisy
    frame; scale 1 is the plain conditional. Stage A with a guided teacher and Stage B with a guided real
    score give finite losses that differ from the unguided ones."""
    teacher = make_teacher().requires_grad_(False)
    x, a = clips(B=2, T=4)
    noisy, t = torch.randn_like(x), torch.full((2, 4), 0.7)
    v = packed_velocity(teacher, x, noisy, t, a)
    v_null = packed_velocity(teacher, x, noisy, t, a, keep=torch.zeros(2, 4, dtype=torch.bool))
    assert not torch.allclose(v, v_null)
    torch.testing.assert_close(guided(teacher, x, noisy, t, a, 1.0), v)
    torch.testing.assert_close(guided(teacher, x, noisy, t, a, 3.0), v_null + 3.0 * (v - v_null))
    student = copy.deepcopy(teacher)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    cm = [float(ConsistencyLoss(ConsistencyConfig(teacher_cfg=s))(student, teacher, x, a, g())[0]) for s in (1.0, 3.0)]
    assert all(np.isfinite(cm)) and cm[0] != cm[1]
    critic = make_teacher(2).requires_grad_(False)
    dmd = [float(DMDLoss(DMDConfig(real_cfg=s)).generator(teacher, critic, x, a, 2, g())[0]) for s in (1.0, 3.0)]
    assert all(np.isfinite(dmd)) and dmd[0] != dmd[1]


def test_cm_target_at_t1_zero_is_the_teacher_step():
    """With one grid step (N=2 after the shift) t1 can be 0; there the target is x_t1 itself: the student
    learns to land where the teacher's Euler step lands."""
    teacher = make_teacher()
    loss_fn = ConsistencyLoss(ConsistencyConfig(total_steps=2, shift=1.0))
    g = torch.Generator().manual_seed(0)
    t0, t1 = loss_fn.times(64, g, torch.device("cpu"))
    assert torch.isclose(t0 - t1, torch.tensor(0.5)).all()


# ---------------------------------------------------------------------------------------------------------
#                                              Stage B
# ---------------------------------------------------------------------------------------------------------

def student_session(model: WorldModel, ctx: int, K: int, seed: int = 0) -> Session:
    return Session(model, window=ctx + K, sink=1, device="cpu", seed=seed,
                   sampler=SamplerConfig(kind="consistency"), check_finite=False)


def test_rollout_gradient_only_through_each_frames_last_step_and_never_the_cache():
    student = make_teacher()
    x, a = clips(B=2, T=6)
    session = student_session(student, 2, 4)
    grad_calls = []
    hook = student.register_forward_hook(lambda m, i, o: grad_calls.append(torch.is_grad_enabled()))
    out = distill.rollout(session, x[:, :2], a, steps=2, t_mid=5 / 6, grad=True)   # (B, 6, C, h, w)
    hook.remove()
    # Per generated frame: 2 denoising passes (the last with grad) + 1 re-encode; the 2-frame seed: 1 pass.
    assert grad_calls == [False] + [False, True, False] * 4
    assert not session.cache.k.requires_grad and not session.cache.v.requires_grad
    assert out[:, 2:].requires_grad
    gen = out[:, 2:]
    # Frame k depends on frame k-1 only through the detached cache: no gradient path between them.
    for k in range(1, 4):
        assert torch.autograd.grad(gen[:, k].sum(), gen[:, k - 1], retain_graph=True, allow_unused=True)[0] is None
    # ... but every frame carries gradient into the student's weights.
    g = torch.autograd.grad(gen[:, 3].pow(2).sum(), list(student.parameters()), allow_unused=True)
    assert sum(float(t.abs().sum()) for t in g if t is not None) > 0


def test_rollout_first_frame_may_use_more_steps():
    student = make_teacher()
    x, a = clips(B=1, T=5)
    calls = []
    hook = student.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    distill.rollout(student_session(student, 2, 3), x[:, :2], a, 1, 5 / 6, grad=True, first_frame_steps=4)
    hook.remove()
    assert calls == [False] + [False, False, False, True, False] + [True, False] * 2


def test_rollout_equals_the_player_session():
    """distill.rollout is Session.reset + Session.step, the exact calls the player makes."""
    student = make_teacher()
    x, a = clips(B=2, T=5)
    with torch.no_grad():
        out = distill.rollout(student_session(student, 2, 3, seed=5), x[:, :2], a, 1, 5 / 6, grad=False)
        s = student_session(student, 2, 3, seed=5)
        s.reset(x[:, :2], a[:, :2])
        ref = [s.step(a[:, 2 + k], steps=1) for k in range(3)]
    torch.testing.assert_close(out[:, 2:], torch.stack(ref, 1))
    torch.testing.assert_close(out[:, :2], x[:, :2])


def test_dmd_critic_steps_lower_the_critic_loss():
    teacher, student = make_teacher(0), make_teacher(1)
    critic = copy.deepcopy(teacher).requires_grad_(True)
    x, a = clips(B=4, T=5)
    with torch.no_grad():
        clean = distill.rollout(student_session(student, 2, 3), x[:, :2], a, 1, 5 / 6, grad=False)
    loss_fn = DMDLoss()
    fixed = lambda: float(loss_fn.critic(critic, clean, a, 3, torch.Generator().manual_seed(3))[0].detach())  # noqa: E731
    before = fixed()
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.999))
    for _ in range(25):
        loss, _ = loss_fn.critic(critic, clean, a, 3, torch.Generator().manual_seed(3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed() < 0.75 * before


def test_dmd_generator_gradient_reaches_only_the_student():
    teacher, student = make_teacher(0).requires_grad_(False), make_teacher(1)
    critic = make_teacher(2)   # a fake score that differs from the real one
    x, a = clips(B=2, T=5)
    clean = distill.rollout(student_session(student, 2, 3), x[:, :2], a, 2, 5 / 6, grad=True)
    critic.requires_grad_(False)
    loss, parts = DMDLoss().generator(teacher, critic, clean, a, 3, torch.Generator().manual_seed(0))
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in critic.parameters())
    assert parts["dmd_grad"] > 0


def test_dmd_gradient_is_zero_when_fake_equals_real_and_moves_towards_real():
    x_hat = torch.randn(3, 2, 4, 5, 6)
    real, fake = torch.randn_like(x_hat), torch.randn_like(x_hat)
    assert dmd_gradient(x_hat, real, real, 1e-5).abs().max() == 0      # critic = teacher: nothing to learn
    g = dmd_gradient(x_hat, real, fake, 1e-5)
    assert g.dtype == torch.float64
    # Descending the generator loss moves x_hat along -(fake - real): towards the real score's denoising.
    x = x_hat.clone().requires_grad_(True)
    target = (x.detach().double() - g).float()
    (0.5 * (x - target).pow(2).mean()).backward()
    assert float((-x.grad * (real - fake)).sum()) > 0
    bad = fake.clone()
    bad[1, 0, 0, 0, 0] = float("nan")
    g = dmd_gradient(x_hat, real, bad, 1e-5)
    assert torch.isfinite(g).all() and g[1].abs().max() == 0 and g[0].abs().max() > 0


def test_dmd_moves_the_student_towards_the_teacher_on_a_toy():
    """Toy: 1 generated frame, 1 step, DMD with a critic that starts as the student and follows its samples
    (3 critic updates per generator update). The student's samples approach the teacher's samples from the
    same noise (a proxy: DMD matches distributions, which here are nearly deterministic given the context)."""
    teacher, student = make_teacher(0).requires_grad_(False), make_teacher(2)
    critic = copy.deepcopy(student)
    x, a = clips(B=8, T=3)
    opt = torch.optim.Adam(student.parameters(), lr=3e-4, betas=(0.0, 0.999))
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.999))
    loss_fn = DMDLoss(DMDConfig(shift=1.0))
    play = lambda model, seed, grad: distill.rollout(student_session(model, 2, 1, seed=seed), x[:, :2], a, 1,  # noqa: E731
                                                     5 / 6, grad=grad)
    gaps = []
    for i in range(20):
        for j in range(3):
            with torch.no_grad():
                clean = play(student, 100 + 3 * i + j, False)
            loss, _ = loss_fn.critic(critic, clean, a, 1, torch.Generator().manual_seed(100 + 3 * i + j))
            opt_c.zero_grad()
            loss.backward()
            opt_c.step()
        clean = play(student, i % 3, True)
        critic.requires_grad_(False)
        loss, _ = loss_fn.generator(teacher, critic, clean, a, 1, torch.Generator().manual_seed(i))
        critic.requires_grad_(True)
        with torch.no_grad():
            gaps.append(float((clean[:, -1] - play(teacher, i % 3, False)[:, -1]).pow(2).mean()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert np.mean(gaps[-3:]) < 0.9 * np.mean(gaps[:3])


def test_critic_generator_ratio_is_honoured(teacher_path, tmp_path, monkeypatch):
    assert [distill.is_generator_turn(i, 5) for i in range(12)] == ([False] * 5 + [True]) * 2
    assert all(distill.is_generator_turn(i, 0) for i in range(4))
    calls = []
    for name in ("critic", "generator"):
        orig = getattr(DMDLoss, name)
        monkeypatch.setattr(DMDLoss, name, lambda self, *a, _o=orig, _n=name, **k: (calls.append(_n), _o(self, *a, **k))[1])
    cfg = tiny(teacher_path, stage="dmd", steps=4, critic_per_generator=3, eval_every=100)
    summary = distill.main(cfg, tmp_path / "dmd", feeder=MemoryFeeder())
    assert calls == (["critic"] * 3 + ["generator"]) * 4
    assert (summary["step"], summary["critic_steps"], summary["iteration"]) == (4, 12, 16)


def _flat(model: WorldModel) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def test_one_batched_critic_rollout_per_cycle_and_the_student_is_fixed_during_it(teacher_path, tmp_path,
                                                                                  monkeypatch):
    """Per cycle: ONE no-grad rollout of critic_per_generator * batch clips, cut into one `batch` slice per
    critic update, then one rollout with grad at `batch` for the generator; the student's weights do not
    change from the critic rollout to the generator's rollout; the step count alternates per cycle, so the
    generator trains at 1 and at 2 steps even when the cycle length is even (3 + 1 here)."""
    events = []
    orig_rollout, orig_critic = distill.rollout, DMDLoss.critic

    def rollout(session, seed, actions, steps, t_mid, *, grad, first_frame_steps=0):
        out = orig_rollout(session, seed, actions, steps, t_mid, grad=grad, first_frame_steps=first_frame_steps)
        events.append(("rollout", out.shape[0], grad, steps, _flat(session.model), out.detach().clone()))
        return out

    def critic(self, critic_model, clean, actions, K, generator=None):
        events.append(("critic", clean.detach().clone(), _flat(student[0])))
        return orig_critic(self, critic_model, clean, actions, K, generator)

    student = []
    orig_build = distill.build
    monkeypatch.setattr(distill, "build", lambda *a, **k: (r := orig_build(*a, **k), student.append(r.student))[0])
    monkeypatch.setattr(distill, "rollout", rollout)
    monkeypatch.setattr(DMDLoss, "critic", critic)
    cfg = tiny(teacher_path, stage="dmd", steps=4, critic_per_generator=3, batch=2, eval_every=100)
    distill.main(cfg, tmp_path / "dmd", feeder=MemoryFeeder())
    assert [e[:4] for e in events if e[0] == "rollout"] == [
        ("rollout", 6, False, 1), ("rollout", 2, True, 1), ("rollout", 6, False, 2), ("rollout", 2, True, 2)] * 2
    assert [e[0] for e in events] == (["rollout"] + ["critic"] * 3 + ["rollout"]) * 4
    for c in range(4):
        batched, crits, gen = events[5 * c], events[5 * c + 1: 5 * c + 4], events[5 * c + 4]
        # Each critic update gets its own slice of `batch` clips of the one batched rollout.
        assert all(e[1].shape == (2, 5, *CFG.latent_shape) for e in crits)
        torch.testing.assert_close(torch.cat([e[1] for e in crits]), batched[5], rtol=0, atol=0)
        # The student is the same from the critic rollout to the generator rollout ...
        assert all(torch.equal(e[2], batched[4]) for e in crits) and torch.equal(gen[4], batched[4])
        # ... and the generator update of the cycle changes it.
        if c:
            assert not torch.equal(batched[4], events[5 * (c - 1)][4])


def test_cycle_plan_resumes_mid_cycle_states(teacher_path, tmp_path):
    """A state saved mid-cycle (by an older version) continues with the critic updates left in its cycle."""
    cfg = tiny(teacher_path, stage="dmd", critic_per_generator=3)
    assert [distill.cycle_plan(i, cfg)[0] for i in range(9)] == [3, 2, 1, 0, 3, 2, 1, 0, 3]
    assert [distill.cycle_plan(i, cfg)[1] for i in range(9)] == [1, 1, 1, 1, 2, 2, 2, 2, 1]
    assert all((distill.cycle_plan(i, cfg)[0] == 0) == distill.is_generator_turn(i, 3) for i in range(12))
    run = distill.build(cfg, torch.device("cpu"), tmp_path, False, None, lambda *a: None)
    run.iteration, run.critic_steps = 2, 2
    sessions = (distill._session(run, cfg, torch.device("cpu")), distill._session(run, cfg, torch.device("cpu")))
    logged = distill.dmd_cycle(run, DMDLoss(), sessions, MemoryFeeder(), cfg, np.random.default_rng(0),
                               torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (run.iteration, run.critic_steps, run.step) == (4, 3, 1)
    assert len(logged["loss_critic"]) == 1 and len(logged["loss_gen"]) == 1


def test_resumed_dmd_run_equals_an_uninterrupted_one(teacher_path, tmp_path):
    """Streams are seeded per cycle, so 2 + 2 generator updates give the very weights of 4 in one go."""
    over = dict(stage="dmd", critic_per_generator=2, total_minutes=0, eval_every=100)
    distill.main(tiny(teacher_path, steps=4, **over), tmp_path / "one", feeder=MemoryFeeder())
    distill.main(tiny(teacher_path, steps=2, **over), tmp_path / "two", feeder=MemoryFeeder())
    s = distill.main(tiny(teacher_path, steps=4, **over), tmp_path / "two", resume=True, feeder=MemoryFeeder())
    assert (s["step"], s["critic_steps"], s["iteration"]) == (4, 8, 12)
    one = checkpoint.load(tmp_path / "one" / "train_state.safetensors", kind="train_state")[0]
    two = checkpoint.load(tmp_path / "two" / "train_state.safetensors", kind="train_state")[0]
    assert one.keys() == two.keys() and any(k.startswith("critic.") for k in one)
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=0, atol=0, msg=k)


class CountingFeeder(MemoryFeeder):
    def __init__(self):
        super().__init__()
        self.drains = []

    def drain(self, limit=None):
        self.drains.append(limit)


@pytest.mark.parametrize("stage", ["cm", "dmd"])
def test_new_data_every_drain_every_student_updates(teacher_path, tmp_path, stage):
    feeder = CountingFeeder()
    cfg = tiny(teacher_path, stage=stage, steps=6, drain_every=4, eval_every=100, **{"data.max_chunks_per_step": 1})
    distill.main(cfg, tmp_path / stage, feeder=feeder)
    assert feeder.drains == [1, 1]          # before updates 0 and 4 of 6, one chunk each


# ---------------------------------------------------------------------------------------------------------
#                                      Checkpoint and the recipe
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("int8", [False, True])
def test_student_checkpoint_round_trips_and_plays_one_and_two_steps(tmp_path, int8):
    model = make_teacher()
    cfg = distill.DistillConfig(save_int8=int8, t_mid=0.75, cm=distill.ConsistencyConfig(teacher_cfg=3.0))
    path = tmp_path / "student.safetensors"
    distill.save_student(path, model, cfg, {"step": "3"})
    loaded = load_model(path, kind="student")
    _, _, meta = checkpoint.load(path)
    assert json.loads(meta["schedules"]) == {"1": [1.0, 0.0], "2": [1.0, 0.75, 0.0]}
    assert meta["sampler"] == "consistency" and float(meta["t_mid"]) == 0.75
    assert float(meta["teacher_cfg"]) == 3.0          # the guidance it was distilled with
    for p, q in zip(model.parameters(), loaded.parameters()):
        scale = float(p.detach().abs().max()) + 1e-12
        assert float((p - q).detach().abs().max()) <= scale * (1 / 127 if int8 else 1 / 128) + 1e-7
    x, a = clips(B=1, T=3)
    for steps in (1, 2):
        s = Session(loaded, window=8, sink=1, device="cpu", sampler=SamplerConfig(kind="consistency", t_mid=0.75))
        s.reset(x, a)
        with torch.no_grad():
            frames = [s.step(a[:, -1], steps=steps) for _ in range(3)]
        assert all(torch.isfinite(f).all() for f in frames)
    if int8:  # about a quarter of float32 (biases and norms stay float32)
        assert path.stat().st_size < 0.4 * sum(p.numel() * 4 for p in model.parameters()) + 20_000


def test_shallower_student_keeps_the_named_blocks_trains_saves_and_plays(teacher_path, tmp_path):
    """student_layers: the student keeps those teacher blocks (embeddings and final layer too), Stage A runs and
    resumes on it, and the saved checkpoint loads with its own depth into the player's Session."""
    teacher = load_model(teacher_path)
    small = distill.keep_blocks(teacher, [1])
    assert small.config.depth == 1 and teacher.config.depth == 2
    for (k, v) in small.state_dict().items():
        src = k.replace("blocks.0.", "blocks.1.", 1)
        assert torch.equal(v, teacher.state_dict()[src]), k
    with pytest.raises(ValueError, match="student_layers"):
        distill.keep_blocks(teacher, [2])
    out = tmp_path / "small"
    summary = distill.main(tiny(teacher_path, steps=4, student_layers=[1]), out, feeder=MemoryFeeder())
    assert summary["params"] < teacher.num_params()
    student = load_model(out / "student.safetensors")
    assert student.config.depth == 1 and student.num_params() == summary["params"]
    assert distill.main(tiny(teacher_path, steps=6, student_layers=[1]), out, resume=True,
                        feeder=MemoryFeeder())["step"] == 6
    session = Session(student, window=3, sink=1, device="cpu", sampler=SamplerConfig(kind="consistency"))
    x, a = clips(B=1, T=3)
    session.reset(x[:, :2], a[:, :2])
    assert session.step(a[:, 2], steps=1).shape == (1, *CFG.latent_shape)


def test_recipe_cm_then_dmd_saves_and_resumes(teacher_path, tmp_path):
    out = tmp_path / "cm"
    summary = distill.main(tiny(teacher_path), out, feeder=MemoryFeeder())
    assert summary["step"] == 6 and summary["stage"] == "cm"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,cm_mse") and len(rows) == 1 + 6
    assert (out / "metrics.png").stat().st_size > 1000 and (out / "tb").is_dir()
    assert set(summary) >= {"val_mse_1step", "val_mse_2step", "teacher_val_mse_1step"}
    student = load_model(out / "student.safetensors", kind="student")
    teacher = load_model(teacher_path)
    assert any(not torch.equal(p, q) for p, q in zip(student.parameters(), teacher.parameters()))
    assert distill.main(tiny(teacher_path, steps=8), out, resume=True, feeder=MemoryFeeder())["step"] == 8
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 8
    # Stage B from Stage A's student; a dmd run refuses to resume a cm state.
    with pytest.raises(checkpoint.CheckpointError, match="stage"):
        distill.main(tiny(teacher_path, stage="dmd"), out, resume=True, feeder=MemoryFeeder())
    dmd = tmp_path / "dmd"
    s = distill.main(tiny(teacher_path, stage="dmd", steps=3), dmd, init=out / "student.safetensors",
                     feeder=MemoryFeeder())
    assert (s["step"], s["critic_steps"]) == (3, 6)
    rows = (dmd / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,critic_steps,loss_gen,loss_critic") and len(rows) == 1 + 3
    s = distill.main(tiny(teacher_path, stage="dmd", steps=4), dmd, resume=True, feeder=MemoryFeeder())
    assert (s["step"], s["critic_steps"], s["iteration"]) == (4, 8, 12)


def test_recipe_max_minutes_stops_and_saves(teacher_path, tmp_path):
    summary = distill.main(tiny(teacher_path, steps=10_000, max_minutes=1e-6), tmp_path / "t", feeder=MemoryFeeder())
    assert summary["step"] < 10_000 and (tmp_path / "t" / "train_state.safetensors").exists()


def test_cli_on_real_collector_data(tmp_path):
    """End to end through the CLI: the collector, a tiny autoencoder, Stage B (slow: game processes)."""
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, enc_channels=(8, 8, 16, 16), dec_channels=(16, 16, 8, 8),
                                       groups=4))
    ae.save(tmp_path / "ae.safetensors")
    teacher = tmp_path / "teacher.safetensors"
    save_model(teacher, make_teacher(cfg=ModelConfig(latent_channels=4, dim=32, depth=2, heads=2, mlp_ratio=2.0)),
               kind="teacher")
    rc = distill.cli([str(TINY), "--out", str(tmp_path / "run"), "--set", f"teacher={teacher}",
                      "--set", f"autoencoder={tmp_path / 'ae.safetensors'}", "--set", "stage=dmd",
                      "--set", "steps=2"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 2 and summary["frames_collected"] > 0
    assert load_model(tmp_path / "run" / "student.safetensors", kind="student") is not None


def test_quantize_recipe_keeps_kind_and_measures_a_small_difference(tmp_path):
    from world_model.recipes import quantize
    src = tmp_path / "teacher.safetensors"
    save_model(src, make_teacher(cfg=ModelConfig(latent_channels=4, dim=32, depth=2, heads=2, mlp_ratio=2.0)),
               kind="teacher")
    dst = tmp_path / "teacher-int8.safetensors"
    quantize.save_int8(src, dst)
    assert checkpoint.load(dst, kind="teacher")[2]["int8_from"] == str(src)
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(latent_channels=4, enc_channels=(8, 8, 16, 16), dec_channels=(16, 16, 8, 8),
                                       groups=4))
    frames = np.random.default_rng(0).integers(0, 256, (11, 120, 160, 3), dtype=np.uint8)
    with torch.no_grad():
        z = ae.encode(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1)
    r = quantize.compare(load_model(src), load_model(dst), ae, frames, z, torch.zeros(11, 5), steps=2)
    assert 0 < r["velocity_rel_mse"] < 1e-2 and r["rollout_frames"] == 3
    assert r["rollout_psnr_int8_vs_ref_db"] > 30


def test_compiled_stage_a_trains_like_eager(teacher_path, tmp_path, monkeypatch):
    """`compile: true` wraps the forwards only: same data, same noise, so the same losses and weights as eager
    (up to the compiler's float reordering)."""
    compiled_modules = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled_modules.append(m) or real_compile(m, **kw))
    runs = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        distill.main(tiny(teacher_path, steps=3, compile=compiled), out, feeder=MemoryFeeder())
        runs[compiled] = (load_model(out / "student.safetensors", kind="student"),
                          [float(r.split(",")[1]) for r in (out / "metrics.csv").read_text().splitlines()[1:]])
    assert len(compiled_modules) == 2          # the student's and the teacher's forwards, in the compiled run only
    (eager, loss_e), (comp, loss_c) = runs[False], runs[True]
    assert loss_e == pytest.approx(loss_c, rel=1e-3, abs=1e-5)
    # The losses of steps 2 and 3 already depend on the updated weights. The saved weights are bf16, and Adam
    # can turn a rounding difference in a near-zero gradient into a full lr step (1e-3, 3 steps), so the
    # weights are compared at that resolution.
    for p, q in zip(eager.parameters(), comp.parameters()):
        assert torch.allclose(p, q, rtol=2 ** -7, atol=6e-3)


def test_block_importance_scores_every_block_and_pair_with_paired_noise():
    from dataclasses import replace as dc_replace
    from world_model.recipes import block_importance
    teacher = make_teacher(cfg=dc_replace(CFG, depth=3)).eval()
    x, a = clips(cfg=dc_replace(CFG, depth=3))
    lines = []
    r = block_importance.drop_scores(teacher, x, a, reps=2, pairs=True, log=lines.append)
    assert set(r["drop_one"]) == {"0", "1", "2"} and set(r["drop_two"]) == {"0,1", "0,2", "1,2"}
    assert all(v > 0 for v in r["drop_one"].values())
    # paired: the same noise gives the same number for the same model
    assert block_importance.tf_mse(teacher, x, a, 2) == r["all"]
    assert lines[0].startswith("all 3 blocks")


def test_a_momentum_teacher_distils_through_both_stages(tmp_path):
    """ModelConfig.action_momentum: Stage A, Stage B (the Session rollout plus the critic and generator losses
    on its frames) and validation all build the momentum inputs; the student inherits the config and plays."""
    from dataclasses import replace
    cfg = replace(CFG, action_momentum=True)
    path = tmp_path / "teacher.safetensors"
    save_model(path, make_teacher(cfg=cfg), kind="teacher", dtype=None)
    out = tmp_path / "cm"
    assert distill.main(tiny(path, steps=3), out, feeder=MemoryFeeder())["step"] == 3
    s = distill.main(tiny(path, stage="dmd", steps=2), tmp_path / "dmd", init=out / "student.safetensors",
                     feeder=MemoryFeeder())
    assert (s["step"], s["critic_steps"]) == (2, 4) and np.isfinite(s["val_mse_1step"])
    student = load_model(tmp_path / "dmd" / "student.safetensors", kind="student")
    assert student.config.action_momentum and student.action_embed[0].weight.shape[1] == 7
    session = Session(student, window=3, sink=1, device="cpu")
    session.reset(*clips(B=1, T=3, cfg=cfg))
    assert torch.isfinite(session.step(torch.zeros(1, 5), steps=1)).all()
