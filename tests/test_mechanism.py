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


# --- the original's journal-version options ----------------------------------------------------------------------

def test_frozen_ratio_is_taken_every_step_then_frozen_at_the_second_half_mean():
    from sampling_free.mechanism import FrozenGuidedRatio

    frozen = FrozenGuidedRatio(4)
    pairs = [(2.0, 1.0), (4.0, 1.0), (5.0, 2.0), (8.0, 1.0), (3.0, 3.0), (10.0, 1.0)]  # (L_cls, L_reg) per step
    ratios = [r / c for c, r in pairs]
    expected_frozen = (ratios[2] + ratios[3]) / 2  # steps 3 and 4: the second half of a 4-step warm-up
    for step, (c, r) in enumerate(pairs):
        w = torch.tensor(1.0, requires_grad=True)
        cls, reg = c * w, torch.tensor(r)
        out = frozen(cls, reg, 2.0)
        (grad,) = torch.autograd.grad(out, w)
        ratio = ratios[step] if step < 4 else expected_frozen
        assert out.item() == pytest.approx(2.0 * ratio * c) and grad.item() == pytest.approx(2.0 * ratio * c)
    assert frozen.frozen.item() == pytest.approx(expected_frozen)
    resumed = FrozenGuidedRatio(4)
    resumed.load_state_dict(frozen.state_dict())  # a checkpoint keeps the frozen value
    assert resumed(torch.tensor(1.0), torch.tensor(5.0)).item() == pytest.approx(expected_frozen)


def test_frozen_ratio_averages_over_processes_when_it_freezes():
    from sampling_free.mechanism import FrozenGuidedRatio

    frozen = FrozenGuidedRatio(2, average=lambda t: t * 0 + 0.25)  # stands in for the mean over processes
    frozen(torch.tensor(1.0), torch.tensor(1.0))
    frozen(torch.tensor(1.0), torch.tensor(3.0))
    assert frozen.frozen.item() == 0.25


def test_uncertainty_weights_value_and_gradient_by_hand():
    from sampling_free.mechanism import UncertaintyWeights

    weights = UncertaintyWeights(["a", "b"])
    with torch.no_grad():
        weights.sigmas.copy_(torch.tensor([0.5, 2.0]))
    out = weights({"a": torch.tensor(3.0), "b": torch.tensor(8.0), "c": torch.tensor(1.0)})
    assert out["a"].item() == pytest.approx(3.0 / (2 * 0.25)) and out["b"].item() == pytest.approx(8.0 / 8.0)
    assert out["c"].item() == 1.0  # a term not named is left as it is
    assert out["loss_uncertainty"].item() == pytest.approx(math.log(0.5) + math.log(2.0))
    sum(out.values()).backward()
    # d/dσ [L / (2σ²) + log σ] = -L / σ³ + 1 / σ
    assert weights.sigmas.grad.tolist() == pytest.approx([-3.0 / 0.125 + 2.0, -8.0 / 8.0 + 0.5])
