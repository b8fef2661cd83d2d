"""Training-step time of our detectors (baseline and sampling-free) against plain torchvision, paired.

For each round, every variant runs the same pre-loaded batches (forward + backward + SGD step) in turn, so slow
drift of the machine affects all variants alike; the report is each variant's time relative to torchvision's in the
same round (median and min-max over rounds).

    python benchmarks/step_time.py --detector faster_rcnn --size 256 --batch 2 --rounds 5 --steps 4
    python benchmarks/step_time.py --detector mask_rcnn            # both R-CNNs also time OHEM (ours)
    python benchmarks/step_time.py --detector retinanet
    python benchmarks/step_time.py --detector fcos
    python benchmarks/step_time.py --detector ssd --size 192 --batch 8
    python benchmarks/step_time.py --detector atss --size 160 --batch 8
    python benchmarks/step_time.py --detector paa --size 160 --batch 8    # against our ATSS (its GMM's cost)

Cascade R-CNN has no torchvision counterpart; compare it with our Faster R-CNN by hand if needed.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import MultiScaleRoIAlign

from sampling_free.config import load_config
from sampling_free.data.build import build_datasets, build_train_loader
from sampling_free.modeling import build_anchor_generator, build_backbone, build_model

CONFIGS = {"faster_rcnn": "configs/faster_rcnn/faster_rcnn_R_50_FPN_1x.yaml",
           "fcos": "configs/fcos/fcos_R_50_FPN_1x.yaml",
           "mask_rcnn": "configs/mask_rcnn/mask_rcnn_R_50_FPN_1x.yaml",
           "retinanet": "configs/retinanet/retinanet_R_50_FPN_1x.yaml",
           # the quickstart models: SSDlite on MobileNetV2 (torchvision's SSD class around the same parts is the
           # reference), ATSS (no torchvision counterpart: ratios are to our baseline)
           "ssd": "configs/quickstart/ssdlite_mobilenet_v2_shapes.yaml",
           "atss": "configs/quickstart/atss_mobilenet_v2_shapes.yaml",
           # PAA: ATSS's detector with PAA's assignment (a Gaussian mixture per object each step): ratios to our ATSS
           "paa": "configs/quickstart/paa_mobilenet_v2_shapes.yaml"}


def torchvision_model(cfg, num_classes: int, *, training: bool = True):
    """Plain torchvision detector with the same backbone, anchors, sizes, sampling and test settings as ``cfg``
    (None for ATSS, which torchvision does not have)."""
    m = cfg.MODEL
    if m.META_ARCHITECTURE in ("ATSS", "PAA"):
        return None
    if m.META_ARCHITECTURE == "SSD":  # torchvision's SSD class (its loss: hard-negative mining) on the same parts
        parts = build_model(cfg, num_classes)
        return SSD(parts.backbone, parts.anchor_generator, (m.SSD.SIZE, m.SSD.SIZE), num_classes + 1,
                   head=parts.head, score_thresh=m.SSD.SCORE_THRESH, nms_thresh=m.SSD.NMS_THRESH,
                   detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, topk_candidates=m.SSD.TOPK_CANDIDATES)
    backbone = build_backbone(name=m.BACKBONE.NAME, weights="", norm=m.BACKBONE.NORM,
                              trainable_layers=m.BACKBONE.TRAINABLE_LAYERS, out_channels=m.FPN.OUT_CHANNELS,
                              min_level=m.FPN.MIN_LEVEL, top_block=m.FPN.TOP_BLOCK)
    anchors = build_anchor_generator(cfg, len(backbone.level_strides))
    if training:
        common = dict(min_size=cfg.INPUT.MIN_SIZE_TRAIN[0], max_size=cfg.INPUT.MAX_SIZE_TRAIN)
    else:
        common = dict(min_size=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST)
    one_stage = {"RetinaNet": (RetinaNet, m.RETINANET), "FCOS": (FCOS, m.FCOS)}
    if m.META_ARCHITECTURE in one_stage:
        cls, head = one_stage[m.META_ARCHITECTURE]
        return cls(backbone, num_classes + 1, anchor_generator=anchors, score_thresh=head.SCORE_THRESH,
                   nms_thresh=head.NMS_THRESH, topk_candidates=head.TOPK_CANDIDATES,
                   detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, **common)
    r, h = m.RPN, m.ROI_HEADS
    names = [f"p{level}" for level in range(m.FPN.MIN_LEVEL, 6)]  # torchvision's default names are "0".."3"
    pools = {"box_roi_pool": MultiScaleRoIAlign(names, 7, 2)}
    if m.MASK_ON:
        pools["mask_roi_pool"] = MultiScaleRoIAlign(names, 14, 2)
    kwargs = dict(rpn_anchor_generator=anchors, **pools, rpn_pre_nms_top_n_train=r.PRE_NMS_TOP_N_TRAIN,
                  rpn_post_nms_top_n_train=r.POST_NMS_TOP_N_TRAIN, rpn_pre_nms_top_n_test=r.PRE_NMS_TOP_N_TEST,
                  rpn_post_nms_top_n_test=r.POST_NMS_TOP_N_TEST, rpn_batch_size_per_image=r.BATCH_SIZE_PER_IMAGE,
                  box_batch_size_per_image=h.BATCH_SIZE_PER_IMAGE, box_positive_fraction=h.POSITIVE_FRACTION,
                  box_score_thresh=h.SCORE_THRESH, box_nms_thresh=h.NMS_THRESH,
                  box_detections_per_img=cfg.TEST.DETECTIONS_PER_IMG, **common)
    cls = MaskRCNN if m.MASK_ON else FasterRCNN
    return cls(backbone, num_classes + 1, **kwargs)


def time_steps(model, batches, *, dtype=None) -> float:
    """Seconds per training step (forward, backward, SGD step) over ``batches``, under autocast when ``dtype``."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    device = params[0].device
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for images, targets in batches:
        with autocast:
            losses = model(list(images), [dict(t) for t in targets])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / len(batches)


