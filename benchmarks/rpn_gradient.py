"""How much gradient the RPN's objectness gets from its loss, sampling-free against the samplers, on the same
weights and batches: does guided scaling at the RPN's scale starve the objectness (issue 15, 3e)?

    python benchmarks/rpn_gradient.py RUN_DIR [--images 32] [--batch 4] [--weights model_0000100.pth ...]

Loads the run's model_final.pth and, on batches of its training images (no flip), computes the gradient of the
objectness loss with respect to the objectness logits twice: with the RPN's sampling-free loss (every valid
anchor, BCE guided to 0.5 · mean smooth-L1 × MODEL.RPN.CLASSIFICATION_SCALE) and with the baseline's (256
sampled anchors per image at <= 50 % positive, BCE mean), and a third time with the sampling-free loss under
gradient guidance (``MODEL.SAMPLING_FREE.GUIDANCE gradient``: the objectness pulled with the RPN box loss's pull
on its deltas). Reports, per batch mean, the summed absolute gradient on positive and on negative anchors, and the
number of each that gets any; with several ``--weights``, at each of those checkpoints.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
from torchvision.models.detection.rpn import concat_box_prediction_layers

from trained_run import load_trained_run


def objectness_gradients(run: str, *, images: int, batch: int,
                         weights: str = "model_final.pth") -> dict[str, dict[str, float]]:
    _, model, dataset = load_trained_run(run, weights=weights)
    rpn = model.rpn
    free = dataclasses.replace(rpn.switches, no_heuristic=True, guided_loss=True, guidance="loss")
    modes = {"sampling-free": free, "sampling-free, gradient guidance": dataclasses.replace(free, guidance="gradient"),
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
            box = deltas.detach().clone().requires_grad_(True)  # gradient guidance weighs by the box loss's pull
            loss_obj, _ = rpn.loss(logits, box, labels, regression_targets)
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
    p.add_argument("--weights", nargs="+", default=["model_final.pth"], help="checkpoints of each run to read")
    args = p.parse_args()
    print("| run | weights | loss | sum abs grad, positives | sum abs grad, negatives | positives with a gradient | "
          "negatives with a gradient |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        for weights in args.weights:
            found = objectness_gradients(run, images=args.images, batch=args.batch, weights=weights)
            for mode, t in found.items():
                print(f"| {run} | {weights} | {mode} | {t['grad_pos']:.3g} | {t['grad_neg']:.3g} | {t['pos']:.0f} | "
                      f"{t['neg']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
