"""PAA: the Gaussian-mixture fit against an EM written out here, the split on hand-made losses, the whole
assignment against an independent per-object computation, π's counting rule, and both modes training end to end
with resume continuing the same run."""
import json
import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from sampling_free.cli import main
from sampling_free.config import load_config
from sampling_free.modeling import build_model
from sampling_free.modeling.atss import atss_assign
from sampling_free.modeling.paa import fit_two_gaussians, separate, vote

PAA = {"MODEL.META_ARCHITECTURE": "PAA", "MODEL.BACKBONE.NAME": "resnet18", "MODEL.BACKBONE.WEIGHTS": "",
       "MODEL.FCOS.NUM_CONVS": 1, "MODEL.FPN.OUT_CHANNELS": 32, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [1.0],
       "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1, "MODEL.ANCHOR_GENERATOR.SIZES": [[16], [32], [64], [128], [256]]}


def sklearn_mixture(x: np.ndarray):
    """The mixture PAA's authors fit (their loss.py): scikit-learn's, started at min / max, unit precisions, equal
    weights; returns it fitted to the column ``x``."""
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                           precisions_init=[[[1.0]], [[1.0]]]).fit(x[:, None])


def test_mixture_fit_equals_scikit_learns_for_every_row_at_once():
    rng = np.random.default_rng(0)
    rows = [np.concatenate([rng.normal(0.3, 0.1, n), rng.normal(2.5, s, m)])
            for n, m, s in ((5, 20, 0.4), (9, 9, 0.4), (2, 30, 0.4), (12, 3, 1.5), (1, 1, 0.1))]
    width = max(len(r) for r in rows)
    x = torch.tensor(np.stack([np.pad(r, (0, width - len(r))) for r in rows]))
    valid = torch.tensor([[k < len(r) for k in range(width)] for r in rows])
    posterior, log_mix = fit_two_gaussians(x, valid)
    for i, r in enumerate(rows):  # each row stops at its own convergence, as scikit-learn's fit of that row alone
        gmm = sklearn_mixture(r)
        assert posterior[i, :len(r)].numpy() == pytest.approx(gmm.predict_proba(r[:, None])[:, 0], abs=1e-6)
        assert log_mix[i, :len(r)].numpy() == pytest.approx(gmm.score_samples(r[:, None]), abs=1e-6)


def test_the_split_keeps_the_low_loss_cluster():
    losses = torch.tensor([[0.10, 3.0, 0.20, 2.9, 0.15, 3.2, 3.1, 2.8, 0.0]])
    valid = torch.tensor([[True] * 8 + [False]])  # the last entry is padding
    # the low cluster {0.10, 0.15, 0.20} is the positive component; the boundary is its most likely member under the
    # mixture (0.15, its middle), and every candidate with a loss at most that is positive -- PAA's rule (as
    # published, and as mmdetection implements it), which keeps the better half of the cluster
    assert separate(losses, valid)[0].tolist() == [True, False, False, False, True, False, False, False, False]
    one = separate(torch.tensor([[5.0, 0.0]]), torch.tensor([[True, False]]))
    assert one.tolist() == [[True, False]]  # a lone candidate is kept
    same = separate(torch.tensor([[2.0, 2.0, 2.0]]), torch.tensor([[True, True, True]]))
    assert same.tolist() == [[True, True, True]]  # no low component: all kept, as the authors (for recall)


