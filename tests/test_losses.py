import math

import pytest
import torch
from torch import nn

from teddy.method.losses import BNStatsRecorder, bn_matching_loss, feature_stats, layer_weights, soft_kl


def test_feature_stats_hand_computed():
    # one channel, values 1, 2, 3, 6 over (N=2, H=1, W=2): mean 3, biased var (4+1+0+9)/4 = 3.5
    h = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 6.0]]]])
    mean, var = feature_stats(h)
    assert mean.tolist() == [3.0]
    assert var.item() == pytest.approx(3.5, rel=1e-6)


def test_feature_stats_gradient_matches_autograd_through_mean_and_var():
    """The fused statistics (batch-norm kernel forward, one-pass backward) against the reference."""
    h = torch.randn(6, 5, 7, 3, dtype=torch.float64, requires_grad=True)
    g_mean, g_var = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    mean, var = feature_stats(h)
    (grad,) = torch.autograd.grad((mean * g_mean).sum() + (var * g_var).sum(), h)
    ref_mean, ref_var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
    (ref,) = torch.autograd.grad((ref_mean * g_mean).sum() + (ref_var * g_var).sum(), h)
    assert torch.allclose(mean, ref_mean) and torch.allclose(var, ref_var)
    assert torch.allclose(grad, ref, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: feature_stats(x), (h[:, :, :2, :2].detach().clone().requires_grad_(),)
    )


def test_bn_matching_loss_hand_computed():
    means = [torch.tensor([1.0, 2.0]), torch.tensor([0.0])]
    variances = [torch.tensor([1.0, 1.0]), torch.tensor([4.0])]
    run_means = [torch.tensor([4.0, 6.0]), torch.tensor([0.0])]  # ‖(−3, −4)‖ = 5
    run_vars = [torch.tensor([1.0, 1.0]), torch.tensor([1.0])]  # layer-2 var gap 3
    loss = bn_matching_loss(means, variances, run_means, run_vars, layer_weights(2, 10.0))
    # 10 · (5 + 0) + 1 · (0 + 3)
    assert loss.item() == pytest.approx(53.0)


def test_layer_weights():
    assert layer_weights(3, 10.0) == [10.0, 1.0, 1.0]


