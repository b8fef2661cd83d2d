"""ResNet / MobileNetV2 + FPN backbones from torchvision pieces, with ImageNet weights (found by ``checkpoint.py``)."""
from __future__ import annotations

from torch import nn
from torchvision import models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..checkpoint import imagenet_state_dict

# Stage outputs C2..C5: (module name inside the trunk, channels).
_RESNET_SMALL = {2: ("layer1", 64), 3: ("layer2", 128), 4: ("layer3", 256), 5: ("layer4", 512)}
_RESNET_LARGE = {2: ("layer1", 256), 3: ("layer2", 512), 4: ("layer3", 1024), 5: ("layer4", 2048)}
_MOBILENET_V2 = {2: ("3", 24), 3: ("6", 32), 4: ("13", 96), 5: ("17", 320)}
# Trunk modules per stage, coarsest last (stem, C2, C3, C4, C5), for TRAINABLE_LAYERS.
_RESNET_STAGES = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
_MOBILENET_V2_STAGES = [("0", "1"), ("2", "3"), ("4", "5", "6"), tuple(str(i) for i in range(7, 14)),
                        tuple(str(i) for i in range(14, 19))]


def build_trunk(*, name: str, weights: str, norm: str, trainable_layers: int) -> tuple[nn.Module, dict]:
    """The classification network without its classifier (ResNet, or MobileNetV2's ``features``), ImageNet weights
    loaded, the first ``5 - trainable_layers`` stages frozen; and its stages {level: (module name, channels)}."""
    if norm == "auto":
        norm = "FrozenBN" if weights else "BN"
    norm_layer = FrozenBatchNorm2d if norm == "FrozenBN" else nn.BatchNorm2d
    if name.startswith("resnet"):
        trunk = getattr(models, name)(weights=None, norm_layer=norm_layer)
        stages, stage_modules = (_RESNET_SMALL if name in ("resnet18", "resnet34") else _RESNET_LARGE), _RESNET_STAGES
    elif name == "mobilenet_v2":
        trunk = models.mobilenet_v2(weights=None, norm_layer=norm_layer)
        stages, stage_modules = _MOBILENET_V2, _MOBILENET_V2_STAGES
    else:
        raise ValueError(f"unknown backbone {name!r}")
    if weights:
        try:
            missing, unexpected = trunk.load_state_dict(imagenet_state_dict(weights), strict=False)
        except RuntimeError as exc:  # tensor shapes differ
            raise ValueError(f"MODEL.BACKBONE.WEIGHTS={weights!r} does not fit {name}: "
                             f"{str(exc).splitlines()[1].strip()}") from None
        if missing or unexpected:
            raise ValueError(f"MODEL.BACKBONE.WEIGHTS={weights!r} does not fit {name}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    if name == "mobilenet_v2":
        trunk = trunk.features
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"MODEL.BACKBONE.TRAINABLE_LAYERS must be in 0..5, got {trainable_layers}")
    trained = {m for stage in stage_modules[len(stage_modules) - trainable_layers:] for m in stage}
    for param_name, param in trunk.named_parameters():
        if param_name.split(".")[0] not in trained:
            param.requires_grad_(False)
    return trunk, stages


def build_backbone(*, name: str, weights: str, norm: str, trainable_layers: int, out_channels: int,
                   min_level: int, top_block: str) -> BackboneWithFPN:
    """Trunk + FPN giving levels P<min_level>..P5 plus P6/P7 (``p6p7``, from C5 as in the original) or P6
    (``maxpool``). ``backbone.out_channels`` and ``len(backbone.level_strides)`` describe the output."""
    trunk, stages = build_trunk(name=name, weights=weights, norm=norm, trainable_layers=trainable_layers)
    levels = range(min_level, 6)
    return_layers = {stages[level][0]: f"p{level}" for level in levels}
    in_channels = [stages[level][1] for level in levels]
    if top_block == "p6p7":
        extra = LastLevelP6P7(stages[5][1], out_channels)
    elif top_block == "p6p7_from_p5":
        extra = LastLevelP6P7(out_channels, out_channels)
    elif top_block == "maxpool":
        extra = LastLevelMaxPool()
    else:
        raise ValueError(f"unknown MODEL.FPN.TOP_BLOCK {top_block!r}")
    backbone = BackboneWithFPN(trunk, return_layers, in_channels, out_channels, extra_blocks=extra)
    top = 7 if top_block.startswith("p6p7") else 6
    backbone.level_strides = [2**level for level in range(min_level, top + 1)]
    return backbone


def backbone_from_config(cfg) -> BackboneWithFPN:
    m = cfg.MODEL
    return build_backbone(name=m.BACKBONE.NAME, weights=m.BACKBONE.WEIGHTS, norm=m.BACKBONE.NORM,
                          trainable_layers=m.BACKBONE.TRAINABLE_LAYERS, out_channels=m.FPN.OUT_CHANNELS,
                          min_level=m.FPN.MIN_LEVEL, top_block=m.FPN.TOP_BLOCK)