def paa_by_hand(model, anchors, per_level, boxes, labels, cls_logits, pred_boxes):
    """PAA's assignment for one image as the authors' loss.py does it, object by object, with the pieces written
    out and scikit-learn's mixture."""
    iou = box_iou(anchors, boxes).numpy()  # (A, G)
    owner = np.where(iou.max(1) >= 0.1, iou.argmax(1), -1)
    for g in range(len(boxes)):  # low-quality matches: each object's best anchors go to their own best object
        best = iou[:, g] == iou[:, g].max()
        owner[best] = iou[best].argmax(1)
    matched = torch.full((len(anchors),), -1)
    for g in range(len(boxes)):
        mine = np.nonzero(owner == g)[0]
        if len(mine) == 0:
            continue
        target = torch.zeros(len(mine), cls_logits.shape[1])
        target[:, labels[g] - 1] = 1
        cls = sigmoid_focal_loss(cls_logits[mine], target, alpha=0.25, gamma=2.0, reduction="none").sum(1)
        box = generalized_box_iou_loss(pred_boxes[mine], boxes[g].expand(len(mine), 4), reduction="none")
        score = dict(zip(mine.tolist(), (cls + box).double().tolist()))
        cand, start = [], 0
        for n in per_level:
            here = [a for a in mine.tolist() if start <= a < start + n]
            cand += sorted(here, key=lambda a: (score[a], a))[:model.topk]
            start += n
        loss = np.array([score[a] for a in cand])
        if len(cand) == 1:
            keep = [True]
        else:
            gmm = sklearn_mixture(loss)
            low = gmm.predict(loss[:, None]) == 0
            if low.any():
                likely = gmm.score_samples(loss[:, None])
                keep = loss <= loss[np.nonzero(low)[0][likely[low].argmax()]]
            else:
                keep = [True] * len(cand)
        for a, k in zip(cand, keep):
            if k:
                matched[a] = g
    return matched


def test_the_assignment_equals_one_computed_object_by_object():
    """Candidates ranked by loss among the anchors the IoU matcher gives each object (not by IoU: every anchor
    inside a large box has the same IoU), exclusive to one object."""
    torch.manual_seed(0)
    model = build_model(load_config(values={**PAA, "MODEL.SAMPLING_FREE_ON": False}), 3)
    per_level = [64, 16, 4]
    anchors = torch.cat([torch.tensor([[x * s, y * s, x * s + 2 * s, y * s + 2 * s] for y in range(n) for x in range(n)],
                                      dtype=torch.float32) for s, n in ((8, 8), (16, 4), (32, 2))])
    targets = [{"boxes": torch.tensor([[4.3, 6.1, 30.7, 40.2], [20.4, 10.9, 60.1, 58.3]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[0.5, 0.2, 16.6, 15.9]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    cls_logits = torch.randn(3, len(anchors), 3)
    pred = anchors + torch.randn(3, len(anchors), 4) * 4
    pred[..., 2:] = torch.maximum(pred[..., 2:], pred[..., :2] + 1)
    got = model.assign_batch(cls_logits, pred, torch.stack([anchors] * 3), targets, per_level)
    for i, t in enumerate(targets):
        if len(t["boxes"]):
            want = paa_by_hand(model, anchors, per_level, t["boxes"], t["labels"], cls_logits[i], pred[i])
            assert got[i].tolist() == want.tolist()
            assert (got[i] >= 0).sum() > 0
        else:
            assert (got[i] == -1).all()


def test_the_box_loss_weighs_each_positive_by_its_iou_and_divides_by_their_sum():
    """As the authors' loss.py: 1.3 x sum(IoU x GIoU loss) / sum(IoU) over positives, the IoU branch's BCE to the
    same IoU x 0.5 / positives, focal loss / positives."""
    torch.manual_seed(1)
    model = build_model(load_config(values={**PAA, "MODEL.SAMPLING_FREE_ON": False}), 2)
    anchors = torch.tensor([[0.0, 0, 16, 16], [8, 8, 24, 24], [30, 30, 60, 60], [0, 30, 20, 50]])
    targets = [{"boxes": torch.tensor([[2.0, 1, 18, 20], [28, 33, 58, 61]]), "labels": torch.tensor([1, 2])}]
    outputs = {"cls_logits": torch.randn(1, 4, 2), "bbox_regression": torch.randn(1, 4, 4) * 0.2,
               "bbox_ctrness": torch.randn(1, 4, 1)}
    model.assign_batch = lambda *_: torch.tensor([[0, 0, 1, -1]])
    losses = model.compute_loss(targets, outputs, [anchors], [4])
    pred = model.decode(outputs["bbox_regression"][0], anchors)[:3]
    gt = targets[0]["boxes"][[0, 0, 1]]
    iou = torch.diag(box_iou(pred, gt))
    giou = generalized_box_iou_loss(pred, gt, reduction="none")
    assert float(losses["loss_paa_giou"]) == pytest.approx(float(1.3 * (iou * giou).sum() / iou.sum()), rel=1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(outputs["bbox_ctrness"][0, :3, 0], iou, reduction="sum")
    assert float(losses["loss_paa_iou"]) == pytest.approx(float(0.5 * bce / 3), rel=1e-5)
    onehot = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 0]])
    focal = sigmoid_focal_loss(outputs["cls_logits"][0], onehot, alpha=0.25, gamma=2.0, reduction="sum")
    assert float(losses["loss_paa_cls"]) == pytest.approx(float(focal / 3), rel=1e-5)


def test_pi_is_counted_with_atss_rule_on_the_same_anchors():
    """PAA's split needs trained losses; π is counted with ATSS's model-free split of the same candidates."""
    model = build_model(load_config(values={**PAA, "MODEL.SAMPLING_FREE_ON": True}), 3)
    counter = model.prior_counter()
    assert counter.assign is atss_assign and counter.parameter == model.topk == 9
    boxes, labels = torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 50]]), torch.tensor([1, 3])
    anchors, per_level = counter.locations((128, 128))
    fg, bg = counter.count((128, 128), (128, 128), boxes, labels)
    matched = atss_assign(anchors, boxes, per_level, 9)
    assert fg.sum() == (matched >= 0).sum() > 0 and bg == (matched < 0).sum()