def test_recorder_matches_manual_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)
    )
    model.eval()
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(5, 1, 6, 6)
    rec = BNStatsRecorder(model)
    with rec.record():
        model(x)
    h1 = model[0](x)
    h2 = model[3](model[2](model[1](h1)))
    expected = 0.0
    for h, bn, w in ((h1, model[1], 10.0), (h2, model[4], 1.0)):
        m, v = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        expected += w * ((m - bn.running_mean).norm() + (v - bn.running_var).norm())
    assert rec.loss(10.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_recorder_needs_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm"):
        BNStatsRecorder(nn.Linear(2, 2))


def test_soft_kl_hand_computed():
    # teacher puts p = (0.5, 0.5); student log-probs log(0.25), log(0.75); T = 1
    student = torch.tensor([[math.log(0.25), math.log(0.75)]])
    teacher = torch.tensor([[0.0, 0.0]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert soft_kl(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert soft_kl(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_cutmix_kept_fraction_is_the_pixels_the_image_keeps():
    """kept_fraction against apply_mix itself: pasting ones into zeros, the mean of the mixed view is
    the pasted share; a box clipped at a corner keeps more of the image than λ says."""
    from teddy import augment
    from teddy.method.losses import kept_fraction

    mix = torch.tensor([[1.0, 0.75, 0.5, 0.5], [1.0, 0.75, 0.0, 0.0], [0.0, 0.3, 0.9, 0.2]])
    views = augment.apply_mix(torch.zeros(3, 1, 64, 64), torch.ones(3, 1, 64, 64), mix, "cutmix")
    pasted = views.mean(dim=(1, 2, 3))
    assert torch.allclose(kept_fraction(mix, "cutmix"), 1 - pasted, atol=0.02)
    assert abs(kept_fraction(mix, "cutmix")[1].item() - 0.9375) < 1e-6  # a quarter of the box inside
    assert torch.equal(kept_fraction(mix, "mixup"), mix[:, 1])


def test_mixed_cross_entropy_weights_own_and_partner_labels():
    from teddy.method.losses import mixed_cross_entropy

    logits = torch.randn(2, 3)
    labels = torch.tensor([0, 2, 1])
    idx = torch.tensor([2, 0])
    mix = torch.tensor([[1.0, 0.25, 0.0, 0.0], [2.0, 0.5, 0.0, 0.0]])  # partners: images 1 and 2
    ce = torch.nn.functional.cross_entropy
    own, partner = (
        ce(logits, torch.tensor([1, 0]), reduction="none"),
        ce(logits, torch.tensor([2, 1]), reduction="none"),
    )
    expected = ((torch.tensor([0.25, 0.5]) * own) + (torch.tensor([0.75, 0.5]) * partner)).mean()
    assert torch.allclose(mixed_cross_entropy(logits, labels, idx, mix, "mixup"), expected)
    assert torch.allclose(mixed_cross_entropy(logits, labels, idx, mix, "none"), own.mean())


def test_soft_kl_is_t_squared_times_the_kl_of_the_tempered_distributions():
    """By hand at T = 4 (mutation testing found the temperature unpinned: T = 1 hides / ↔ *)."""
    torch.manual_seed(0)
    s, t_logits, temperature = torch.randn(6, 7), torch.randn(6, 7), 4.0
    p = torch.softmax(s / temperature, dim=1)
    q = torch.softmax(t_logits / temperature, dim=1)
    expected = temperature**2 * (q * (q.log() - p.log())).sum(dim=1).mean()
    assert soft_kl(s, t_logits, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("shape", [(1, 5), (1, 5, 1, 1)])
def test_feature_stats_of_one_value_per_channel(shape):
    """One value per channel (a batch of one after global pooling): the mean is that value, the
    biased variance 0 — not NaN, and not an error from the fused kernel."""
    h = torch.randn(*shape)
    mean, var = feature_stats(h)
    assert torch.equal(mean, h.reshape(5)) and torch.equal(var, torch.zeros(5))


@pytest.mark.parametrize("used", ["mean", "var"])
def test_feature_stats_gradient_through_one_statistic_only(used):
    """A loss that uses only the mean (or only the variance): autograd hands the fused backward None
    for the other; the gradient must still equal the reference's."""
    h = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    mean, var = feature_stats(h)
    ref_mean, ref_var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
    out, ref = (mean, ref_mean) if used == "mean" else (var, ref_var)
    weights = torch.arange(1.0, 4.0, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), h)
    (expected,) = torch.autograd.grad((ref * weights).sum(), h)
    assert torch.allclose(grad, expected, atol=1e-12)


def test_recorder_records_each_groups_own_statistics():
    """record(groups=...) (class-conditional BN targets): per layer, per group, the statistics of that
    group's rows of the layer's input alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    x = torch.randn(6, 1, 5, 5)
    groups = [torch.tensor([0, 2, 3]), torch.tensor([1, 4, 5])]
    rec = BNStatsRecorder(model)
    with rec.record(groups):
        model(x)
    h = model[0](x)
    assert len(rec.group_means) == 1 and len(rec.group_means[0]) == 2
    for g, m, v in zip(groups, rec.group_means[0], rec.group_vars[0], strict=True):
        assert torch.allclose(m, h[g].mean((0, 2, 3)), atol=1e-6)
        assert torch.allclose(v, h[g].var((0, 2, 3), unbiased=False), atol=1e-6)
    assert not torch.allclose(rec.group_means[0][0], rec.group_means[0][1])
    with rec.record():  # no groups: nothing per group
        model(x)
    assert rec.group_means == [] and len(rec.means) == 1


def test_bn_matching_loss_refuses_lists_of_different_lengths():
    """A model whose recorded layers and running statistics disagree in number must fail, not be
    truncated to the shorter list."""
    one = [torch.zeros(2)]
    with pytest.raises(ValueError):
        bn_matching_loss(one * 2, one * 2, one, one, [1.0, 1.0])


def test_mixed_cross_entropy_uses_the_clipped_cutmix_share():
    """CutMix's label weight is the share of pixels the image keeps, not λ: a box at a corner is a
    quarter inside, so λ = 0.75 keeps 1 − 0.25 · 0.25 = 0.9375 of the image."""
    from teddy.method.losses import mixed_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(1, 3)
    labels = torch.tensor([0, 2])
    mix = torch.tensor([[1.0, 0.75, 0.0, 0.0]])
    ce = torch.nn.functional.cross_entropy
    own, partner = ce(logits, torch.tensor([0])), ce(logits, torch.tensor([2]))
    expected = 0.9375 * own + 0.0625 * partner
    got = mixed_cross_entropy(logits, labels, torch.tensor([0]), mix, "cutmix")
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
