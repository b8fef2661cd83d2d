"""OHEM, the R-CNN baseline's strongest sampler: the per-RoI loss it ranks by, its selection, and that Faster and
Cascade R-CNN train on exactly the RoIs it picks -- each checked against a computation written out here."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from sampling_free.config import load_config
from sampling_free.modeling import build_model
from sampling_free.modeling.rcnn import hardest_rois, roi_losses
from test_cascade import BASE as CASCADE
from test_rcnn import BASE, batch


def test_roi_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1, 2])
    deltas = torch.tensor([[0.5, -0.05, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])  # the two positives' rows
    targets = torch.zeros(2, 4)
    beta = 1 / 9
    ce = [-torch.log_softmax(logits[k], 0)[labels[k]].item() for k in range(3)]

    def sl1(x):
        return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta

    want = [ce[0], ce[1] + sum(sl1(x) for x in deltas[0].tolist()), ce[2]]
    got = roi_losses(logits, deltas, labels, targets, beta=beta)
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_hardest_rois_by_hand():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 10, 10.5]])
    loss = torch.tensor([5.0, 4.0, 1.0, 3.0, 2.0])
    one_label = [torch.zeros(5, dtype=torch.long)]
    assert hardest_rois([loss], [boxes], one_label, per_image=3, nms_thresh=0.0)[0].tolist() == [0, 1, 3]
    # box 1 (IoU 0.9 with box 0) and box 4 (0.95) are copies of the hardest: NMS at 0.7 keeps one of them
    assert hardest_rois([loss], [boxes], one_label, per_image=3, nms_thresh=0.7)[0].tolist() == [0, 3, 2]
    assert hardest_rois([loss], [boxes], one_label, per_image=10, nms_thresh=0.7)[0].tolist() == [0, 3, 2]


def test_hardest_rois_suppress_only_within_a_label():
    """The authors' OHEM runs NMS per image and per label: a hard background RoI over an object's positive RoI is
    not a copy of it, so both stay; two overlapping RoIs of one label are, so one goes."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 9.5], [40, 40, 50, 50]])
    loss = torch.tensor([5.0, 4.0, 3.5, 1.0])
    labels = torch.tensor([2, 0, 0, 1])  # RoI 0 positive; 1 and 2 background copies of each other over it
    assert hardest_rois([loss], [boxes], [labels], per_image=4, nms_thresh=0.7)[0].tolist() == [0, 1, 3]
    assert hardest_rois([loss], [boxes], [torch.zeros(4, dtype=torch.long)], per_image=4,
                        nms_thresh=0.7)[0].tolist() == [0, 3]
    # per image: the same boxes in a second image are judged on their own
    two = hardest_rois([loss, loss.flip(0)], [boxes, boxes.flip(0)], [labels, labels.flip(0)], per_image=2,
                       nms_thresh=0.7)
    assert [k.tolist() for k in two] == [[0, 1], [3, 2]]


def greedy_nms_per_label(boxes, loss, labels, thresh):
    """NMS written out: visit RoIs from the largest loss down, keep one unless a kept RoI of its label overlaps it
    above ``thresh``."""
    kept = []
    for k in loss.argsort(descending=True).tolist():
        if all(labels[j] != labels[k] or box_iou(boxes[j:j + 1], boxes[k:k + 1]).item() <= thresh for j in kept):
            kept.append(k)
    return torch.tensor(kept, dtype=torch.long)


