"""RetinaNet's losses, bias and thresholds against computations written out by hand."""
import math

import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from sampling_free.config import load_config
from sampling_free.modeling import build_model
from sampling_free.modeling.common import Switches
from sampling_free.modeling.retinanet import RetinaNetLoss

# Same hand-built case as tests/test_prior.py: 4x4 grid of 16x16 anchors on a 64x64 image.
BOXES = torch.tensor([[8.0, 8, 24, 24], [8, 24, 38, 40], [44, 2, 56, 12]])
LABELS = torch.tensor([1, 2, 3])
FOREGROUND = {5: 0, 9: 1, 3: 2}  # anchor index -> class column (box A, D, B)
IGNORED = 10


def anchors():
    gen = AnchorGenerator(((16,),), ((1.0,),))
    return gen(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), [torch.zeros(1, 1, 4, 4)])


def make_loss(no_heuristic, guided=False, scale=1.0, iou_target=False):
    return RetinaNetLoss(switches=Switches(no_heuristic, False, guided, False, scale, iou_target=iou_target),
                         matcher=det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True),
                         box_coder=det_utils.BoxCoder((10.0, 10.0, 5.0, 5.0)),
                         focal_alpha=0.25, focal_gamma=2.0, smooth_l1_beta=0.11)


def hand_decoded_iou(anchor, delta, box):
    """IoU of the box the coder (10, 10, 5, 5) decodes from ``delta`` on ``anchor`` with ``box``, written out."""
    ax1, ay1, ax2, ay2 = anchor
    aw, ah = ax2 - ax1, ay2 - ay1
    cx, cy = ax1 + aw / 2 + delta[0] / 10 * aw, ay1 + ah / 2 + delta[1] / 10 * ah
    w, h = aw * math.exp(delta[2] / 5), ah * math.exp(delta[3] / 5)
    px1, py1, px2, py2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    gx1, gy1, gx2, gy2 = box
    inter = max(0.0, min(px2, gx2) - max(px1, gx1)) * max(0.0, min(py2, gy2) - max(py1, gy1))
    return inter / (w * h + (gx2 - gx1) * (gy2 - gy1) - inter)


def hand_losses(logits, deltas, focal, iou_target=False):
    cls = 0.0
    anchor_boxes = anchors()[0]
    for a in range(16):
        if a == IGNORED:
            continue
        for c in range(3):
            y = 1.0 if FOREGROUND.get(a) == c else 0.0
            p = 1 / (1 + math.exp(-logits[a, c].item()))
            if iou_target:  # soft target on the positives: full BCE
                if y:
                    y = hand_decoded_iou(anchor_boxes[a].tolist(), deltas[a].tolist(), BOXES[c].tolist())
                cls += -(y * math.log(p) + (1 - y) * math.log(1 - p))
                continue
            p_t = p if y else 1 - p
            term = -math.log(p_t)
            if focal:
                term *= (0.25 if y else 0.75) * (1 - p_t) ** 2
            cls += term
    cls /= 3 + 1  # positives + images
    reg = 0.0
    for a, c in FOREGROUND.items():
        ax1, ay1, ax2, ay2 = anchor_boxes[a].tolist()
        gx1, gy1, gx2, gy2 = BOXES[c].tolist()
        aw, ah, gw, gh = ax2 - ax1, ay2 - ay1, gx2 - gx1, gy2 - gy1
        target = [10 * ((gx1 + gw / 2) - (ax1 + aw / 2)) / aw, 10 * ((gy1 + gh / 2) - (ay1 + ah / 2)) / ah,
                  5 * math.log(gw / aw), 5 * math.log(gh / ah)]
        for k in range(4):
            d = abs(deltas[a, k].item() - target[k])
            reg += 0.5 * d * d / 0.11 if d < 0.11 else d - 0.5 * 0.11
    return cls, reg / (4 * 3)