def load_batches(cfg, count: int, device):
    """``count`` training batches on ``device``, read once so every variant times the same data."""
    datasets = build_datasets(cfg.DATASETS.TRAIN, cfg, training=True, with_masks=cfg.MODEL.MASK_ON)
    stream = iter(build_train_loader(cfg, datasets))
    batches = []
    for _ in range(count):
        images, targets = next(stream)
        batches.append(([im.to(device) for im in images],
                        [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items() if k != "min_size"}
                         for t in targets]))
    return batches, datasets[0].num_classes


def build_variants(detector: str, opts, overrides: dict, num_classes: int, device) -> dict:
    """Ours (baseline, sampling-free; the R-CNNs also OHEM) and torchvision's model, same seed and settings."""
    ours = {"ours baseline": {"MODEL.SAMPLING_FREE_ON": False}, "ours sampling-free": {"MODEL.SAMPLING_FREE_ON": True}}
    if detector in ("faster_rcnn", "mask_rcnn"):
        # OHEM: every RoI through the box head without gradient, then the hardest B (the config's RoI sample
        # size, so only the extra pass differs from the random sampler) again with it
        ours["ours OHEM"] = {"MODEL.SAMPLING_FREE_ON": False, "MODEL.ROI_HEADS.SAMPLER": "ohem"}
    variants = {}
    for name, values in ours.items():
        torch.manual_seed(0)
        c = load_config(CONFIGS[detector], opts, values={**overrides, **values})
        model = build_model(c, num_classes).to(device)
        model.set_prior(1e-3)
        variants[name] = model
    torch.manual_seed(0)
    reference = torchvision_model(load_config(CONFIGS[detector], opts, values=overrides), num_classes)
    if reference is not None:
        variants["torchvision"] = reference.to(device)
    if detector == "paa":  # what the assignment costs: the same detector with ATSS's rule, focal loss
        variants["ATSS baseline"] = build_model(load_config(CONFIGS["atss"], opts, values={
            **overrides, "MODEL.SAMPLING_FREE_ON": False}), num_classes).to(device)
    return variants


def paired_times(variants: dict, batches, *, rounds: int, dtype=None) -> dict:
    """Per variant, seconds/step of each round; in a round every variant runs the same batches in turn."""
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, model in variants.items():
            time_steps(model, batches[:1], dtype=dtype)  # warm-up step, not timed
            times[name].append(time_steps(model, batches[1:], dtype=dtype))
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detector", choices=sorted(CONFIGS), default="faster_rcnn")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides for every variant, e.g. "
                   "MODEL.RPN.POST_NMS_TOP_N_TRAIN 512")
    args = p.parse_args()
    overrides = {"MODEL.BACKBONE.WEIGHTS": "", "INPUT.MIN_SIZE_TRAIN": [args.size], "INPUT.MAX_SIZE_TRAIN": args.size,
                 "DATASETS.TRAIN": ["shapes_train"], "SOLVER.IMS_PER_BATCH": args.batch,
                 "DATALOADER.NUM_WORKERS": 0, "MODEL.DEVICE": args.device, "MODEL.SSD.SIZE": args.size}
    cfg = load_config(CONFIGS[args.detector], args.opts, values=overrides)
    device = torch.device(args.device)
    batches, num_classes = load_batches(cfg, args.steps + 1, device)
    variants = build_variants(args.detector, args.opts, overrides, num_classes, device)
    times = paired_times(variants, batches, rounds=args.rounds)
    report = {"detector": args.detector, "overrides": args.opts, "size": args.size, "batch": args.batch,
              "rounds": args.rounds,
              "steps_per_round": args.steps, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "results": {}}
    print(f"{args.detector} ({CONFIGS[args.detector]}, no pretrained weights), {args.size} px, batch {args.batch}, {args.rounds} rounds x {args.steps} steps, "
          f"{torch.get_num_threads()} threads {' '.join(args.opts)}")
    reference = next(name for name in ("torchvision", "ATSS baseline", "ours baseline") if name in times)
    print(f"| variant | s/iter (median) | ratio to {reference} (median, min-max) |\n|---|---|---|")
    for name, values in times.items():
        ratios = [v / t for v, t in zip(values, times[reference])]
        report["results"][name] = {"seconds": values, "ratio": ratios}
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
