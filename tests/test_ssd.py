"""SSD / SSDlite: the softmax bias from π, the loss over every default box against a hand computation, π counted
with SSD's own default boxes and matcher, and a tiny run through the command line."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from sampling_free.cli import main
from sampling_free.modeling import build_model
from sampling_free.modeling.ssd import softmax_prior_bias
from tiny_models import tiny_config


def tiny_ssd(**extra):
    torch.manual_seed(0)
    return build_model(tiny_config("ssd", **extra), 3)


def test_the_softmax_starts_at_the_measured_frequencies():
    """With the classification weights at zero the logits are the biases: softmax (1 - C·π, π, π, π)."""
    background, foreground = softmax_prior_bias(2e-3, 3)
    assert (background, foreground) == pytest.approx((math.log(1 - 6e-3), math.log(2e-3)))
    model = tiny_ssd(**{"MODEL.SAMPLING_FREE.BIAS_INIT": True})
    model.set_prior(2e-3)
    for block in model.head.classification_head.module_list:
        torch.nn.init.zeros_(block[-1].weight)
    model.eval()
    with torch.no_grad():
        images, _ = model.transform([torch.rand(3, 80, 100)])
        logits = model.head(list(model.backbone(images.tensors).values()))["cls_logits"]
    probs = F.softmax(logits, dim=-1).reshape(-1, 4)
    assert torch.allclose(probs, torch.tensor([1 - 6e-3, 2e-3, 2e-3, 2e-3]).expand_as(probs), atol=1e-6)
    assert model.describe_prior()["score_threshold"] == pytest.approx(6e-3)  # π · C


def test_sampling_free_loss_is_cross_entropy_over_every_default_box_by_hand():
    """CE summed over every box (no mining) and smooth-L1 (β 1) over the positives, both ÷ #positives; the CE
    guided-scaled to the box loss. Checked on head outputs and matches written out here."""
    model = tiny_ssd(**{"MODEL.SAMPLING_FREE_ON": True, "MODEL.SAMPLING_FREE.GUIDED_LOSS": False})
    g = torch.Generator().manual_seed(0)
    anchors = [torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20]])]
    outputs = {"cls_logits": torch.randn(1, 4, 4, generator=g), "bbox_regression": torch.randn(1, 4, 4, generator=g)}
    targets = [{"boxes": torch.tensor([[1.0, 1, 9, 11], [11, 10, 19, 19]]), "labels": torch.tensor([2, 3])}]
    matched = [torch.tensor([0, -1, -1, 1])]
    losses = model.compute_loss(targets, outputs, anchors, matched)
    cls = 0.0
    for a, label in enumerate([2, 0, 0, 3]):
        logits = outputs["cls_logits"][0, a]
        cls += -(logits[label] - torch.logsumexp(logits, 0)).item()
    reg = 0.0
    for a, box in ((0, 0), (3, 1)):
        target = model.box_coder.encode_single(targets[0]["boxes"][box:box + 1], anchors[0][a:a + 1])[0]
        d = (outputs["bbox_regression"][0, a] - target).abs()
        reg += torch.where(d < 1, 0.5 * d**2, d - 0.5).sum().item()
    assert losses["classification"].item() == pytest.approx(cls / 2, rel=1e-5)
    assert losses["bbox_regression"].item() == pytest.approx(reg / 2, rel=1e-5)
    guided = tiny_ssd(**{"MODEL.SAMPLING_FREE_ON": True}).compute_loss(targets, outputs, anchors, matched)
    assert guided["classification"].item() == pytest.approx(reg / 2, rel=1e-5)  # guided: the value of the box loss


def test_the_prior_counts_ssds_default_boxes_with_its_matcher():
    """Against a count made here with torchvision's pieces: the model's fixed-size transform, its default boxes on
    the real feature maps, its SSDMatcher."""
    from sampling_free.prior import count_dataset, setting_from_transform

    model = tiny_ssd().eval()
    g = torch.Generator().manual_seed(4)
    images = []
    for h, w in ((80, 120), (110, 90)):
        x1, y1 = torch.rand(3, generator=g) * w / 2, torch.rand(3, generator=g) * h / 2
        boxes = torch.stack([x1, y1, x1 + 10 + 30 * torch.rand(3, generator=g), y1 + 10 + 30 * torch.rand(3, generator=g)], 1)
        images.append(((h, w), boxes))
    fg = bg = 0
    for (h, w), boxes in images:
        image_list, targets = model.transform([torch.zeros(3, h, w)], [{"boxes": boxes, "labels": torch.ones(3, dtype=torch.int64)}])
        anchors = model.anchor_generator(image_list, list(model.backbone(image_list.tensors).values()))[0]
        matched = model.proposal_matcher(box_iou(targets[0]["boxes"], anchors))
        fg, bg = fg + int((matched >= 0).sum()), bg + int((matched == -1).sum())

    class Data:
        name = "stub"

        def __len__(self):
            return len(images)

        def image_size(self, i):
            return images[i][0]

        def annotations(self, i):
            return images[i][1].numpy(), torch.tensor([1, 2, 3]).numpy()

    setting = setting_from_transform(model.transform)
    assert setting.fixed_size == (96, 96)
    counts = count_dataset([Data()], model.prior_counter(), min_sizes=setting.min_sizes, max_size=setting.max_size,
                           size_divisibility=setting.size_divisibility, hflip_prob=0.0, fixed_size=setting.fixed_size)
    assert counts["foreground_per_class"].sum() == pytest.approx(fg) and counts["background"] == pytest.approx(bg)


@pytest.mark.parametrize("sampling_free", [True, False])
def test_a_tiny_ssd_trains_and_evaluates(tiny_dataset_overrides, tmp_path, sampling_free):
    opts = {**tiny_dataset_overrides, "MODEL.META_ARCHITECTURE": "SSD", "MODEL.BACKBONE.NAME": "mobilenet_v2",
            "MODEL.SSD.SIZE": 96, "MODEL.SSD.EXTRA_CHANNELS": [64, 32, 32, 16], "MODEL.SSD.MIN_RATIO": 0.1,
            "MODEL.SAMPLING_FREE_ON": sampling_free, "SOLVER.MAX_ITER": 2, "OUTPUT_DIR": str(tmp_path)}
    assert main(["train", *[x for k, v in opts.items() for x in (k, v if isinstance(v, str) else repr(v))]]) == 0
    prior = json.loads((tmp_path / "prior.json").read_text())
    assert prior["depends_on"]["rule"]["rule"] == "ssd" and prior["depends_on"]["fixed_size"] == [96, 96]
    assert (prior["bias"] is not None) == sampling_free
    (metrics,) = tmp_path.glob("inference/*/model_final/metrics.json")
    assert set(json.loads(metrics.read_text())["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
