"""ATSS's assignment against a computation written out box by box, and a tiny run through the command line."""
import json
import statistics

import pytest
import torch

from sampling_free.cli import main
from sampling_free.modeling.atss import atss_assign


def reference_assign(anchors, boxes, per_level, k):
    """ATSS, one object at a time, in plain Python: per level the k anchors with the nearest centres, the IoU
    threshold mean + (sample) standard deviation over all candidates, centre strictly inside, max IoU wins."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    anchors, boxes = anchors.tolist(), boxes.tolist()
    best = [(-1.0, -1)] * len(anchors)
    for g, box in enumerate(boxes):
        bx, by = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        candidates, start = [], 0
        for n in per_level:
            level = range(start, start + n)
            dist = {a: ((anchors[a][0] + anchors[a][2]) / 2 - bx) ** 2 + ((anchors[a][1] + anchors[a][3]) / 2 - by) ** 2
                    for a in level}
            candidates += sorted(level, key=lambda a: (dist[a], a))[:k]
            start += n
        ious = [iou(anchors[a], box) for a in candidates]
        threshold = statistics.mean(ious) + statistics.stdev(ious)
        for a, value in zip(candidates, ious):
            cx, cy = (anchors[a][0] + anchors[a][2]) / 2, (anchors[a][1] + anchors[a][3]) / 2
            inside = box[0] < cx < box[2] and box[1] < cy < box[3]
            if value >= threshold and inside and value > best[a][0]:
                best[a] = (value, g)
    return [g for _, g in best]


def grid(size, stride, extent):
    centers = torch.arange(stride / 2, extent, stride)
    ys, xs = torch.meshgrid(centers, centers, indexing="ij")
    c = torch.stack([xs.flatten(), ys.flatten()], 1)
    return torch.cat([c - size / 2, c + size / 2], 1)


def test_a_hand_worked_case():
    """One level, 4 x 4 anchors of 16 px at stride 16 on 64 px; one object [8, 8, 40, 30], k = 4. Nearest centres:
    (24, 24) d=5.1, (24, 8) d=11.7, (8, 24) d=17, (40, 24) d=17 -- ties broken by index: (8, 24) is anchor 4,
    (40, 24) anchor 6 -> candidates 5, 1, 4, 6. IoUs with the object (area 704): anchor 5 [16,16,32,32] 224/736,
    anchor 1 [16,0,32,16] 128/832, anchor 4 [0,16,16,32] 112/848, anchor 6 [32,16,48,32] 112/848. Mean 0.184,
    sample std 0.088: threshold 0.272; only anchor 5 (0.304) passes, and its centre is inside."""
    anchors = grid(16, 16, 64)
    boxes = torch.tensor([[8.0, 8, 40, 30]])
    got = atss_assign(anchors, boxes, [16], 4)
    assert got.tolist() == [-1] * 5 + [0] + [-1] * 10
    assert got.tolist() == reference_assign(anchors, boxes, [16], 4)


@pytest.mark.parametrize("seed", range(5))
def test_random_cases_equal_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.cat([grid(16, 8, 64), grid(32, 16, 64), grid(64, 32, 64)])
    x1, y1 = torch.rand(4, generator=g) * 40, torch.rand(4, generator=g) * 40
    boxes = torch.stack([x1, y1, x1 + 4 + 30 * torch.rand(4, generator=g), y1 + 4 + 30 * torch.rand(4, generator=g)], 1)
    assert atss_assign(anchors, boxes, [64, 16, 4], 9).tolist() == reference_assign(anchors, boxes, [64, 16, 4], 9)


@pytest.mark.parametrize("sampling_free", [True, False])
def test_a_tiny_atss_trains_and_evaluates(tiny_dataset_overrides, tmp_path, sampling_free):
    opts = {**tiny_dataset_overrides, "MODEL.META_ARCHITECTURE": "ATSS", "MODEL.FCOS.NUM_CONVS": 1,
            "MODEL.FPN.OUT_CHANNELS": 64, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [1.0],
            "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE": 1,
            "MODEL.SAMPLING_FREE_ON": sampling_free, "SOLVER.MAX_ITER": 2, "OUTPUT_DIR": str(tmp_path)}
    assert main(["train", *[x for k, v in opts.items() for x in (k, v if isinstance(v, str) else repr(v))]]) == 0
    prior = json.loads((tmp_path / "prior.json").read_text())
    assert prior["depends_on"]["rule"]["rule"] == "atss_assign" and prior["depends_on"]["rule"]["parameter"] == 9
    (metrics,) = tmp_path.glob("inference/*/model_final/metrics.json")
    assert set(json.loads(metrics.read_text())["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_the_box_branch_can_move_a_box_left_up_and_shrink_it():
    """ATSS regresses anchor deltas, which are negative for a box left of, above or smaller than its anchor;
    FCOS's box branch ends in a ReLU (distances), which would clamp them to 0."""
    from sampling_free.modeling.atss import atss_head

    head = atss_head(32, 3, num_convs=1)
    torch.nn.init.zeros_(head.regression_head.bbox_reg.weight)
    torch.nn.init.constant_(head.regression_head.bbox_reg.bias, -0.5)
    features = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 4, 4)]
    deltas, centerness = head.regression_head(features)
    assert deltas.shape == (2, 80, 4) and centerness.shape == (2, 80, 1)
    assert torch.equal(deltas, torch.full_like(deltas, -0.5))
    # the layout is torchvision's: location-major over each level, levels in order
    torch.nn.init.normal_(head.regression_head.bbox_reg.weight)
    deltas, _ = head.regression_head(features)
    direct = head.regression_head.bbox_reg(head.regression_head.conv(features[1]))  # (2, 4, 4, 4)
    assert torch.allclose(deltas[:, 64 + 4 * 1 + 2], direct[:, :, 1, 2], atol=1e-6)