def test_score_voting_moves_a_box_toward_its_overlapping_candidates():
    candidates = {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]]),
                  "scores": torch.tensor([0.9, 0.8, 0.7, 0.5]), "labels": torch.tensor([1, 1, 1, 2])}
    out = vote(candidates, nms_thresh=0.5, detections_per_img=10)
    assert out["labels"].tolist() == [1, 1, 2] and out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.5])
    iou = 81 / 119  # boxes 0 and 1
    w0, w1 = 0.9, 0.8 * math.exp(-((1 - iou) ** 2) / 0.025)
    assert out["boxes"][0].tolist() == pytest.approx([w1 / (w0 + w1)] * 2 + [10 + w1 / (w0 + w1)] * 2, rel=1e-5)
    assert out["boxes"][1].tolist() == [50, 50, 60, 60] and out["boxes"][2].tolist() == [0, 0, 10, 10]


def _args(overrides):
    return [x for k, v in overrides.items() for x in (k, v if isinstance(v, str) else repr(v))]


def _losses(run_dir):
    return {r["iteration"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("sampling_free", [True, False])
def test_both_modes_train_resume_the_same_run_and_evaluate(tiny_dataset_overrides, tmp_path, sampling_free):
    opts = {**tiny_dataset_overrides, **PAA, "MODEL.SAMPLING_FREE_ON": sampling_free, "SOLVER.MAX_ITER": 4,
            "SOLVER.CHECKPOINT_PERIOD": 2, "MODEL.PAA.SCORE_VOTING": sampling_free, "MODEL.CLASSIFICATION_SCALE": 1.0}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(["train", "--skip-test", *_args({**opts, "OUTPUT_DIR": str(whole)})]) == 0
    assert main(["train", "--skip-test", *_args({**opts, "OUTPUT_DIR": str(resumed), "SOLVER.MAX_ITER": 2})]) == 0
    assert main(["train", *_args({**opts, "OUTPUT_DIR": str(resumed)})]) == 0
    a, b = _losses(whole), _losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for iteration in a:
        assert b[iteration] == pytest.approx(a[iteration], rel=1e-4)
    log = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert set(log[0]) >= {"loss_paa_cls", "loss_paa_giou", "loss_paa_iou", "num_pos"} and log[0]["num_pos"] > 0
    if sampling_free:  # guided: the classification loss shows the box loss's value
        assert log[0]["loss_paa_cls"] == pytest.approx(log[0]["loss_paa_giou"], rel=1e-5)
    (metrics,) = resumed.glob("inference/*/model_final/metrics.json")
    assert set(json.loads(metrics.read_text())["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