@pytest.mark.parametrize("no_heuristic", [False, True])
def test_losses_match_hand_computation(no_heuristic):
    logits, deltas = torch.randn(16, 3) * 2 - 3, torch.randn(16, 4) * 0.3
    out = make_loss(no_heuristic)([{"boxes": BOXES, "labels": LABELS}],
                                  {"cls_logits": logits[None], "bbox_regression": deltas[None]}, anchors())
    cls, reg = hand_losses(logits, deltas, focal=not no_heuristic)
    assert out["loss_retina_cls"].item() == pytest.approx(cls, rel=1e-5)
    assert out["loss_retina_reg"].item() == pytest.approx(reg, rel=1e-5)


def test_iou_target_replaces_the_positive_label_by_the_predicted_box_iou():
    torch.manual_seed(0)
    logits, deltas = (torch.randn(16, 3) * 2 - 3).requires_grad_(), (torch.randn(16, 4) * 0.5).requires_grad_()
    out = make_loss(True, iou_target=True)([{"boxes": BOXES, "labels": LABELS}],
                                           {"cls_logits": logits[None], "bbox_regression": deltas[None]}, anchors())
    cls, reg = hand_losses(logits.detach(), deltas.detach(), focal=False, iou_target=True)
    ious = [hand_decoded_iou(anchors()[0][a].tolist(), deltas[a].tolist(), BOXES[c].tolist())
            for a, c in FOREGROUND.items()]
    assert all(0.05 < v < 0.95 for v in ious)  # the targets really are soft, so the test can tell them from 1
    assert out["loss_retina_cls"].item() == pytest.approx(cls, rel=1e-5)
    hard_labels = hand_losses(logits.detach(), deltas.detach(), focal=False)[0]
    assert out["loss_retina_cls"].item() != pytest.approx(hard_labels, rel=1e-3)
    assert out["loss_retina_reg"].item() == pytest.approx(reg, rel=1e-5)
    out["loss_retina_cls"].backward()  # the target carries no gradient into the box branch
    assert deltas.grad is None or not deltas.grad.any()


def test_iou_target_needs_bce_and_retinanet():
    base = {"MODEL.BACKBONE.NAME": "resnet18", "MODEL.BACKBONE.WEIGHTS": "", "MODEL.FPN.OUT_CHANNELS": 32,
            "MODEL.RETINANET.NUM_CONVS": 1, "MODEL.SAMPLING_FREE.IOU_TARGET": True}
    free = build_model(load_config(values={**base, "MODEL.META_ARCHITECTURE": "RetinaNet",
                                           "MODEL.SAMPLING_FREE_ON": True}), 3)
    focal = build_model(load_config(values={**base, "MODEL.META_ARCHITECTURE": "RetinaNet"}), 3)
    assert free.loss.switches.iou_target and not focal.loss.switches.iou_target  # focal loss keeps hard labels
    with pytest.raises(ValueError, match="IOU_TARGET is implemented for RetinaNet only, not FCOS"):
        build_model(load_config(values={**base, "MODEL.META_ARCHITECTURE": "FCOS", "MODEL.SAMPLING_FREE_ON": True}), 3)


def test_ignored_anchors_do_not_enter_the_bce():
    logits, deltas = torch.randn(16, 3), torch.randn(16, 4)
    loss = make_loss(True)
    target = [{"boxes": BOXES, "labels": LABELS}]
    before = loss(target, {"cls_logits": logits[None], "bbox_regression": deltas[None]}, anchors())
    logits[IGNORED] = 50.0
    after = loss(target, {"cls_logits": logits[None], "bbox_regression": deltas[None]}, anchors())
    assert after["loss_retina_cls"].item() == before["loss_retina_cls"].item()
    logits[0] = 50.0  # a background anchor does count
    again = loss(target, {"cls_logits": logits[None], "bbox_regression": deltas[None]}, anchors())
    assert again["loss_retina_cls"].item() > before["loss_retina_cls"].item() + 10


