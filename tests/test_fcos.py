"""FCOS: the assignment rule, its prior count on a hand-built case, losses and the test threshold."""
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from sampling_free.config import load_config
from sampling_free.modeling import build_model
from sampling_free.modeling.fcos import fcos_assign
from sampling_free.modeling.prior_rules import AssignmentPriorCounter


class Stride8Backbone(torch.nn.Module):
    def forward(self, x):
        return OrderedDict(p=torch.zeros(x.shape[0], 1, x.shape[-2] // 8, x.shape[-1] // 8))


def test_prior_count_on_a_hand_built_case():
    # 64x64 input, one level of stride 8: 8x8 locations at (8j, 8i), i, j = 0..7.
    # G = [10,10,30,26] (class 2), centre (20,18), radius 1.5 x 8 = 12: x in (8,32) -> {16,24}, y in (6,30) ->
    #     {8,16,24}; strictly inside G: y = 8 is not (8 < 10). So G holds (16|24, 16|24): 4 locations.
    # K = [0,0,40,40] (class 3) covers the same 4 locations from its centre (20,20), but ties go to the smaller
    #     box (G), so K gets none.
    # H = [40,40,44,44] (class 1): no location lies strictly inside it (x = 40 is on its border) -> none;
    #     FCOS has no low-quality matching.
    counter = AssignmentPriorCounter(backbone=Stride8Backbone(), anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
                                     num_classes=3, assign=fcos_assign, parameter=1.5, rule="fcos")
    boxes = torch.tensor([[10.0, 10, 30, 26], [0, 0, 40, 40], [40, 40, 44, 44]])
    per_class, background = counter.count((64, 64), (64, 64), boxes, torch.tensor([2, 3, 1]))
    assert per_class.tolist() == [0.0, 4.0, 0.0]
    assert background == 60.0


def test_assignment_equals_torchvisions_fcos():
    """Our fcos_assign (shared by loss and prior) against torchvision's own FCOS.compute_loss, multi-level."""
    from torchvision.models.detection import fcos_resnet50_fpn

    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4, min_size=256, max_size=256)
    captured = {}

    def capture(targets, head_outputs, anchors, matched_idxs):
        captured["matched"] = matched_idxs
        return {"x": torch.zeros(())}

    tv.head.compute_loss = capture
    tv.train()
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(12, 2, generator=g) * 200
    wh = torch.rand(12, 2, generator=g) * 150 + 4
    boxes = torch.cat([xy, (xy + wh).clamp(max=256)], 1)
    targets = [{"boxes": boxes, "labels": torch.randint(1, 4, (12,), generator=g)}]
    tv([torch.rand(3, 256, 256)], targets)
    images, _ = tv.transform([torch.rand(3, 256, 256)])
    features = list(tv.backbone(images.tensors).values())
    anchors = tv.anchor_generator(images, features)[0]
    per_level = [f.shape[-2] * f.shape[-1] for f in features]
    ours = fcos_assign(anchors, boxes, per_level, 1.5)
    assert (ours >= 0).sum() > 10
    assert torch.equal(ours, captured["matched"][0])


def small_fcos(sampling_free, **extra):
    cfg = load_config(values={"MODEL.META_ARCHITECTURE": "FCOS", "MODEL.BACKBONE.NAME": "resnet18",
                              "MODEL.FPN.OUT_CHANNELS": 64, "MODEL.FCOS.NUM_CONVS": 1,
                              "MODEL.ANCHOR_GENERATOR.SIZES": [[8], [16], [32], [64], [128]],
                              "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1,
                              "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [1.0],
                              "MODEL.SAMPLING_FREE_ON": sampling_free, "INPUT.MIN_SIZE_TRAIN": [128],
                              "INPUT.MAX_SIZE_TRAIN": 128, **extra})
    model = build_model(cfg, 3)
    model.set_prior(1e-3)
    return model


@pytest.mark.parametrize("target", ["giou", "giou_centerness"])
def test_guided_scaling_against_the_chosen_regression_side(target):
    model = small_fcos(True, **{"MODEL.FCOS.GUIDED_TARGET": target}).train()
    targets = [{"boxes": torch.tensor([[10.0, 12, 90, 100], [60, 20, 120, 60]]), "labels": torch.tensor([1, 3])}]
    losses = model([torch.rand(3, 128, 128)], targets)
    side = losses["loss_fcos_giou"] + (losses["loss_fcos_centerness"] if target == "giou_centerness" else 0)
    assert losses["loss_fcos_cls"].item() == pytest.approx(side.item(), rel=1e-5)
    assert model.training_stats["num_pos"] > 0


def test_bce_is_over_every_location_and_focal_is_the_baseline():
    base, free = small_fcos(False).train(), small_fcos(True, **{"MODEL.SAMPLING_FREE.GUIDED_LOSS": False}).train()
    targets = [{"boxes": torch.tensor([[10.0, 12, 90, 100]]), "labels": torch.tensor([2])}]
    image = torch.rand(3, 128, 128)
    free_loss = free([image], targets)["loss_fcos_cls"].item()
    base_loss = base([image], targets)["loss_fcos_cls"].item()
    # at initialisation every logit sits at its bias: BCE from pi = 1e-3, focal from 0.01
    num_pos = free.training_stats["num_pos"]
    locations = sum((128 // s) ** 2 for s in (8, 16, 32)) + 2 * 2 + 1 * 1
    p = 1e-3
    import math

    expected = (num_pos * -math.log(p) + (locations * 3 - num_pos) * -math.log(1 - p)) / num_pos
    assert free_loss == pytest.approx(expected, rel=2e-2)  # logits are bias + tiny conv noise
    assert base_loss < free_loss


def test_threshold_is_on_the_classification_probability():
    model = small_fcos(True).eval()  # threshold pi * C = 3e-3
    anchors = [[torch.tensor([[0.0, 0, 8, 8], [8, 8, 16, 16], [16, 16, 24, 24]])]]
    probs = torch.tensor([[0.002, 0.0, 0.0], [0.0, 0.01, 0.0], [0.0, 0.0, 0.5]])
    outputs = {"cls_logits": [torch.logit(probs.clamp(min=1e-6))[None]],
               "bbox_regression": [torch.ones(1, 3, 4)],
               "bbox_ctrness": [torch.full((1, 3, 1), -6.0)]}  # tiny centerness must not hide the 0.01 detection
    det = model.postprocess_detections(outputs, anchors, [(64, 64)])[0]
    assert sorted(det["labels"].tolist()) == [2, 3]
    expected = sorted([(0.01 * torch.sigmoid(torch.tensor(-6.0))).sqrt().item(),
                       (0.5 * torch.sigmoid(torch.tensor(-6.0))).sqrt().item()])
    assert sorted(det["scores"].tolist()) == pytest.approx(expected, rel=1e-4)
