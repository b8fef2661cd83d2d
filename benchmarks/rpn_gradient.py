"""How much gradient the RPN's objectness gets from its loss, sampling-free against the samplers, on the same
weights and batches: does guided scaling at the RPN's scale starve the objectness (issue 15, 3e)?

    python benchmarks/rpn_gradient.py RUN_DIR [--images 32] [--batch 4]

Loads the run's model_final.pth and, on batches of its training images (no flip), computes the gradient of the
objectness loss with respect to the objectness logits twice: with the RPN's sampling-free loss (every valid
anchor, BCE guided to 0.5 · mean smooth-L1 × MODEL.RPN.CLASSIFICATION_SCALE) and with the baseline's (256
sampled anchors per image at <= 50 % positive, BCE mean). Reports, per batch mean, the summed absolute gradient
on positive and on negative anchors, and the number of each that gets any.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from torchvision.models.detection.rpn import concat_box_prediction_layers

from trained_run import load_trained_run


def objectness_gradients(run: str, *, images: int, batch: int) -> dict[str, dict[str, float]]:
    _, model, dataset = load_trained_run(run)
    rpn = model.rpn
    modes = {"sampling-free": dataclasses.replace(rpn.switches, no_heuristic=True, guided_loss=True),
             "samplers": dataclasses.replace(rpn.switches, no_heuristic=False, guided_loss=False)}
    totals = {m: {"grad_pos": 0.0, "grad_neg": 0.0, "pos": 0.0, "neg": 0.0} for m in modes}
    steps = 0
    for start in range(0, min(images, len(dataset)), batch):
        pairs = [dataset[k] for k in range(start, min(start + batch, images, len(dataset)))]
        with torch.no_grad():
            image_list, targets = model.transform([p[0] for p in pairs], [dict(p[1]) for p in pairs])
            features = list(model.backbone(image_list.tensors).values())
            objectness, deltas = rpn.head(features)
            anchors = rpn.anchor_generator(image_list, features)
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        labels, matched = rpn.assign(anchors, targets, image_list.image_sizes)
        regression_targets = rpn.box_coder.encode(matched, anchors)
        flat_labels = torch.cat(labels)
        for mode, switches in modes.items():
            logits = objectness.detach().clone().requires_grad_(True)
            rpn.switches = switches
            torch.manual_seed(start)  # the baseline's sampler
            loss_obj, _ = rpn.loss(logits, deltas.detach(), labels, regression_targets)
            (grad,) = torch.autograd.grad(loss_obj, logits)
            grad = grad.flatten().abs()
            t = totals[mode]
            t["grad_pos"] += float(grad[flat_labels == 1].sum())
            t["grad_neg"] += float(grad[flat_labels == 0].sum())
            t["pos"] += float(((grad > 0) & (flat_labels == 1)).sum())
            t["neg"] += float(((grad > 0) & (flat_labels == 0)).sum())
        steps += 1
    return {m: {k: v / steps for k, v in t.items()} for m, t in totals.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    print("| run | loss | sum abs grad, positives | sum abs grad, negatives | positives with a gradient | "
          "negatives with a gradient |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        for mode, t in objectness_gradients(run, images=args.images, batch=args.batch).items():
            print(f"| {run} | {mode} | {t['grad_pos']:.3g} | {t['grad_neg']:.3g} | {t['pos']:.0f} | {t['neg']:.0f} |")


if __name__ == "__main__":
    main()