def test_guided_loss_displays_regression_value_times_scale():
    logits, deltas = torch.randn(16, 3, requires_grad=True), torch.randn(16, 4)
    out = make_loss(True, guided=True, scale=2.0)([{"boxes": BOXES, "labels": LABELS}],
                                                 {"cls_logits": logits[None], "bbox_regression": deltas[None]},
                                                 anchors())
    assert out["loss_retina_cls"].item() == pytest.approx(2 * out["loss_retina_reg"].item(), rel=1e-6)


def test_batch_without_objects_gives_zero_connected_losses():
    logits = torch.randn(1, 16, 3, requires_grad=True)
    deltas = torch.randn(1, 16, 4, requires_grad=True)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    out = make_loss(True, guided=True)(empty, {"cls_logits": logits, "bbox_regression": deltas}, anchors())
    assert out["loss_retina_cls"].item() == 0.0 and out["loss_retina_reg"].item() == 0.0
    sum(out.values()).backward()
    assert logits.grad is not None and deltas.grad is not None


def small_model(sampling_free, **extra):
    cfg = load_config(values={"MODEL.BACKBONE.NAME": "resnet18", "MODEL.FPN.OUT_CHANNELS": 32,
                              "MODEL.RETINANET.NUM_CONVS": 1, "MODEL.SAMPLING_FREE_ON": sampling_free, **extra})
    return build_model(cfg, 6)


def test_bias_is_set_from_the_prior_only_when_enabled():
    free, base = small_model(True), small_model(False)
    for m in (free, base):
        m.set_prior(1e-5)
    assert torch.allclose(free.classification_bias, torch.full((free.classification_bias.numel(),), -11.5129),
                          atol=1e-4)
    assert torch.allclose(base.classification_bias, torch.full((base.classification_bias.numel(),),
                                                               -math.log(99)), atol=1e-5)
    ablation = small_model(True, **{"MODEL.SAMPLING_FREE.BIAS_INIT": False})
    ablation.set_prior(1e-5)
    assert ablation.classification_bias[0].item() == pytest.approx(-math.log(99), abs=1e-5)


def test_test_thresholds_follow_the_prior():
    free, base = small_model(True), small_model(False)
    free.set_prior(1e-5)
    base.set_prior(1e-5)
    assert free.test_thresholds() == (pytest.approx(6e-5), 0.55)
    assert base.test_thresholds() == (0.05, 0.5)
    with pytest.raises(RuntimeError, match="prior"):
        small_model(True).test_thresholds()


def test_threshold_is_applied_in_postprocessing():
    model = small_model(True)
    model.set_prior(1e-3)  # threshold 6e-3
    anchor_boxes = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])]
    probs = torch.tensor([[0.003, 0.0, 0.0], [0.0, 0.02, 0.0], [0.0, 0.0, 0.3]])
    logits = torch.logit(probs.clamp(min=1e-6))
    outputs = {"cls_logits": [logits[None]], "bbox_regression": [torch.zeros(1, 3, 4)]}
    det = model.postprocess_detections(outputs, [anchor_boxes], [(64, 64)])[0]
    assert sorted(det["scores"].tolist()) == pytest.approx([0.02, 0.3])
    assert sorted(det["labels"].tolist()) == [2, 3]  # labels are 1-based classes
    baseline = small_model(False)
    det = baseline.postprocess_detections(outputs, [anchor_boxes], [(64, 64)])[0]
    assert det["scores"].tolist() == pytest.approx([0.3])


