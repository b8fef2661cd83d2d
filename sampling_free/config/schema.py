"""Every configuration key, its default, type and meaning.

Key names follow maskrcnn-benchmark (and so the original sampling-free code) where one exists. The tree is plain
data: ``Key`` leaves inside nested dicts. ``sampling_free.config.loader`` validates files and overrides against it,
and ``docs/config_reference.md`` is generated from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    """One configuration leaf.

    ``kind`` is one of bool/int/float/str/list; ``item`` is the element kind of a list (``"list"`` for a list of
    lists of ints, as anchor sizes are); ``nullable`` keys accept ``null`` meaning "derive it"."""

    default: Any
    help: str
    kind: str
    item: str | None = None
    nullable: bool = False
    choices: tuple | None = None


def _b(default, help, nullable=False):
    return Key(default, help, "bool", nullable=nullable)


def _i(default, help, nullable=False, choices=None):
    return Key(default, help, "int", nullable=nullable, choices=choices)


def _f(default, help, nullable=False):
    return Key(default, help, "float", nullable=nullable)


def _s(default, help, choices=None):
    return Key(default, help, "str", choices=choices)


def _l(default, help, item):
    return Key(default, help, "list", item=item)


DETECTORS = ("RetinaNet", "GeneralizedRCNN", "FCOS", "CascadeRCNN", "SSD", "ATSS", "PAA")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")

SCHEMA: dict = {
    "MODEL": {
        "META_ARCHITECTURE": _s("RetinaNet", "Detector family: RetinaNet, FCOS, GeneralizedRCNN (Faster R-CNN; "
                                "Mask R-CNN with MASK_ON), CascadeRCNN, SSD, ATSS or PAA.", choices=DETECTORS),
        "MASK_ON": _b(False, "GeneralizedRCNN / CascadeRCNN: add the mask head."),
        "DEVICE": _s("cpu", "Torch device: cpu, cuda, cuda:1, ..."),
        "WEIGHT": _s("", "Whole-detector weights to initialise or fine-tune from: our checkpoint or a "
                      "torchvision detector state dict; heads of another shape stay freshly initialised."),
        "NUM_CLASSES": _i(0, "Foreground classes. 0: taken from the first training dataset."),
        "SAMPLING_FREE_ON": _b(False, "Master switch: every component below defaults to this value."),
        "CLASSIFICATION_SCALE": _f(
            None, "Guided-scaling factor of the classification loss. null: 1.0 for one-stage heads, 2.0 for "
            "R-CNN box heads (every Cascade stage).", nullable=True
        ),
        "SAMPLING_FREE": {
            "NO_HEURISTIC": _b(None, "Drop the sampling heuristic: focal loss -> plain BCE (RetinaNet, "
                               "FCOS); RPN/RoI samplers -> every anchor/RoI (R-CNNs). null: follow SAMPLING_FREE_ON.", nullable=True),
            "BIAS_INIT": _b(None, "Initialise the classification bias from the estimated prior. "
                            "null: follow SAMPLING_FREE_ON.", nullable=True),
            "GUIDED_LOSS": _b(None, "Rescale the classification loss to the regression loss every step. "
                              "null: follow SAMPLING_FREE_ON.", nullable=True),
            "ADAPTIVE_THRESHOLD": _b(None, "Test score threshold = pi * C (and NMS_THRESH below) instead of the "
                                     "fixed one. null: follow SAMPLING_FREE_ON.", nullable=True),
            "PRIOR": _f(None, "Use this pi instead of estimating it from the training annotations.", nullable=True),
            "NMS_THRESH": _f(0.55, "RetinaNet NMS IoU with the adaptive threshold (the original's 0.55)."),
            "ROI_SCORE_THRESH": _f(1e-4, "R-CNN box-head test score threshold with ADAPTIVE_THRESHOLD on (the "
                                   "original's fixed 1e-4)."),
            "GUIDANCE": _s("loss", "Guided scaling's ratio: 'loss', L_reg / L_cls (the paper); 'gradient', the ratio "
                           "of the gradient mass each loss puts on its head outputs (sum of |dL_reg/d box outputs| "
                           "over sum of |dL_cls/d logits|), so that the classification pull does not depend on the "
                           "box loss's form or on how far the boxes have converged. Beyond the paper; an experiment "
                           "(issue 'No knob to tune'), too strong at scale 1 on RetinaNet and Faster R-CNN "
                           "(docs/results.md); not with GUIDED_WARMUP_ITERS.", choices=("loss", "gradient")),
            "SYNC_GUIDED_RATIO": _b(False, "Multi-process training: one guided-scaling ratio per step from the losses "
                                    "averaged over processes, instead of one per process (the original)."),
            "GUIDED_WARMUP_ITERS": _i(0, "Guided scaling as the original's journal code: the ratio L_reg / L_cls is "
                                      "taken every step for this many steps, then frozen at its mean over the "
                                      "second half of them (and over processes). 0: every step (the paper)."),
            "RPN": _b(None, "R-CNNs: SAMPLING_FREE_ON for the RPN alone (every component key still applies). null: "
                      "follow SAMPLING_FREE_ON. With ROI_HEADS, trains a heuristic RPN under sampling-free RoI heads, "
                      "or the reverse.", nullable=True),
            "ROI_HEADS": _b(None, "R-CNNs: SAMPLING_FREE_ON for the RoI heads alone. null: follow SAMPLING_FREE_ON.",
                            nullable=True),
            "IOU_TARGET": _b(False, "RetinaNet with plain BCE (NO_HEURISTIC): a positive anchor's target for its class is "
                             "the IoU of its predicted box with its object (no gradient through it), not 1, so scores "
                             "rank localisation and stop saturating near 1 (GFL's quality target without the focal "
                             "term). Beyond the paper; an experiment (docs/results.md)."),
            "PER_CLASS_PRIOR": _b(False, "One-stage detectors: a prior per class, pi_c = N_fg,c / (N_fg + N_bg), for "
                                  "each class's bias and test threshold (C * pi_c), instead of one pi shared by all "
                                  "classes. Beyond the paper: for long-tailed data."),
            "LEARNED_LOSS_WEIGHTS": _b(False, "With GUIDED_LOSS: every loss term L_i weighted by a learned sigma_i as "
                                       "L_i / (2 sigma_i^2), plus sum log sigma_i (the journal code's uncertainty "
                                       "weighting)."),
            "CLIP_GRAD_NORM": _f(0.0, "Clip the gradient's global norm to this value in runs whose guided loss is on "
                                 "(R-CNNs: the RoI heads'), leaving the heuristic baseline untouched (0: off). "
                                 "SOLVER.CLIP_GRAD_NORM, when set, applies to every run instead. The R-CNN box head's "
                                 "guided gradient, scale * L_reg * grad log L_cls, can blow up in the LR warm-up "
                                 "(docs/results.md); the Faster/Mask R-CNN quickstarts set 5.0."),
            "PRIOR_IMAGES": _i(0, "Estimate pi on this many training images, a fixed random subset, with a jackknife "
                               "standard error in prior.json (0: every image, exact). pi is a ratio of sums over "
                               "images, so a sample pins it closely in a fraction of the time (docs/results.md)."),
            "PRIOR_CACHE_DIR": _s("", "Where estimated priors are cached. Empty: $SAMPLING_FREE_CACHE or "
                                  "~/.cache/sampling-free/priors."),
        },
        "BACKBONE": {
            "NAME": _s("resnet50", "Backbone network (all with an FPN).", choices=BACKBONES),
            "WEIGHTS": _s("", "ImageNet weights: a torchvision weights name such as ResNet50_Weights.IMAGENET1K_V1 "
                          "(downloaded by torchvision unless already on disk) or a path to a state-dict file. "
                          "Empty: random initialisation."),
            "TRAINABLE_LAYERS": _i(3, "Backbone stages trained (counted from the top, 0-5); the rest are frozen."),
            "NORM": _s("auto", "Backbone normalisation. auto: FrozenBN with pretrained weights, BN without.",
                       choices=("auto", "FrozenBN", "BN")),
        },
        "FPN": {
            "OUT_CHANNELS": _i(256, "Channels of every FPN level and of the heads."),
            "MIN_LEVEL": _i(3, "Finest pyramid level (stride 2**MIN_LEVEL).", choices=(2, 3, 4, 5)),
            "TOP_BLOCK": _s("p6p7", "Levels above P5: p6p7 (RetinaNet: two stride-2 convs from C5, the original), "
                            "p6p7_from_p5 (from P5, torchvision's RetinaNet and FCOS) or maxpool (P6 only).",
                            choices=("p6p7", "p6p7_from_p5", "maxpool")),
        },
        "ANCHOR_GENERATOR": {
            "SIZES": _l([[32], [64], [128], [256], [512]], "Base anchor size per pyramid level (one list per level).",
                        item="list"),
            "SCALES_PER_OCTAVE": _i(3, "Anchor scales per level: size * 2**(i / SCALES_PER_OCTAVE)."),
            "ASPECT_RATIOS": _l([0.5, 1.0, 2.0], "Anchor height/width ratios at every location.", item="float"),
        },
        "RETINANET": {
            "NUM_CONVS": _i(4, "3x3 conv layers in each head tower."),
            "HEAD_NORM": _s("", "Normalisation in the head towers: '' (none, the original) or GN (32 groups, "
                            "torchvision's RetinaNet v2).", choices=("", "GN")),
            "FG_IOU_THRESHOLD": _f(0.5, "Anchors with IoU >= this are foreground (plus low-quality best matches)."),
            "BG_IOU_THRESHOLD": _f(0.4, "Anchors with IoU < this are background; in between they are ignored."),
            "PRIOR_PROB": _f(0.01, "Baseline classification-bias prior (focal loss paper)."),
            "FOCAL_LOSS_ALPHA": _f(0.25, "Focal loss alpha (baseline)."),
            "FOCAL_LOSS_GAMMA": _f(2.0, "Focal loss gamma (baseline)."),
            "SMOOTH_L1_BETA": _f(0.11, "Box regression smooth-L1 beta; the loss is summed and divided by 4 x #pos."),
            "BBOX_REG_WEIGHTS": _l([10.0, 10.0, 5.0, 5.0], "Box coder weights (the original's; torchvision's "
                                   "RetinaNet uses 1, 1, 1, 1).", item="float"),
            "LOSS_STYLE": _s("original", "original: maskrcnn-benchmark's normalisation (classification / (#pos + "
                             "#images), smooth-L1 / (4 #pos), over the batch); torchvision: torchvision's (each "
                             "image / max(1, #pos), averaged over images, box loss BBOX_REG_LOSS).",
                             choices=("original", "torchvision")),
            "BBOX_REG_LOSS": _s("smooth_l1", "Box loss with LOSS_STYLE torchvision: l1 (torchvision's RetinaNet), "
                                "giou (its v2), smooth_l1, diou or ciou.",
                                choices=("smooth_l1", "l1", "giou", "diou", "ciou")),
            "BACKGROUND_COLUMN": _b(False, "Keep a classification column 0 that is never a class, as torchvision's "
                                    "models count a background class: torchvision RetinaNet weights then load "
                                    "unchanged (MODEL.WEIGHT)."),
            "SCORE_THRESH": _f(0.05, "Baseline test score threshold."),
            "NMS_THRESH": _f(0.5, "Baseline per-class NMS IoU at test time."),
            "TOPK_CANDIDATES": _i(1000, "Candidates kept per level before NMS at test time."),
        },
        "FCOS": {
            "NUM_CONVS": _i(4, "3x3 conv layers (with GroupNorm) in each head tower."),
            "CENTER_SAMPLING_RADIUS": _f(1.5, "A location is foreground only within this many strides of the box "
                                         "centre."),
            "PRIOR_PROB": _f(0.01, "Baseline classification-bias prior."),
            "FOCAL_LOSS_ALPHA": _f(0.25, "Focal loss alpha (baseline)."),
            "FOCAL_LOSS_GAMMA": _f(2.0, "Focal loss gamma (baseline)."),
            "SCORE_THRESH": _f(0.05, "Baseline test threshold on the classification probability."),
            "NMS_THRESH": _f(0.6, "Per-class NMS IoU at test time."),
            "TOPK_CANDIDATES": _i(1000, "Candidates kept per level before NMS at test time."),
            "GUIDED_TARGET": _s("giou", "Sampling-free: the regression side the classification loss is scaled to.",
                                choices=("giou", "giou_centerness")),
            "THRESHOLD_ON": _s("classification", "What the baseline test threshold applies to: the classification "
                               "probability (the FCOS paper) or the combined sqrt(cls x centerness) score "
                               "(torchvision). The adaptive threshold always applies to the classification "
                               "probability.", choices=("classification", "combined")),
            "BACKGROUND_COLUMN": _b(False, "Keep a classification column 0 that is never a class, as torchvision's "
                                    "FCOS counts a background class."),
        },
        "ATSS": {
            "TOPK": _i(9, "Candidates per pyramid level and object (nearest centres); ATSS's head and losses are "
                       "MODEL.FCOS's."),
        },
        "PAA": {
            "TOPK": _i(9, "Candidates per pyramid level and object that PAA's Gaussian mixture splits: the anchors of "
                       "lowest loss among those the IoU matcher (0.1) gives the object. Head and focal loss: MODEL.FCOS's."),
            "BOX_WEIGHT": _f(1.3, "Weight of the IoU-weighted GIoU loss (the paper's 1.3); the anchor score the mixture "
                             "is fitted to adds the GIoU loss unweighted, as the authors' code."),
            "IOU_WEIGHT": _f(0.5, "Weight of the IoU-prediction BCE (the paper's 0.5)."),
            "SCORE_VOTING": _b(False, "At test: each kept box becomes the score- and IoU-weighted average of the "
                               "candidates overlapping it (on in the authors' COCO config; off in the quickstart)."),
        },
        "SSD": {
            "SIZE": _i(320, "Every image is resized to SIZE x SIZE (SSD's fixed input)."),
            "IOU_THRESHOLD": _f(0.5, "Default boxes with IoU >= this are foreground, plus each object's best box."),
            "NEG_POS_RATIO": _f(3.0, "Baseline: hard-negative mining keeps this many negatives per positive."),
            "ASPECT_RATIOS": _l([2, 3], "Default-box aspect ratios (each r adds r:1 and 1:r) on every feature map.",
                                item="int"),
            "MIN_RATIO": _f(0.2, "Smallest default-box scale, as a fraction of SIZE."),
            "MAX_RATIO": _f(0.95, "Largest default-box scale, as a fraction of SIZE."),
            "EXTRA_CHANNELS": _l([512, 256, 256, 128], "Channels of the stride-2 extra feature maps after the "
                                 "backbone's stride-32 output (SSDlite's).", item="int"),
            "SCORE_THRESH": _f(0.01, "Baseline test score threshold (torchvision's SSD)."),
            "NMS_THRESH": _f(0.45, "Per-class NMS IoU at test time."),
            "TOPK_CANDIDATES": _i(400, "Candidates kept per class before NMS at test time."),
            "TORCHVISION_BUILDER": _s("", "Build torchvision's own SSD instead (ssd300_vgg16 or "
                                      "ssdlite320_mobilenet_v3_large, with MODEL.BACKBONE.WEIGHTS as its "
                                      "weights_backbone) and make it sampling-free: the standard COCO models.",
                                      choices=("", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large")),
        },
        "RPN": {
            "FG_IOU_THRESHOLD": _f(0.7, "Anchors with IoU >= this are foreground (plus low-quality best matches)."),
            "BG_IOU_THRESHOLD": _f(0.3, "Anchors with IoU < this are background."),
            "BATCH_SIZE_PER_IMAGE": _i(256, "Baseline: anchors sampled per image."),
            "POSITIVE_FRACTION": _f(0.5, "Baseline: at most this share of the sampled anchors is positive."),
            "STRADDLE_THRESH": _f(0.0, "Anchors crossing the image border by more than this many pixels are "
                                  "ignored (in the loss and the prior); -1 keeps all."),
            "PRE_NMS_TOP_N_TRAIN": _i(2000, "Proposals per level before NMS, training."),
            "PRE_NMS_TOP_N_TEST": _i(1000, "Proposals per level before NMS, test."),
            "POST_NMS_TOP_N_TRAIN": _i(1000, "Proposals per image after NMS, training (the original: ~1000)."),
            "POST_NMS_TOP_N_TEST": _i(1000, "Proposals per image after NMS, test."),
            "NMS_THRESH": _f(0.7, "Proposal NMS IoU."),
            "SMOOTH_L1_BETA": _f(1.0 / 9, "Proposal box smooth-L1 beta."),
            "CLASSIFICATION_SCALE": _f(1.0, "Guided-scaling factor of the objectness loss."),
            "BOX_LOSS_NORMALIZER": _s("positives", "Sampling-free RPN: what its box smooth-L1 sum is divided by, "
                                      "and so (by guided scaling) the objectness loss too. 'positives': 8 x the "
                                      "positives (0.5 x the mean over their coordinates; the original). 'images': "
                                      "images x BATCH_SIZE_PER_IMAGE (the samplers' normaliser): both RPN losses "
                                      "then grow with the objects per image, as the baseline's do. For dense scenes "
                                      "only: with a few objects per image the objectness never learns (quickstart: "
                                      "AP 56 against 68, docs/results.md).",
                                      choices=("positives", "images")),
            "OBJECTNESS_NORMALIZER": _s("anchors", "Sampling-free RPN: 'anchors': the objectness BCE is one mean "
                                        "over every anchor used (the original); 'levels': a mean per pyramid level, "
                                        "averaged over the levels, so the coarse levels (a fraction of a percent of "
                                        "the anchors, the large objects) get an equal share of the gradient. Not the "
                                        "original's; an experiment (docs/results.md).",
                                        choices=("anchors", "levels")),
        },
        "ROI_HEADS": {
            "FG_IOU_THRESHOLD": _f(0.5, "Proposals with IoU >= this are foreground."),
            "BG_IOU_THRESHOLD": _f(0.5, "Proposals with IoU < this are background."),
            "BATCH_SIZE_PER_IMAGE": _i(512, "Baseline: proposals sampled per image."),
            "POSITIVE_FRACTION": _f(0.25, "Baseline: at most this share of the sampled proposals is positive."),
            "SAMPLER": _s("random", "Baseline RoI sampler: random (BATCH_SIZE_PER_IMAGE at POSITIVE_FRACTION, torchvision's) "
                          "or ohem (online hard example mining, Shrivastava et al. 2016: every RoI through the box head "
                          "without gradient, the BATCH_SIZE_PER_IMAGE of largest loss per image trained on). Ignored "
                          "when the RoI heads are sampling-free.", choices=("random", "ohem")),
            "OHEM_NMS_THRESH": _f(0.7, "OHEM: NMS by loss among an image's RoIs of one label at this IoU before the hardest "
                                  "are kept, so that copies of one hard RoI do not fill the batch (the paper's 0.7 and "
                                  "its code's per-label NMS; <= 0: none)."),
            "BBOX_REG_WEIGHTS": _l([10.0, 10.0, 5.0, 5.0], "Box coder weights of the box head.", item="float"),
            "SCORE_THRESH": _f(0.05, "Baseline test score threshold."),
            "NMS_THRESH": _f(0.5, "Per-class NMS IoU at test time."),
        },
        "ROI_BOX_HEAD": {
            "POOLER_RESOLUTION": _i(7, "RoIAlign output size."),
            "POOLER_SAMPLING_RATIO": _i(2, "RoIAlign sampling ratio."),
            "MLP_HEAD_DIM": _i(1024, "Width of the two fully connected layers."),
            "SMOOTH_L1_BETA": _f(1.0, "Box smooth-L1 beta (maskrcnn-benchmark's 1)."),
        },
        "CASCADE": {
            "IOUS": _l([0.5, 0.6, 0.7], "Foreground IoU threshold of each stage.", item="float"),
            "BBOX_REG_WEIGHTS": _l([[10.0, 10.0, 5.0, 5.0], [20.0, 20.0, 10.0, 10.0], [30.0, 30.0, 15.0, 15.0]],
                                   "Box-coder weights of each stage.", item="list"),
            "STAGE_LOSS_WEIGHTS": _l([1.0, 0.5, 0.25], "Loss weight of each stage.", item="float"),
        },
        "ROI_MASK_HEAD": {
            "POOLER_RESOLUTION": _i(14, "RoIAlign output size."),
            "POOLER_SAMPLING_RATIO": _i(2, "RoIAlign sampling ratio."),
            "CONV_LAYERS": _l([256, 256, 256, 256], "Channels of the mask head's 3x3 convs.", item="int"),
        },
    },
    "INPUT": {
        "MIN_SIZE_TRAIN": _l([800], "Shorter side at training; one is drawn at random per image.", item="int"),
        "MAX_SIZE_TRAIN": _i(1333, "Longer side cap at training."),
        "MIN_SIZE_TEST": _i(800, "Shorter side at test."),
        "MAX_SIZE_TEST": _i(1333, "Longer side cap at test."),
        "HFLIP_PROB": _f(0.5, "Horizontal flip probability at training."),
        "SIZE_DIVISIBILITY": _i(32, "Batched images are padded to a multiple of this."),
        "PIXEL_MEAN": _l([0.485, 0.456, 0.406], "RGB mean of images scaled to [0, 1] (ImageNet).", item="float"),
        "PIXEL_STD": _l([0.229, 0.224, 0.225], "RGB std of images scaled to [0, 1] (ImageNet).", item="float"),
    },
    "DATASETS": {
        "TRAIN": _l(["coco_2017_train"], "Training datasets: catalog names, coco:<annotations.json>:<image dir> or "
                    "voc:<devkit folder>:<split>.", item="str"),
        "TEST": _l(["coco_2017_val"], "Test datasets, same forms.", item="str"),
        "ROOT": _s("", "Datasets root. Empty: $SAMPLING_FREE_DATASETS or ./datasets."),
        "CLASS_NAMES": _l([], "Class names in label order, matched by name in every dataset. Empty: the first "
                          "training dataset's (COCO: categories by id; VOC layout: classes.txt, else the 20 VOC "
                          "classes, else the sorted names in the XML files). Training records them here in the run's "
                          "config.yaml.", item="str"),
    },
    "DATALOADER": {
        "NUM_WORKERS": _i(2, "Data-loading worker processes (0: load in the main process)."),
        "ASPECT_RATIO_GROUPING": _b(True, "Batch portrait and landscape images separately (less padding)."),
    },
    "SOLVER": {
        "OPTIMIZER": _s("SGD", "SGD (momentum) or AdamW.", choices=("SGD", "AdamW")),
        "BASE_LR": _f(0.01, "Learning rate for the global batch SOLVER.IMS_PER_BATCH."),
        "BIAS_LR_FACTOR": _f(2.0, "Learning-rate multiplier for biases (maskrcnn-benchmark's 2)."),
        "MOMENTUM": _f(0.9, "SGD momentum."),
        "WEIGHT_DECAY": _f(1e-4, "Weight decay."),
        "WEIGHT_DECAY_BIAS": _f(0.0, "Weight decay of biases."),
        "LR_SCHEDULER": _s("multistep", "multistep (x GAMMA at STEPS) or cosine (to 0 at MAX_ITER).",
                           choices=("multistep", "cosine")),
        "GAMMA": _f(0.1, "Learning-rate factor at each step."),
        "STEPS": _l([60000, 80000], "Iterations at which the learning rate is multiplied by GAMMA.", item="int"),
        "MAX_ITER": _i(90000, "Training iterations."),
        "WARMUP_FACTOR": _f(1.0 / 3, "Learning-rate factor at iteration 0 of the linear warm-up."),
        "WARMUP_ITERS": _i(500, "Linear warm-up length."),
        "IMS_PER_BATCH": _i(16, "Images per iteration (global batch)."),
        "CHECKPOINT_PERIOD": _i(5000, "Write a checkpoint every this many iterations."),
        "LOG_PERIOD": _i(20, "Write a metrics.jsonl record every this many iterations."),
        "CLIP_GRAD_NORM": _f(0.0, "Clip the gradient's global norm to this value (0: off). When on, metrics.jsonl logs "
                                 "grad_norm (before clipping) and grad_clipped (the fraction of steps clipped)."),
        "AMP": _s("", "Mixed precision on CUDA: bf16, or fp16 (with a gradient scaler). Empty: float32.",
                  choices=("", "bf16", "fp16")),
    },
    "TEST": {
        "IMS_PER_BATCH": _i(8, "Images per inference batch."),
        "DETECTIONS_PER_IMG": _i(100, "Detections kept per image."),
        "VOC_METRIC": _s("voc07_11point", "VOC datasets: per-class AP as the VOC2007 11-point metric (the original's) "
                         "or the area under the PR curve (VOC2010+).", choices=("voc07_11point", "area")),
    },
    "OUTPUT_DIR": _s("", "Run folder. Empty: output/<config name>, with _free when sampling-free is on."),
    "SEED": _i(0, "Seed for weights, data order and augmentation."),
    "TENSORBOARD": _b(True, "Also log scalars to OUTPUT_DIR/tensorboard when the tensorboard package is installed."),
}
