"""The exact objectives: gradient matching and the unrolled meta-gradient against hand derivations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from teddy.method import meta
from teddy.method.losses import gradient_cosine_loss


def test_gradient_cosine_loss_hand_computed():
    # a = (1, 0 | 0), b = (1, 1 | 0): cos = 1/√2
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    b = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    assert gradient_cosine_loss(a, b).item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert gradient_cosine_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert gradient_cosine_loss(a, [-t for t in a]).item() == pytest.approx(2.0)


def linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def test_unrolled_k1_matches_hand_derived_meta_gradient():
    """K = 1: θ1 = θ0 − η ∇θ L_S(θ0; x̃) and d L_real(θ1)/dx̃ = −η ∂/∂x̃ ⟨∇θ L_real(θ1), ∇θ L_S(θ0; x̃)⟩."""
    model, eta = linear_model(), 0.5
    x_syn = torch.randn(3, 1, 2, 2, requires_grad=True)
    y_syn = torch.tensor([0, 1, 2])
    x_real, y_real = torch.randn(6, 1, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    (auto,) = torch.autograd.grad(meta.unrolled_loss(model, x_syn, y_syn, x_real, y_real, 1, eta), x_syn)

    # by hand: a linear model's CE gradient is ∇W = (softmax(Wx + b) − onehot)ᵀ x, ∇b = Σ(p − onehot)
    W, b = model[1].weight.detach(), model[1].bias.detach()

    def grads(W, b, x, y):
        p = F.softmax(x.flatten(1) @ W.T + b, dim=1) - F.one_hot(y, 3).float()
        return p.T @ x.flatten(1) / len(y), p.mean(0)

    gW, gb = grads(W, b, x_syn.detach(), y_syn)
    rW, rb = grads(W - eta * gW, b - eta * gb, x_real, y_real)  # ∇θ L_real at θ1, held fixed
    sW, sb = grads(W, b, x_syn, y_syn)  # differentiable in x̃
    (hand,) = torch.autograd.grad(-eta * ((rW * sW).sum() + (rb * sb).sum()), x_syn)
    assert torch.allclose(auto, hand, atol=1e-6)


def test_taylor_surrogate_agrees_with_unrolled_for_small_steps():
    model = linear_model()
    x_syn = torch.randn(3, 1, 2, 2, requires_grad=True)
    y_syn = torch.tensor([0, 1, 2])
    x_real, y_real = torch.randn(6, 1, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    g_real = meta.real_gradient(model, x_real, y_real)
    (exact,) = torch.autograd.grad(meta.unrolled_loss(model, x_syn, y_syn, x_real, y_real, 2, 1e-3), x_syn)
    (approx,) = torch.autograd.grad(meta.taylor_surrogate(model, x_syn, y_syn, g_real, 2, 1e-3), x_syn)
    cos = F.cosine_similarity(exact.flatten(), approx.flatten(), dim=0)
    assert cos > 0.999


def test_gradient_cosine_loss_of_tiny_gradients():
    """Cosine is scale-free: gradients of norm ~1e-10 (a converged teacher) give the same loss as at
    norm 1 — no eps large enough to swamp them."""
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    b = [torch.tensor([1.0, 1.0]), torch.tensor([0.0])]
    tiny = 1e-10
    loss = gradient_cosine_loss([t * tiny for t in a], [t * tiny for t in b])
    assert loss.item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-5)


def test_taylor_surrogate_is_minus_eta_k_times_the_inner_product():
    """The surrogate's value by hand at K = 3, η = 0.1: −ηK ⟨∇θ L_real, ∇θ L_S⟩."""
    model = linear_model()
    x_syn, y_syn = torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 2])
    x_real, y_real = torch.randn(6, 1, 2, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    g_real = meta.real_gradient(model, x_real, y_real)
    g_syn = torch.autograd.grad(F.cross_entropy(model(x_syn), y_syn), list(model.parameters()))
    dot = sum((a * b).sum() for a, b in zip(g_real, g_syn, strict=True))
    value = meta.taylor_surrogate(model, x_syn, y_syn, g_real, 3, 0.1)
    assert value.item() == pytest.approx(-0.1 * 3 * dot.item(), rel=1e-5)
