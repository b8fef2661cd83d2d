"""Faster / Mask R-CNN: what is sampled, what is not, and the loss normalisations, against independent counts."""
import math

import pytest
import torch
from torchvision.ops import box_iou

from sampling_free.config import load_config
from sampling_free.modeling import build_model

BASE = {"MODEL.META_ARCHITECTURE": "GeneralizedRCNN", "MODEL.BACKBONE.NAME": "resnet18",
        "MODEL.FPN.OUT_CHANNELS": 32, "MODEL.FPN.MIN_LEVEL": 2, "MODEL.FPN.TOP_BLOCK": "maxpool",
        "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1, "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 64,
        "MODEL.ROI_MASK_HEAD.CONV_LAYERS": [16, 16], "MODEL.RPN.POST_NMS_TOP_N_TRAIN": 600,
        "INPUT.MIN_SIZE_TRAIN": [128], "INPUT.MAX_SIZE_TRAIN": 128, "INPUT.MIN_SIZE_TEST": 128,
        "INPUT.MAX_SIZE_TEST": 128, "INPUT.SIZE_DIVISIBILITY": 32}


def model_for(sampling_free, mask=False, **extra):
    cfg = load_config(values={**BASE, "MODEL.SAMPLING_FREE_ON": sampling_free, "MODEL.MASK_ON": mask, **extra})
    model = build_model(cfg, 3)
    model.set_prior(1e-3)
    return model.train()


def batch():
    """Two 128x128 images (no resize): objects in the first, none in the second."""
    boxes = torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 50], [30, 80, 50, 100]])
    masks = torch.zeros(3, 128, 128, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[k, y1:y2, x1:x2] = 1
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                "masks": torch.zeros(0, 128, 128, dtype=torch.uint8)}]
    return [torch.rand(3, 128, 128), torch.rand(3, 128, 128)], targets


def valid_rpn_anchors(model, targets) -> tuple[int, int]:
    """Anchors with label >= 0, counted here from IoUs and thresholds written out (not the model's matcher)."""
    from torchvision.models.detection.image_list import ImageList

    features = list(model.backbone(torch.zeros(1, 3, 128, 128)).values())
    anchors = model.rpn.anchor_generator(ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]), features)[0]
    inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < 128) & (anchors[:, 3] < 128)
    total, positives = 0, 0
    for t in targets:
        if len(t["boxes"]) == 0:
            total += int(inside.sum())
            continue
        iou = box_iou(t["boxes"], anchors)  # (G, A)
        best = iou.max(dim=0).values
        fg = best >= 0.7
        for g in range(len(t["boxes"])):  # low-quality: every anchor tying a box's best IoU
            fg |= iou[g] == iou[g].max()
        valid = (fg | (best < 0.3)) & inside
        total += int(valid.sum())
        positives += int((fg & inside).sum())
    return total, positives


def test_sampling_free_uses_every_valid_anchor_and_every_proposal():
    model = model_for(True, mask=True)
    images, targets = batch()
    captured = {}
    model.rpn.register_forward_hook(lambda m, i, o: captured.update(proposals=o[0]))
    losses = model(images, targets)
    stats = model.training_stats
    total, positives = valid_rpn_anchors(model, targets)
    assert stats["rpn_samples"] == total and stats["rpn_pos"] == positives
    expected_rois = sum(len(p) + len(t["boxes"]) for p, t in zip(captured["proposals"], targets))
    assert stats["roi_samples"] == expected_rois
    assert stats["mask_rois"] == stats["roi_pos"] > 0  # every positive RoI gets a mask loss
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    # guided scaling: objectness displays the RPN box loss, the classifier twice the box loss
    assert losses["loss_objectness"].item() == pytest.approx(losses["loss_rpn_box_reg"].item(), rel=1e-5)
    assert losses["loss_classifier"].item() == pytest.approx(2 * losses["loss_box_reg"].item(), rel=1e-5)


def test_baseline_samples_as_configured():
    model = model_for(False, mask=True, **{"MODEL.RPN.BATCH_SIZE_PER_IMAGE": 64,
                                            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 100})
    images, targets = batch()
    model(images, targets)
    stats = model.training_stats
    assert stats["rpn_samples"] == 2 * 64
    assert stats["roi_samples"] == 2 * 100
    assert stats["roi_pos"] <= 0.25 * 100  # positives capped at 25 % per image (image 2 has none)
    assert stats["mask_rois"] == stats["roi_pos"]


