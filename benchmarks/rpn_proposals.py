"""How many of a trained R-CNN's training-time RPN proposals lie on an object (IoU >= 0.5), per run folder: the RoI
and mask heads learn only from those. Written to compare the proposals of heuristic and sampling-free RPNs.

    python benchmarks/rpn_proposals.py RUN_DIR [RUN_DIR ...] [--images 48] [--large 0.3]

Uses each run's config and model_final.pth, the first ``--images`` training images (no flip), the RPN in training
mode (POST_NMS_TOP_N_TRAIN proposals per image). "Large": objects covering more than ``--large`` of the input.
Also the share of proposals, and of objects, wider than 64 px (square root of the area, at the input scale).
"""
from __future__ import annotations

import argparse

import torch
from torchvision.ops import box_iou

from trained_run import load_trained_run


def proposal_counts(run: str, *, images: int, large: float) -> dict:
    _, model, dataset = load_trained_run(run)
    counts = {"images": 0, "proposals": 0, "on_object": 0, "objects": 0, "on_large": 0, "large_objects": 0,
              "wide_proposals": 0, "wide_objects": 0}
    with torch.no_grad():
        for k in range(min(images, len(dataset))):
            image, target = dataset[k]
            batch, targets = model.transform([image], [dict(target)])
            proposals = model.rpn(batch, model.backbone(batch.tensors), targets)[0][0]
            boxes = targets[0]["boxes"]
            if len(boxes) == 0:
                continue
            best = box_iou(proposals, boxes).max(1)
            on = best.values >= 0.5
            area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
            is_large = area > large * batch.tensors.shape[-1] * batch.tensors.shape[-2]
            counts["images"] += 1
            counts["proposals"] += len(proposals)
            counts["on_object"] += int(on.sum())
            counts["objects"] += len(boxes)
            counts["on_large"] += int((on & is_large[best.indices]).sum())
            counts["large_objects"] += int(is_large.sum())
            counts["wide_proposals"] += int(((proposals[:, 2:] - proposals[:, :2]).prod(1).sqrt() > 64).sum())
            counts["wide_objects"] += int((area.sqrt() > 64).sum())
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--large", type=float, default=0.3)
    args = p.parse_args()
    print("| run | images | proposals/image | on an object (IoU >= 0.5) | objects | on a large object | large objects | "
          "proposals > 64 px | objects > 64 px |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        c = proposal_counts(run, images=args.images, large=args.large)
        print(f"| {run} | {c['images']} | {c['proposals'] / max(c['images'], 1):.0f} | {c['on_object']} | "
              f"{c['objects']} | {c['on_large']} | {c['large_objects']} | "
              f"{c['wide_proposals'] / max(c['proposals'], 1):.1%} | {c['wide_objects'] / max(c['objects'], 1):.1%} |")


if __name__ == "__main__":
    main()
