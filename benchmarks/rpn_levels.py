"""Where a trained R-CNN's RPN proposals come from, per pyramid level, and how its objectness is calibrated there:
the question whether one global π lets coarse levels lose the cross-level top-N (issue 15, 3b).

    python benchmarks/rpn_levels.py RUN_DIR [RUN_DIR ...] [--images 48]

For the first ``--images`` training images (no flip), with the RPN in training mode (its training-time NMS and
POST_NMS_TOP_N_TRAIN), per FPN level:

* ``anchors``: share of the valid anchors; ``fg rate``: share of them the RPN's matcher makes foreground (the
  per-level π a per-level bias would use); ``objects``: share of the objects whose best-matching anchor lies there;
* ``proposals``: share of the final proposals drawn from the level; ``on objects``: of the proposals with IoU >= 0.5
  to an object, the share from the level;
* ``mean p(fg)`` / ``mean p(bg)``: mean sigmoid objectness of the level's foreground / background anchors
  (calibrated when mean p(bg) is near 0 and mean p(fg) well above it on every level alike).
"""
from __future__ import annotations

import argparse

import torch
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import box_iou

from sampling_free.modeling import inside_image

from trained_run import load_trained_run


def level_stats(run: str, *, images: int) -> tuple[list[str], dict[str, torch.Tensor]]:
    cfg, model, dataset = load_trained_run(run)
    rpn = model.rpn
    names = None
    sums = {}
    with torch.no_grad():
        for k in range(min(images, len(dataset))):
            image, target = dataset[k]
            batch, targets = model.transform([image], [dict(target)])
            features = list(model.backbone(batch.tensors).values())
            objectness, deltas = rpn.head(features)
            anchors = rpn.anchor_generator(batch, features)[0]
            per_level = [o[0].numel() for o in objectness]
            level = torch.repeat_interleave(torch.arange(len(per_level)), torch.tensor(per_level))
            names = names or [f"P{cfg.MODEL.FPN.MIN_LEVEL + i}" for i in range(len(per_level))]
            flat_obj, flat_deltas = concat_box_prediction_layers(objectness, deltas)
            decoded = rpn.box_coder.decode(flat_deltas, [anchors]).view(1, -1, 4)
            proposals, _ = rpn.filter_proposals(decoded, flat_obj, batch.image_sizes, per_level)
            proposals = proposals[0]
            boxes = targets[0]["boxes"]
            valid = inside_image(anchors, batch.image_sizes[0], rpn.straddle_thresh)
            score = torch.sigmoid(flat_obj.flatten())
            fg = torch.zeros_like(valid)
            bg = valid.clone()
            best_level = torch.zeros(0, dtype=torch.long)
            if len(boxes):
                matched = rpn.proposal_matcher(box_iou(boxes, anchors))
                fg, bg = (matched >= 0) & valid, (matched == -1) & valid
                best_level = level[box_iou(boxes, anchors).argmax(1)]
            # each final proposal is a clipped decoded anchor: find its anchor by exact coordinates
            clipped = decoded[0].clone()
            h, w = batch.image_sizes[0]
            clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
            clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
            index = {tuple(b): i for i, b in enumerate(torch.round(clipped * 1000).long().tolist())}
            source = torch.tensor([index[tuple(b)] for b in torch.round(proposals * 1000).long().tolist()])
            proposal_level = level[source]
            on = box_iou(proposals, boxes).max(1).values >= 0.5 if len(boxes) else torch.zeros(len(proposals),
                                                                                                 dtype=torch.bool)
            count = len(per_level)
            add = {
                "anchors": torch.bincount(level[valid], minlength=count).double(),
                "fg": torch.bincount(level[fg], minlength=count).double(),
                "objects": torch.bincount(best_level, minlength=count).double(),
                "proposals": torch.bincount(proposal_level, minlength=count).double(),
                "on_objects": torch.bincount(proposal_level[on], minlength=count).double(),
                "p_fg": torch.zeros(count, dtype=torch.float64).index_add_(0, level[fg], score[fg].double()),
                "p_bg": torch.zeros(count, dtype=torch.float64).index_add_(0, level[bg], score[bg].double()),
                "bg": torch.bincount(level[bg], minlength=count).double(),
            }
            for key, value in add.items():
                sums[key] = sums.get(key, 0) + value
    return names, sums


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--images", type=int, default=48)
    args = p.parse_args()
    print("| run | level | anchors | fg rate | objects | proposals | on objects | mean p(fg) | mean p(bg) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        names, s = level_stats(run, images=args.images)

        def share(key):
            return s[key] / s[key].sum().clamp(min=1)

        for i, name in enumerate(names):
            print(f"| {run} | {name} | {share('anchors')[i]:.1%} | {s['fg'][i] / max(s['anchors'][i], 1):.2e} | "
                  f"{share('objects')[i]:.1%} | {share('proposals')[i]:.1%} | {share('on_objects')[i]:.1%} | "
                  f"{s['p_fg'][i] / max(s['fg'][i], 1):.3f} | {s['p_bg'][i] / max(s['bg'][i], 1):.2e} |")


if __name__ == "__main__":
    main()