def test_journal_options_are_wired_and_only_with_guided_scaling():
    base = {"MODEL.META_ARCHITECTURE": "RetinaNet", "MODEL.BACKBONE.NAME": "resnet18", "MODEL.BACKBONE.WEIGHTS": "",
            "MODEL.FPN.OUT_CHANNELS": 32, "MODEL.RETINANET.NUM_CONVS": 1,
            "MODEL.SAMPLING_FREE.GUIDED_WARMUP_ITERS": 3, "MODEL.SAMPLING_FREE.LEARNED_LOSS_WEIGHTS": True}
    free = build_model(load_config(values={**base, "MODEL.SAMPLING_FREE_ON": True}), 3)
    focal = build_model(load_config(values={**base, "MODEL.SAMPLING_FREE_ON": False}), 3)
    assert focal.loss.frozen_ratio is None and focal.loss_weights is None
    assert free.loss.frozen_ratio.warmup_iters == 3 and "loss_weights.sigmas" in dict(free.named_parameters())
    free.set_prior(1e-3)
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 50]]), "labels": torch.tensor([2])}]
    free.train()
    torch.manual_seed(1)  # the same training size for both calls
    losses = free(images, targets)
    free.loss_weights = None
    torch.manual_seed(1)
    plain = free(images, targets)
    assert set(losses) == {"loss_retina_cls", "loss_retina_reg", "loss_uncertainty"}
    assert losses["loss_retina_reg"].item() == pytest.approx(plain["loss_retina_reg"].item() / 2, rel=1e-5)  # σ = 1
    assert losses["loss_uncertainty"].item() == 0.0


def test_per_class_prior_sets_each_class_bias_and_threshold():
    """π_c = N_fg,c / (N_fg + N_bg); bias column c at log(π_c / (1 - π_c)) for every anchor shape; threshold C·π_c."""
    from sampling_free.mechanism import class_priors_from_counts

    counts, background = [30.0, 6.0, 0.0], 9964.0
    priors = class_priors_from_counts(counts, background)
    assert priors == pytest.approx([30 / 10000, 6 / 10000, 0.5 / 10000])  # an absent class: half an anchor
    cfg = load_config(values={"MODEL.META_ARCHITECTURE": "RetinaNet", "MODEL.BACKBONE.NAME": "resnet18",
                              "MODEL.BACKBONE.WEIGHTS": "", "MODEL.FPN.OUT_CHANNELS": 32,
                              "MODEL.RETINANET.NUM_CONVS": 1, "MODEL.SAMPLING_FREE_ON": True,
                              "MODEL.SAMPLING_FREE.PER_CLASS_PRIOR": True})
    model = build_model(cfg, 3)
    model.set_prior(sum(priors) / 3, per_class=priors)
    bias = model.head.classification_head.cls_logits.bias.detach().view(-1, 3)  # (anchors, classes)
    assert bias.shape[0] == 9
    for c in range(3):
        assert torch.allclose(bias[:, c], torch.tensor(math.log(priors[c] / (1 - priors[c]))).float())
    thresh, nms = model.test_thresholds()
    assert thresh.tolist() == pytest.approx([3 * p for p in priors]) and nms == 0.55
    # the thresholds live in the checkpoint
    again = build_model(cfg, 3)
    again.load_state_dict(model.state_dict())
    assert again.test_thresholds()[0].tolist() == pytest.approx([3 * p for p in priors])
    # detections: each class kept above its own threshold only. Every class scores about 0.006: under class 1's
    # threshold (0.009), over those of classes 2 and 3 (0.0018, 0.00015)
    model.set_classification_prior(0.006)
    model.eval()
    with torch.no_grad():
        detections = model([torch.rand(3, 96, 96)])[0]
    assert len(detections["labels"]) and set(detections["labels"].tolist()) <= {2, 3}
    assert (detections["scores"] > thresh.float()[detections["labels"] - 1]).all()
    with pytest.raises(ValueError, match="PER_CLASS_PRIOR is for one-stage detectors"):
        build_model(load_config(values={"MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.BACKBONE.NAME":
                                        "resnet18", "MODEL.BACKBONE.WEIGHTS": "", "MODEL.FPN.MIN_LEVEL": 2,
                                        "MODEL.FPN.TOP_BLOCK": "maxpool",
                                        "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1,
                                        "MODEL.SAMPLING_FREE.PER_CLASS_PRIOR": True}), 3)
