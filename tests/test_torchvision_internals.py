"""Each private torchvision name the package relies on (``modeling/torchvision_internals.py``), checked for what we use
it for. When a torchvision upgrade moves or changes one, the failure names it and the file to change."""
import pytest
import torch
import torchvision
from torchvision.models import detection
from torchvision.ops import MultiScaleRoIAlign, roi_align

from sampling_free.modeling import torchvision_internals as tv

HINT = f"torchvision {torchvision.__version__} moved or changed %s: update sampling_free/modeling/torchvision_internals.py"


def test_box_coder_matcher_and_sampler():
    coder = tv.BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[1.0, 2.0, 12.0, 9.0]])
    assert torch.allclose(coder.decode_single(coder.encode_single(boxes, anchors), anchors), boxes, atol=1e-4), \
        HINT % "BoxCoder"
    matcher = tv.Matcher(0.5, 0.4, allow_low_quality_matches=False)
    matched = matcher(torch.tensor([[0.9, 0.45, 0.1]]))
    assert matched.tolist() == [0, tv.Matcher.BETWEEN_THRESHOLDS, tv.Matcher.BELOW_LOW_THRESHOLD], HINT % "Matcher"
    pos, neg = tv.BalancedPositiveNegativeSampler(4, 0.5)([torch.tensor([1, 1, 1, 0, 0, 0, 0, -1])])
    assert int(pos[0].sum()) == 2 and int(neg[0].sum()) == 2, HINT % "BalancedPositiveNegativeSampler"


def test_topk_min():
    assert tv.topk_min(torch.arange(3), 10, 0) == 3 and tv.topk_min(torch.arange(30), 10, 0) == 10, HINT % "_topk_min"


def test_box_loss_by_type():
    coder = tv.BoxCoder((1.0, 1.0, 1.0, 1.0))
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.1, -0.2, 0.0, 0.3]])
    got = tv.box_loss("l1", coder, anchors, target, deltas)
    assert float(got) == pytest.approx(0.6), HINT % "_box_loss (l1: sum of |deltas - target deltas|)"


def test_roi_pooling_helpers_and_backward_op():
    features = {"p2": torch.rand(1, 4, 16, 16), "p3": torch.rand(1, 4, 8, 8), "other": torch.rand(1, 4, 4, 4)}
    kept = tv.filter_input(features, ["p2", "p3"])
    assert [f.shape[-1] for f in kept] == [16, 8], HINT % "poolers._filter_input"
    scales, mapper = tv.setup_scales(kept, [(64, 64)], 224, 4)
    assert scales == [0.25, 0.125] and callable(mapper), HINT % "poolers._setup_scales"
    rois = tv.convert_to_roi_format([torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([[1.0, 1.0, 4.0, 4.0]])])
    assert rois[:, 0].tolist() == [0.0, 1.0] and rois.shape == (2, 5), HINT % "poolers._convert_to_roi_format"
    # the backward op gives what autograd of the public roi_align gives
    x = torch.rand(1, 2, 8, 8, requires_grad=True)
    box = torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]])
    out = roi_align(x, box, (3, 3), 1.0, 2)
    grad = torch.rand_like(out)
    (want,) = torch.autograd.grad(out, x, grad)
    got = tv.roi_align_backward(grad, box, 1.0, 3, 3, 1, 2, 8, 8, 2, False)
    assert torch.allclose(got, want, atol=1e-6), HINT % "torch.ops.torchvision._roi_align_backward"
    assert MultiScaleRoIAlign(["p2"], 3, 2) is not None


def test_ssdlite_extra_block():
    block = tv.ssdlite_extra_block(16, 8, torch.nn.BatchNorm2d)
    assert block(torch.rand(1, 16, 8, 8)).shape == (1, 8, 4, 4), HINT % "ssdlite._extra_block (stride 2)"


def test_rpn_top_n_and_regression_loss_type():
    model = detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=2,
                                                        rpn_pre_nms_top_n_train=123, rpn_post_nms_top_n_test=45)
    pre, post = tv.rpn_top_n(model.rpn)
    assert pre["training"] == 123 and post["testing"] == 45, HINT % "RegionProposalNetwork._pre/_post_nms_top_n"
    retina = detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=3)
    assert tv.regression_loss_type(retina.head.regression_head) == "giou", HINT % "RetinaNetRegressionHead._loss_type"