def every_roi_loss(model, features, rois, targets, images):
    """Each RoI's loss under the model's current box head, labelled here with IoUs and thresholds written out."""
    heads = model.roi_heads
    with torch.no_grad():
        logits, regression = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, rois, images.image_sizes)))
    out, start = [], 0
    for r, t in zip(rois, targets):
        n = len(r)
        if len(t["boxes"]):
            iou, idx = box_iou(t["boxes"], r).max(0)
            labels = torch.where(iou >= 0.5, t["labels"][idx], torch.zeros_like(idx))
            gt = t["boxes"][idx]
        else:
            labels, gt = torch.zeros(n, dtype=torch.long), torch.zeros(n, 4)
        loss = F.cross_entropy(logits[start:start + n], labels, reduction="none")
        pos = torch.where(labels > 0)[0]
        deltas = regression[start:start + n].reshape(n, -1, 4)[pos, labels[pos]]
        coded = heads.box_coder.encode_single(gt[pos], r[pos])
        loss[pos] += F.smooth_l1_loss(deltas, coded, beta=1.0, reduction="none").sum(1)  # ROI_BOX_HEAD.SMOOTH_L1_BETA
        out.append((loss, labels))
        start += n
    return out


@pytest.mark.parametrize("nms_thresh", [0.0, 0.7])
def test_faster_rcnn_trains_on_the_hardest_rois(nms_thresh):
    cfg = load_config(values={**BASE, "MODEL.SAMPLING_FREE_ON": False, "MODEL.ROI_HEADS.SAMPLER": "ohem",
                              "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 40, "MODEL.ROI_HEADS.OHEM_NMS_THRESH": nms_thresh})
    torch.manual_seed(0)
    model = build_model(cfg, 3).train()
    model.set_prior(1e-3)
    images, targets = batch()
    seen = {}
    model.rpn.register_forward_hook(lambda m, i, o: seen.update(proposals=o[0]))
    model.roi_heads.box_roi_pool.register_forward_hook(lambda m, args, out: seen.setdefault("pooled", []).append(args[1]))
    model.backbone.register_forward_hook(lambda m, i, o: seen.update(features=o))
    model.transform.register_forward_hook(lambda m, i, o: seen.update(images=o[0], targets=o[1]))
    model(images, targets)
    assert len(seen["pooled"]) == 2  # every RoI without gradient, then the kept ones with it
    trained = seen["pooled"][1]
    everything = [torch.cat([p, t["boxes"]]) for p, t in zip(seen["proposals"], seen["targets"])]
    losses = every_roi_loss(model, seen["features"], everything, seen["targets"], seen["images"])
    for kept, rois, (loss, labels) in zip(trained, everything, losses):
        order = greedy_nms_per_label(rois, loss, labels, nms_thresh) if nms_thresh else loss.argsort(descending=True)
        assert torch.equal(kept, rois[order[:40]])
        if nms_thresh:
            assert len(order) < len(rois)  # the NMS removed copies
    assert model.training_stats["roi_samples"] == 80
    # a random sampler would keep the 25 % cap on positives; the hardest 40 here are mostly positives and GT boxes
    assert model.training_stats["roi_pos"] > 0.25 * 40


def test_cascade_trains_each_stage_on_its_hardest_rois():
    model = build_model(load_config(values={**CASCADE, "MODEL.SAMPLING_FREE_ON": False, "MODEL.ROI_HEADS.SAMPLER": "ohem",
                                            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 30}), 3).train()
    model.set_prior(1e-3)
    images, targets = batch()
    model(images, [{k: v for k, v in t.items() if k != "masks"} for t in targets])
    stats = model.training_stats
    assert [stats[f"roi_samples_stage{k}"] for k in range(3)] == [60.0, 60.0, 60.0]


def test_ohem_is_for_rcnns_and_sampling_free_ignores_it():
    with pytest.raises(ValueError, match="SAMPLER ohem samples an R-CNN's RoIs; RetinaNet has none"):
        build_model(load_config(values={"MODEL.ROI_HEADS.SAMPLER": "ohem", "MODEL.BACKBONE.NAME": "resnet18"}), 3)
    free = build_model(load_config(values={**BASE, "MODEL.SAMPLING_FREE_ON": True, "MODEL.ROI_HEADS.SAMPLER": "ohem"}), 3)
    assert not free.roi_heads.ohem  # every RoI, as without the key
