"""Where a trained RetinaNet's large objects lose: its classification scores per pyramid level and per object size,
on the test set (issue 15, 3d: the large-object AP gap of sampling-free RetinaNet).

    python benchmarks/retina_levels.py RUN_DIR [RUN_DIR ...] [--images 100]

For the first ``--images`` test images, with the model's own matcher, per FPN level:

* ``anchors`` / ``fg rate``: share of the anchors, and the share of them matched to an object (the level's π · C);
* ``objects``: share of the objects whose best-matching anchor lies there;
* ``mean p(fg)``: mean probability of the true class on the level's matched anchors; ``mean max p(bg)``: mean of the
  highest class probability on its background anchors; ``p(bg) > thr``: background anchors per image whose highest
  probability passes the model's test threshold (candidates NMS and ranking must remove).

Then per COCO size (small < 32², medium < 96², large; box area in the image's own pixels): ``best p``: mean over objects of the highest true-class
probability among their matched anchors, and ``rank``: the share of the image's background anchors scoring above
it (its rank among the image's false candidates; lower is better). A large object whose best anchor ranks below
many background anchors is what costs AP at the high-recall end.
"""
from __future__ import annotations

import argparse

import torch
from torchvision.ops import box_iou

from size_ap import size_of
from trained_run import load_trained_run


def run_stats(run: str, *, images: int):
    cfg, model, dataset = load_trained_run(run, split="test")
    thresh, _ = model.test_thresholds()
    thresh = float(torch.as_tensor(thresh).min())
    offset = model.label_offset
    sums: dict[str, torch.Tensor] = {}
    per_size = {"small": [], "medium": [], "large": []}
    names = None
    with torch.no_grad():
        for k in range(min(images, len(dataset))):
            image, target = dataset[k]
            batch, targets = model.transform([image], [dict(target)])
            features = list(model.backbone(batch.tensors).values())
            head = model.head(features)
            anchors = model.anchor_generator(batch, features)[0]
            counts = [f.shape[-2] * f.shape[-1] for f in features]
            per_location = anchors.shape[0] // sum(counts)
            level = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts) * per_location)
            names = names or [f"P{cfg.MODEL.FPN.MIN_LEVEL + i}" for i in range(len(counts))]
            probs = torch.sigmoid(head["cls_logits"][0])
            boxes, labels = targets[0]["boxes"], targets[0]["labels"]
            iou = box_iou(boxes, anchors)
            matched = model.proposal_matcher(iou) if len(boxes) else torch.full((len(anchors),), -1, dtype=torch.long)
            fg, bg = matched >= 0, matched == -1
            top_bg = probs.max(1).values
            p_true = torch.zeros(len(anchors))
            p_true[fg] = probs[fg, labels[matched[fg]] - offset]
            count = len(counts)
            add = {
                "anchors": torch.bincount(level, minlength=count).double(),
                "fg": torch.bincount(level[fg], minlength=count).double(),
                "bg": torch.bincount(level[bg], minlength=count).double(),
                "objects": torch.bincount(level[iou.argmax(1)], minlength=count).double()
                if len(boxes) else torch.zeros(count, dtype=torch.float64),
                "p_fg": torch.zeros(count, dtype=torch.float64).index_add_(0, level[fg], p_true[fg].double()),
                "p_bg": torch.zeros(count, dtype=torch.float64).index_add_(0, level[bg], top_bg[bg].double()),
                "bg_pass": torch.bincount(level[bg & (top_bg > thresh)], minlength=count).double(),
            }
            for key, value in add.items():
                sums[key] = sums.get(key, 0) + value
            background = top_bg[bg]
            original = target["boxes"]  # sizes in the image's own pixels, not the resized ones (box, not mask, area)
            area = (original[:, 2] - original[:, 0]) * (original[:, 3] - original[:, 1])
            for j in range(len(boxes)):
                mine = matched == j
                if not mine.any():
                    continue
                best = float(p_true[mine].max())
                rank = float((background > best).double().mean()) if len(background) else 0.0
                per_size[size_of(float(area[j]))].append((best, rank))
    return names, sums, per_size, min(images, len(dataset))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--images", type=int, default=100)
    args = p.parse_args()
    tables = [run_stats(run, images=args.images) + (run,) for run in args.runs]
    print("| run | level | anchors | fg rate | objects | mean p(fg) | mean max p(bg) | p(bg) > thr per image |")
    print("|---|---|---|---|---|---|---|---|")
    for names, s, _, n, run in tables:
        for i, name in enumerate(names):
            print(f"| {run} | {name} | {s['anchors'][i] / s['anchors'].sum():.1%} | "
                  f"{s['fg'][i] / s['anchors'][i]:.2e} | {s['objects'][i] / s['objects'].sum().clamp(min=1):.1%} | "
                  f"{s['p_fg'][i] / max(s['fg'][i], 1):.3f} | {s['p_bg'][i] / max(s['bg'][i], 1):.2e} | "
                  f"{s['bg_pass'][i] / n:.1f} |")
    print()
    print("| run | size | objects | best p | rank among background |")
    print("|---|---|---|---|---|")
    for _, _, per_size, _, run in tables:
        for name, values in per_size.items():
            if values:
                best, rank = torch.tensor(values).mean(0).tolist()
                print(f"| {run} | {name} | {len(values)} | {best:.3f} | {rank:.2e} |")


if __name__ == "__main__":
    main()
