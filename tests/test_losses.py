"""Teacher loss: its parts, its weighting and time sampling, action dropout, and that training lowers it."""
import pytest
import torch

import settings
from world_model.losses import TeacherLoss, TeacherLossConfig, bell_weight, uniform_shift
from world_model.model import ModelConfig, WorldModel


def tiny_model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(settings.load("settings/model/tiny.yaml", ModelConfig))


def clip(model: WorldModel, B: int = 4, T: int = 4):
    """Latents that move predictably: a smooth pattern rolled one column per frame by the 'turn' action."""
    C, h, w = model.config.latent_shape
    g = torch.Generator().manual_seed(3)
    base = torch.nn.functional.avg_pool2d(torch.randn((B, C, h + 2, w + 2), generator=g), 3, stride=1)
    latents = torch.stack([base.roll(i, dims=-1) for i in range(T)], dim=1) * 2      # (B, T, C, h, w)
    actions = torch.zeros(B, T, 5)
    actions[:, 1:, 2] = 1.0
    return latents, actions


def test_weights_and_time_sampling():
    assert bell_weight(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)
    g = torch.Generator().manual_seed(0)
    t = uniform_shift((20000,), 3.0, g, torch.device("cpu"))
    assert 0 <= t.min() and t.max() <= 1
    assert (t > 0.5).float().mean().item() == pytest.approx(0.75, abs=0.02)  # shift 3 puts 3/4 above 1/2
    u = uniform_shift((20000,), 1.0, g, torch.device("cpu"))
    assert u.mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("fraction,keys", [(0.5, {"loss", "loss_tf", "mse_tf", "loss_df", "mse_df"}),
                                           (1.0, {"loss", "loss_tf", "mse_tf"}),
                                           (0.0, {"loss", "loss_df", "mse_df"})])
def test_parts_and_mixing(fraction, keys):
    model = tiny_model()
    latents, actions = clip(model)
    loss, parts = TeacherLoss(TeacherLossConfig(tf_fraction=fraction))(model, latents, actions,
                                                                       torch.Generator().manual_seed(0))
    assert set(parts) == keys and loss.dim() == 0 and torch.isfinite(loss)
    assert parts["loss"] == loss.detach()
    # The untrained model predicts v = 0, so each MSE is E(eps - x0)^2 = 1 + E x0^2 on its frames.
    for name in keys & {"mse_tf", "mse_df"}:
        assert parts[name].item() == pytest.approx(1 + latents.square().mean().item(), abs=0.3)
    if fraction == 0.5:
        assert loss.item() == pytest.approx((parts["loss_tf"] + parts["loss_df"]).item() / 2, rel=1e-5)


def test_dropout_of_every_action_makes_the_loss_action_blind():
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    latents, actions = clip(model)
    for drop, same in [(1.0, True), (0.0, False)]:
        loss_fn = TeacherLoss(TeacherLossConfig(tf_fraction=0.0, action_dropout=drop))
        a = loss_fn(model, latents, actions, torch.Generator().manual_seed(1))[0]
        b = loss_fn(model, latents, -actions, torch.Generator().manual_seed(1))[0]
        assert (a.item() == b.item()) is same


@pytest.mark.parametrize("cfg", [TeacherLossConfig(), TeacherLossConfig(blind_prob=0.5, blind_ticks=2)],
                         ids=["plain", "blind-clips"])
def test_a_few_training_steps_lower_the_loss(cfg):
    model = tiny_model()
    latents, actions = clip(model)
    loss_fn = TeacherLoss(cfg)
    evaluate = lambda: sum(loss_fn(model, latents, actions, torch.Generator().manual_seed(s))[0].item()
                           for s in range(4)) / 4  # fixed noise: the same measurement before and after
    with torch.no_grad():
        before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(100)
    for _ in range(40):
        loss, _ = loss_fn(model, latents, actions, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = evaluate()
    assert after < 0.8 * before, (before, after)


def test_teacher_forcing_context_replaces_only_the_clean_frames():
    """context: what the noisy frames see before them. Default = the clip; other frames change the loss but
    not its targets (the clip), and no gradient reaches them (they come from the model's own rollout)."""
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)   # leave the zero init, so outputs depend on the context
    latents, actions = clip(model)
    loss_fn = TeacherLoss(TeacherLossConfig(tf_fraction=0.5))
    run = lambda ctx: loss_fn(model, latents, actions, torch.Generator().manual_seed(1), ctx)
    same, other = run(None), run(latents.clone())
    assert same[0].item() == other[0].item()
    drifted = latents.clone().requires_grad_(True)
    shifted = drifted + torch.cat([torch.zeros_like(latents[:, :2]), torch.ones_like(latents[:, 2:])], dim=1)
    loss, parts = run(shifted)
    assert loss.item() != same[0].item()
    assert parts["loss_df"].item() == same[1]["loss_df"].item()     # diffusion-forcing rows: untouched
    loss.backward()
    assert drifted.grad is None
    v_tf = lambda ctx: loss_fn.teacher_forcing(model, latents[:2], actions[:2], torch.Generator().manual_seed(1), ctx)
    assert v_tf(None)[0].item() != v_tf(shifted[:2].detach())[0].item()