def test_rpn_loss_normalisations_by_hand():
    objectness = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0, 0.0])
    deltas = torch.arange(24, dtype=torch.float32).reshape(6, 4) / 20
    targets = torch.zeros(6, 4)
    labels = [torch.tensor([1.0, 0.0, -1.0, 0.0, 1.0, 0.0])]
    free = model_for(True).rpn
    loss_obj, loss_reg = free.loss(objectness, deltas, labels, [targets])
    beta = 1 / 9

    def sl1(x):
        return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta

    reg_sum = sum(sl1(v) for k in (0, 4) for v in deltas[k].tolist())
    assert loss_reg.item() == pytest.approx(0.5 * reg_sum / 8, rel=1e-5)  # 0.5 x mean over 4P coordinates
    assert loss_obj.item() == pytest.approx(loss_reg.item(), rel=1e-5)  # guided x 1
    ablation = model_for(True, **{"MODEL.SAMPLING_FREE.GUIDED_LOSS": False}).rpn
    loss_obj, _ = ablation.loss(objectness, deltas, labels, [targets])
    used = [0, 1, 3, 4, 5]  # label >= 0
    bce = sum(math.log1p(math.exp(-objectness[k].item())) if labels[0][k] == 1 else
              math.log1p(math.exp(objectness[k].item())) for k in used) / len(used)
    assert loss_obj.item() == pytest.approx(bce, rel=1e-5)
    per_image = model_for(True, **{"MODEL.RPN.BOX_LOSS_NORMALIZER": "images"}).rpn
    two_images = [labels[0][:3], labels[0][3:]]
    loss_obj, loss_reg = per_image.loss(objectness, deltas, two_images, [targets[:3], targets[3:]])
    assert loss_reg.item() == pytest.approx(reg_sum / (2 * 256), rel=1e-5)  # the samplers' images x 256
    assert loss_obj.item() == pytest.approx(loss_reg.item(), rel=1e-5)


def test_rpn_objectness_mean_per_level_by_hand():
    """OBJECTNESS_NORMALIZER levels: the BCE is a mean within each level, then over the levels; its gradient on one
    anchor of a level holding few anchors is larger than on one of a crowded level by their ratio of counts."""
    objectness = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0, 0.0], requires_grad=True)
    labels = [torch.tensor([1.0, 0.0, -1.0, 0.0, 1.0, 0.0])]
    levels = torch.tensor([0, 0, 0, 0, 1, 1])  # level 0: used anchors 0, 1, 3; level 1: anchors 4, 5
    deltas, targets = torch.zeros(6, 4), [torch.zeros(6, 4)]
    rpn = model_for(True, **{"MODEL.RPN.OBJECTNESS_NORMALIZER": "levels",
                             "MODEL.SAMPLING_FREE.GUIDED_LOSS": False}).rpn

    def bce(k):
        x = objectness[k].item()
        return math.log1p(math.exp(-x)) if labels[0][k] == 1 else math.log1p(math.exp(x))

    loss_obj, _ = rpn.loss(objectness, deltas, labels, targets, levels)
    expected = ((bce(0) + bce(1) + bce(3)) / 3 + (bce(4) + bce(5)) / 2) / 2
    assert loss_obj.item() == pytest.approx(expected, rel=1e-6)
    loss_obj.backward()
    p5 = torch.sigmoid(objectness[5]).item()  # d bce / d logit = p - y; anchor 5 (level 1) and 1 (level 0), y = 0
    p1 = torch.sigmoid(objectness[1]).item()
    assert objectness.grad[5].item() == pytest.approx(p5 / (2 * 2), rel=1e-6)
    assert objectness.grad[1].item() == pytest.approx(p1 / (2 * 3), rel=1e-6)
    assert objectness.grad[2].item() == 0  # ignored anchor
    images, batch_targets = batch()  # and through the whole RPN: every level present, a finite loss
    whole = model_for(True, **{"MODEL.RPN.OBJECTNESS_NORMALIZER": "levels"})
    assert all(torch.isfinite(v) for v in whole(images, batch_targets).values())


