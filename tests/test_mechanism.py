"""The three components against independent computations (spec §14.7 a-c)."""
import math

import pytest
import torch

from sampling_free.mechanism import adaptive_score_threshold, guided_loss_scaling, optimal_bias, prior_from_counts


def _losses(w):
    """A classification and a regression loss that share the parameter w."""
    x = torch.tensor([0.3, -1.2, 2.0])
    cls = torch.nn.functional.binary_cross_entropy_with_logits(w * x, torch.tensor([1.0, 0.0, 0.0]), reduction="sum")
    reg = (w * 0.5 - 1.0).abs() + 0.1 * w**2
    return cls, reg


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_guided_value_equals_scaled_regression_loss(scale):
    w = torch.tensor(0.7, requires_grad=True)
    cls, reg = _losses(w)
    out = guided_loss_scaling(cls, reg, scale)
    assert out.item() == pytest.approx(scale * reg.item(), rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_guided_gradient_is_ratio_times_classification_gradient(scale):
    w = torch.tensor(0.7, requires_grad=True)
    cls, reg = _losses(w)
    (grad_cls,) = torch.autograd.grad(cls, w, retain_graph=True)
    expected = scale * (reg.item() / cls.item()) * grad_cls.item()
    (grad,) = torch.autograd.grad(guided_loss_scaling(cls, reg, scale), w)
    assert grad.item() == pytest.approx(expected, rel=1e-6)
    # and the regression loss receives no gradient through the ratio
    w2 = torch.tensor(0.7, requires_grad=True)
    cls2, reg2 = _losses(w2)
    r = torch.tensor(1.0, requires_grad=True)
    guided_loss_scaling(cls2, reg2 * r, scale).backward()
    assert r.grad is None or r.grad.item() == 0.0


def test_classification_normaliser_cancels():
    grads = []
    for normaliser in (1.0, 37.0, 1e4):
        w = torch.tensor(0.7, requires_grad=True)
        cls, reg = _losses(w)
        guided_loss_scaling(cls / normaliser, reg).backward()
        grads.append(w.grad.item())
    assert grads[0] == pytest.approx(grads[1], rel=1e-6) == pytest.approx(grads[2], rel=1e-6)
    # whereas without guided scaling the normaliser changes the gradient
    w = torch.tensor(0.7, requires_grad=True)
    cls, _ = _losses(w)
    (cls / 37.0).backward()
    assert w.grad.item() != pytest.approx(grads[0])


def test_no_positives_gives_zero_connected_loss():
    w = torch.tensor(0.7, requires_grad=True)
    cls, _ = _losses(w)
    out = guided_loss_scaling(cls, torch.zeros(()))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert w.grad.item() == 0.0


def test_bias_for_coco_prior():
    b = optimal_bias(1e-5)
    assert b == pytest.approx(-11.513, abs=1e-3)
    assert 1 / (1 + math.exp(-b)) == pytest.approx(1e-5, rel=1e-9)
    with pytest.raises(ValueError):
        optimal_bias(0.0)


def test_prior_and_threshold_from_counts():
    # 8 foreground anchors among 8 + 992, shared by 4 classes
    pi = prior_from_counts(8, 992, 4)
    assert pi == pytest.approx(0.002)
    assert adaptive_score_threshold(pi, 4) == pytest.approx(0.008)
    # the original's COCO RetinaNet prior: threshold pi * C = 8.0e-4 (the original's C + 1 gave 8.1e-4, bug B4)
    assert adaptive_score_threshold(1e-5, 80) == pytest.approx(8.0e-4)
    with pytest.raises(ValueError, match="no matched anchors"):
        prior_from_counts(0, 100, 3)
