"""Cascade R-CNN: stage-to-stage refinement, score averaging, and no sampling in sampling-free mode."""
import pytest
import torch
from torchvision.ops import clip_boxes_to_image

from sampling_free.config import load_config
from sampling_free.modeling import build_model

BASE = {"MODEL.META_ARCHITECTURE": "CascadeRCNN", "MODEL.BACKBONE.NAME": "resnet18", "MODEL.FPN.OUT_CHANNELS": 32,
        "MODEL.FPN.MIN_LEVEL": 2, "MODEL.FPN.TOP_BLOCK": "maxpool", "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1,
        "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": 64, "MODEL.RPN.POST_NMS_TOP_N_TRAIN": 300,
        "MODEL.RPN.POST_NMS_TOP_N_TEST": 200, "INPUT.MIN_SIZE_TRAIN": [128], "INPUT.MAX_SIZE_TRAIN": 128,
        "INPUT.MIN_SIZE_TEST": 128, "INPUT.MAX_SIZE_TEST": 128}


def cascade(sampling_free, **extra):
    model = build_model(load_config(values={**BASE, "MODEL.SAMPLING_FREE_ON": sampling_free, **extra}), 3)
    model.set_prior(1e-3)
    return model


def targets():
    return [{"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 50]]), "labels": torch.tensor([1, 3])},
            {"boxes": torch.tensor([[30.0, 30, 90, 100]]), "labels": torch.tensor([2])}]


def record(model):
    """Capture each stage's input boxes (what RoIAlign pools) and outputs."""
    calls = {"boxes": [], "outputs": []}
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, args, out: calls["boxes"].append(args[1]))
    for stage in model.roi_heads.stages:
        stage.register_forward_hook(lambda m, args, out: calls["outputs"].append(out))
    return calls


@pytest.mark.parametrize("sampling_free", [True, False])
def test_each_stage_trains_on_the_previous_stages_refined_boxes(sampling_free):
    model = cascade(sampling_free).train()
    calls = record(model)
    model([torch.rand(3, 128, 128), torch.rand(3, 128, 128)], targets())
    heads, gts = model.roi_heads, targets()
    for k in range(2):
        _, deltas = calls["outputs"][k]
        inputs = calls["boxes"][k]
        split = deltas.split([len(b) for b in inputs])
        for image, (boxes, d, gt) in enumerate(zip(inputs, split, gts)):
            refined = clip_boxes_to_image(heads.stages[k].box_coder.decode_single(d.detach(), boxes), (128, 128))
            expected = torch.cat([refined, gt["boxes"]])  # plus the ground truth, at every stage
            nxt = calls["boxes"][k + 1][image]
            if sampling_free:
                assert torch.allclose(nxt, expected, atol=1e-4)
            else:  # the baseline samples a subset of them: every box it keeps comes from that set
                distance = torch.cdist(nxt, expected, compute_mode="donot_use_mm_for_euclid_dist")
                assert distance.min(dim=1).values.max() < 1e-3


def test_sampling_free_keeps_every_roi_at_every_stage_and_baseline_samples():
    free = cascade(True).train()
    calls = record(free)
    free([torch.rand(3, 128, 128), torch.rand(3, 128, 128)], targets())
    stats = free.training_stats
    for k in range(3):
        assert stats[f"roi_samples_stage{k}"] == sum(len(b) for b in calls["boxes"][k])
    proposals = stats["roi_samples_stage0"] - 3
    assert stats["roi_samples_stage1"] == proposals + 6 and stats["roi_samples_stage2"] == proposals + 9
    base = cascade(False, **{"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64}).train()
    base([torch.rand(3, 128, 128), torch.rand(3, 128, 128)], targets())
    for k in range(3):
        assert base.training_stats[f"roi_samples_stage{k}"] == 2 * 64


def test_stage_losses_are_weighted_and_guided():
    model = cascade(True).train()
    losses = model([torch.rand(3, 128, 128)], targets()[:1])
    unweighted = {k: losses[f"loss_box_reg_stage{k}"].item() / w for k, w in enumerate((1.0, 0.5, 0.25))}
    for k, w in enumerate((1.0, 0.5, 0.25)):  # guided x 2, then the stage weight
        assert losses[f"loss_cls_stage{k}"].item() == pytest.approx(w * 2 * unweighted[k], rel=1e-4, abs=1e-9)


def test_test_scores_are_the_mean_of_the_stages_softmax():
    model = cascade(True).eval()
    calls = record(model)
    with torch.no_grad():
        detections = model([torch.rand(3, 128, 128)])
    mean = torch.stack([torch.softmax(logits, -1) for logits, _ in calls["outputs"]]).mean(0)
    det = detections[0]
    assert len(det["scores"]) > 0
    for score, label in zip(det["scores"], det["labels"]):
        assert (mean[:, label] - score).abs().min() < 1e-6
    assert model.roi_heads.score_thresh == 1e-4