def test_blind_clips_keep_clean_context_before_a_split_and_noise_after_it():
    """loss.blind_prob: a blind DF clip is clean context (t <= context_noise, no loss) up to a split point k >= 1,
    then at most blind_ticks frames at t >= blind_t, all with loss; blind_prob 0 leaves DF as it was."""
    model = tiny_model()
    latents, actions = clip(model, B=64, T=6)
    seen = {}

    def spy(xt, t, a, keep, mask):
        seen["t"] = t.clone()
        return torch.zeros_like(xt)

    cfg = TeacherLossConfig(tf_fraction=0.0, blind_prob=1.0, blind_ticks=3, blind_t=0.9)
    TeacherLoss(cfg).diffusion_forcing(spy, latents, actions, torch.Generator().manual_seed(0))
    t = seen["t"]
    splits = set()
    for row in t:
        k = int((row >= cfg.blind_t).float().argmax())
        assert k >= 6 - 3 and (row[:k] <= cfg.context_noise).all() and (row[k:] >= cfg.blind_t).all()
        splits.add(k)
    assert splits == {3, 4, 5}                                   # 1 to blind_ticks noisy frames
    plain = TeacherLoss(TeacherLossConfig(tf_fraction=0.0))
    for loss_fn, prob in ((TeacherLoss(cfg), 0.0), (plain, None)):
        loss_fn.diffusion_forcing(spy, latents, actions, torch.Generator().manual_seed(0), blind_prob=prob)
        seen[prob] = seen["t"]
    assert torch.equal(seen[0.0], seen[None])                    # validation's blind_prob=0 is the plain DF
    half = TeacherLoss(TeacherLossConfig(tf_fraction=0.0, blind_prob=0.5))
    half.diffusion_forcing(spy, latents, actions, torch.Generator().manual_seed(0))
    blind_rows = (seen["t"][:, -1] >= 0.9) & (seen["t"][:, 0] <= 0.1)
    assert 0.2 < blind_rows.float().mean() < 0.95                # about half (plus plain rows that look so)



def fork_pairs(model: WorldModel, P: int = 3, T: int = 4, prefix: int = 2):
    """Pairs like the collector's: one prefix, then the pattern rolls right under turn +1 in clip A and
    left under turn -1 in clip B. (P, 2, T, C, h, w) latents, (P, 2, T, 5) actions."""
    C, h, w = model.config.latent_shape
    g = torch.Generator().manual_seed(5)
    base = torch.nn.functional.avg_pool2d(torch.randn((P, C, h + 2, w + 2), generator=g), 3, stride=1) * 2
    shift = [[0] * prefix + [k - prefix + 1 for k in range(prefix, T)],
             [0] * prefix + [-(k - prefix + 1) for k in range(prefix, T)]]
    latents = torch.stack([torch.stack([base.roll(s, dims=-1) for s in row], 1) for row in shift], 1)
    actions = torch.zeros(P, 2, T, 5)
    actions[:, 0, prefix:, 2], actions[:, 1, prefix:, 2] = 1.0, -1.0
    return latents, actions


def test_pair_loss_teaches_the_action_effect_and_mixes_into_the_batch():
    model = tiny_model()
    latents, actions = clip(model)
    xp, ap = fork_pairs(model)
    loss_fn = TeacherLoss(TeacherLossConfig(pair_weight=2.0))
    loss, parts = loss_fn(model, latents, actions, torch.Generator().manual_seed(0), pairs=(xp, ap))
    assert {"loss_pair", "mse_pair", "pair_effect", "loss_tf", "loss_df"} <= set(parts)
    plain = loss_fn(model, latents, actions, torch.Generator().manual_seed(0))[0]
    assert loss.item() != pytest.approx(plain.item())
    # Trained on the pairs alone, with and without the difference term: each clip's own loss does not teach
    # the difference (on this CPU it went negative: the two predictions part the wrong way), the term does.
    effect = {}
    for weight in (0.0, 2.0):
        model = tiny_model()
        loss_fn = TeacherLoss(TeacherLossConfig(pair_weight=weight))
        measure = lambda: loss_fn.pair_loss(model, xp, ap, torch.Generator().manual_seed(9), t=0.9)[1]["pair_effect"].item()
        with torch.no_grad():
            assert abs(measure()) < 0.1        # an untrained model barely tells the two clips apart
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(100)
        for _ in range(100):
            loss, _ = loss_fn.pair_loss(model, xp, ap, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            effect[weight] = measure()
    assert effect[2.0] > 0.2 and effect[2.0] > effect[0.0] + 0.3, effect


def test_pair_predictions_agree_wherever_the_clips_do():
    """Both clips of a pair see the same noise and t, and attention is causal: over the shared prefix the
    two predictions are the same, so the difference term only ever concerns the branch frames."""
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    xp, ap = fork_pairs(model, prefix=2)
    seen = {}
    hook = model.register_forward_hook(lambda m, i, o: seen.update(v=o))
    with torch.no_grad():
        TeacherLoss().pair_loss(model, xp, ap, torch.Generator().manual_seed(0))
    hook.remove()
    v = seen["v"][:, 4:]                                                   # noisy half (2P, T, ...)
    assert torch.allclose(v[0::2, :2], v[1::2, :2], atol=1e-5)
    assert not torch.allclose(v[0::2, 2:], v[1::2, 2:], atol=1e-3)


def test_denoise_curve_reads_both_errors_at_each_noise_level():
    from world_model.recipes.denoise_curve import curve
    model = tiny_model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    latents, actions = clip(model)
    rows = curve(model, latents, actions, times=(0.02, 0.5, 1.0))
    assert [r["t"] for r in rows] == [0.02, 0.5, 1.0]
    assert rows[-1]["x0_mse"] == pytest.approx(rows[-1]["v_mse"], rel=1e-5)   # at t = 1, x0_hat - x0 = -(v error)
    assert rows[0]["x0_mse"] < 0.01 * rows[0]["v_mse"]                        # at t -> 0 the frame is all but given
