"""Gradient-mass guidance (MODEL.SAMPLING_FREE.GUIDANCE gradient, an experiment): the masses against the
derivatives of BCE and smooth-L1 written out by hand, the scaled loss's pull on its logits, no side effects on the
parameters' gradients, float16 outputs, and every family training a step with it."""
import pytest
import torch
import torch.nn.functional as F

from sampling_free.config import load_config
from sampling_free.mechanism import gradient_guided_scaling, gradient_mass
from sampling_free.modeling import build_model
from test_rcnn import batch
from tiny_models import ARCHS, tiny_config


def bce_and_smooth_l1(seed=0, n=500, positives=7, beta=1 / 9):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, 3, generator=g) - 4).requires_grad_()
    targets = torch.zeros(n, 3)
    targets[torch.arange(positives), torch.arange(positives) % 3] = 1.0
    deltas = torch.randn(positives, 4, generator=g).requires_grad_()
    box_targets = torch.randn(positives, 4, generator=g) * 0.3
    cls = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / n
    reg = F.smooth_l1_loss(deltas, box_targets, beta=beta, reduction="sum") / (4 * positives)
    # the derivatives written out: BCE (sigmoid(z) - y) / n; smooth-L1 clamp((d - t) / beta, -1, 1) / (4 P)
    by_hand_cls = ((torch.sigmoid(logits) - targets) / n).abs().sum().item()
    by_hand_reg = (((deltas - box_targets) / beta).clamp(-1, 1) / (4 * positives)).abs().sum().item()
    return logits, deltas, cls, reg, by_hand_cls, by_hand_reg


def test_gradient_mass_is_the_summed_absolute_derivative():
    logits, deltas, cls, reg, by_hand_cls, by_hand_reg = bce_and_smooth_l1()
    assert gradient_mass(cls, logits).item() == pytest.approx(by_hand_cls, rel=1e-5)
    assert gradient_mass(reg, [deltas]).item() == pytest.approx(by_hand_reg, rel=1e-5)
    assert gradient_mass(torch.zeros(()), logits).item() == 0.0  # a loss with no graph pulls on nothing


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_the_scaled_loss_pulls_on_its_logits_with_scale_times_the_box_pull(scale):
    logits, deltas, cls, reg, by_hand_cls, by_hand_reg = bce_and_smooth_l1()
    out = gradient_guided_scaling(cls, reg, logits, deltas, scale)
    assert out.item() == pytest.approx(scale * cls.item() * by_hand_reg / by_hand_cls, rel=1e-5)
    (grad,) = torch.autograd.grad(out, logits)
    assert grad.abs().sum().item() == pytest.approx(scale * by_hand_reg, rel=1e-5)
    # the weight is a constant: the gradient is the BCE's own, times it
    want = scale * by_hand_reg / by_hand_cls * torch.sigmoid(logits).detach()[100:] / 500  # negatives: y = 0
    torch.testing.assert_close(grad[100:], want, rtol=1e-4, atol=0)


def test_unlike_loss_guidance_it_does_not_follow_the_box_loss_value():
    """Smooth-L1's value falls with the error, its gradient mass does not while the error exceeds beta: halving
    every box error nearly halves the loss-guided weight and leaves the gradient-guided one where it was."""
    logits, _, cls, _, by_hand_cls, _ = bce_and_smooth_l1()
    far_deltas = torch.full((7, 4), 2.0, requires_grad=True)
    near_deltas = torch.full((7, 4), 1.0, requires_grad=True)
    far = F.smooth_l1_loss(far_deltas, torch.zeros(7, 4), beta=1 / 9, reduction="sum") / 28
    near = F.smooth_l1_loss(near_deltas, torch.zeros(7, 4), beta=1 / 9, reduction="sum") / 28
    w_far = gradient_guided_scaling(cls, far, logits, far_deltas).item() / cls.item()
    w_near = gradient_guided_scaling(cls, near, logits, near_deltas).item() / cls.item()
    # every coordinate beyond beta pulls with 1 / 28, 28 of them: a box pull of 1 at both errors
    assert w_far == pytest.approx(1 / by_hand_cls, rel=1e-5) and w_near == pytest.approx(w_far, rel=1e-6)
    assert (far / cls).item() == pytest.approx(2 * (near / cls).item() + (1 / 18) / cls.item(), rel=1e-4)


def test_the_ratio_leaves_the_parameters_gradients_alone():
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(40, 5)
    logits = layer(x)
    targets = torch.zeros(40, 3)
    targets[0, 1] = 1
    cls = F.binary_cross_entropy_with_logits(logits, targets)
    reg = (logits[:1] - 1).abs().sum()
    gradient_guided_scaling(cls, reg, logits, logits[:1])
    assert layer.weight.grad is None and layer.bias.grad is None


def test_float16_outputs_keep_their_small_gradients():
    """Under AMP a negative's share of a mean over 10^5 anchors is ~1e-8, below float16's smallest value: the mass
    is taken with the loss scaled up, so it matches the float32 computation."""
    torch.manual_seed(0)
    z32 = (torch.randn(100_000) - 6).requires_grad_()
    z16 = z32.detach().half().requires_grad_()
    y = torch.zeros(100_000)
    y[:30] = 1
    m32 = gradient_mass(F.binary_cross_entropy_with_logits(z32, y), z32).item()
    m16 = gradient_mass(F.binary_cross_entropy_with_logits(z16.float(), y), z16).item()
    assert m16 == pytest.approx(m32, rel=2e-3)


def test_it_cannot_be_frozen_after_a_warm_up():
    with pytest.raises(ValueError, match="GUIDANCE gradient takes its ratio every step"):
        build_model(load_config(values={"MODEL.SAMPLING_FREE.GUIDANCE": "gradient",
                                        "MODEL.SAMPLING_FREE.GUIDED_WARMUP_ITERS": 10,
                                        "MODEL.BACKBONE.NAME": "resnet18", "MODEL.BACKBONE.WEIGHTS": ""}), 3)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_family_trains_a_step_with_it(arch):
    """Each family's head passes its outputs, and the step's guided classification loss differs from loss
    guidance's on the same weights and batch (the two ratios are different quantities)."""
    losses = {}
    for guidance in ("loss", "gradient"):
        torch.manual_seed(0)
        model = build_model(tiny_config(arch, **{"MODEL.SAMPLING_FREE.GUIDANCE": guidance}), 3).train()
        model.set_prior(1e-3)
        images, targets = batch()
        if not model.has_masks:
            targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
        out = model(images, targets)
        total = sum(out.values())
        assert torch.isfinite(total)
        total.backward()
        losses[guidance] = {k: v.item() for k, v in out.items()}
    assert losses["loss"].keys() == losses["gradient"].keys()
    assert losses["loss"] != losses["gradient"]