def test_box_head_loss_normalisations_by_hand():
    heads = {free: model_for(free).roi_heads for free in (True, False)}
    logits = torch.tensor([[2.0, 0.1, -1.0, 0.3], [0.0, 1.0, 0.5, -0.5], [1.0, 1.0, 1.0, 1.0]])
    regression = torch.arange(48, dtype=torch.float32).reshape(3, 16) / 40
    labels, targets = [torch.tensor([0, 2, 3])], [torch.ones(3, 4) * 0.1]
    ce = sum(-torch.log_softmax(logits[k], 0)[labels[0][k]].item() for k in range(3)) / 3

    def sl1(x):
        return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5

    reg_sum = sum(sl1(regression[k, 4 * c + j].item() - 0.1) for k, c in ((1, 2), (2, 3)) for j in range(4))
    cls, reg = heads[False].box_loss(logits, regression, labels, targets)
    assert cls.item() == pytest.approx(ce, rel=1e-5) and reg.item() == pytest.approx(reg_sum / 3, rel=1e-5)
    cls, reg = heads[True].box_loss(logits, regression, labels, targets)
    assert reg.item() == pytest.approx(reg_sum / 8, rel=1e-5)  # mean over the 4P coordinates
    assert cls.item() == pytest.approx(2 * reg.item(), rel=1e-5)  # guided x MODEL.CLASSIFICATION_SCALE (2)


def test_objectness_bias_and_test_threshold():
    free, base = model_for(True), model_for(False)
    assert free.objectness_bias.detach().allclose(torch.full_like(free.objectness_bias, math.log(1e-3 / (1 - 1e-3))))
    assert base.objectness_bias.detach().abs().max() == 0
    images, _ = batch()
    for model, thresh in ((free, 1e-4), (base, 0.05)):
        model.eval()
        with torch.no_grad():
            detections = model(images)
        assert model.roi_heads.score_thresh == thresh
        assert all((d["scores"] > thresh).all() for d in detections)
        assert all(((d["labels"] >= 1) & (d["labels"] <= 3)).all() for d in detections)


def test_empty_batch_gives_connected_zero_losses():
    model = model_for(True, mask=True)
    images, targets = batch()
    losses = model(images[1:], targets[1:])
    assert losses["loss_rpn_box_reg"].item() == 0.0 and losses["loss_objectness"].item() == 0.0
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad is not None


@pytest.mark.parametrize("arch", ["GeneralizedRCNN", "CascadeRCNN"])
def test_box_predictors_start_as_the_originals(arch):
    """cls N(0, 0.01), box N(0, 0.001), biases 0, in both modes (torchvision's nn.Linear default is uniform)."""
    for sampling_free in (True, False):
        model = model_for(sampling_free, **{"MODEL.META_ARCHITECTURE": arch, "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 512})
        heads = model.roi_heads
        predictors = list(heads.stages) if arch == "CascadeRCNN" else [heads.box_predictor]
        for p in predictors:
            p = p.requires_grad_(False)
            assert float(p.cls_score.bias.abs().max()) == 0 and float(p.bbox_pred.bias.abs().max()) == 0
            assert float(p.cls_score.weight.std()) == pytest.approx(0.01, rel=0.05)
            assert float(p.bbox_pred.weight.std()) == pytest.approx(0.001, rel=0.1)


def test_each_stage_can_be_switched_on_its_own():
    """Heuristic RPN under sampling-free RoI heads, and the reverse (MODEL.SAMPLING_FREE.RPN / ROI_HEADS)."""
    images, targets = batch()
    for rpn_on, roi_on in ((False, True), (True, False)):
        model = model_for(True, **{"MODEL.SAMPLING_FREE.RPN": rpn_on, "MODEL.SAMPLING_FREE.ROI_HEADS": roi_on})
        model(images, targets)
        valid, _ = valid_rpn_anchors(model, targets)
        assert model.rpn.last_stats["rpn_samples"] == (valid if rpn_on else 2 * 256)
        assert (model.roi_heads.last_stats["roi_samples"] == 2 * 512) == (not roi_on)  # sampled: 512 per image
        bias = float(model.objectness_bias.detach().mean())
        assert bias == pytest.approx(math.log(1e-3 / (1 - 1e-3)) if rpn_on else 0.0, abs=1e-6)
        assert model.roi_heads.score_thresh == (1e-4 if roi_on else 0.05)
