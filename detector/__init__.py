"""focaldet detector package.

Shape glossary (used in every docstring and shape comment):
    B  images in a batch
    A  anchors (or points) over all FPN levels, concatenated level by level (P3 first)
    L  FPN levels (5: P3..P7)
    M  max ground-truth boxes per image in the batch (GTs are padded to M, with a mask)
    C  foreground classes (contiguous labels 0..C-1; no background logit)
    R  reg_max + 1 bins of the GFL distribution branch
Boxes are xyxy in pixels of the network input everywhere inside the package.
Assignment contract: matched[B, A] int64, >= 0 GT index into M, -1 background, -2 ignore.
"""


def build_model(model_cfg, num_classes):
    """Detector (backbone -> FPN -> head) from the `model` section of the config."""
    from .anchors import AnchorGenerator
    from .backbone import FPN, ResNetBackbone
    from .detector import Detector
    from .heads import HEADS

    head_cfg, anchor_cfg = model_cfg.head, model_cfg.anchors
    from .config import ConfigError

    if head_cfg.type not in HEADS:
        raise ConfigError(f"model.head.type must be one of {sorted(HEADS)}, got {head_cfg.type!r}")
    backbone_cfg = model_cfg.backbone
    backbone = ResNetBackbone(backbone_cfg.depth, backbone_cfg.frozen_stages, backbone_cfg.norm,
                              backbone_cfg.pretrained, backbone_cfg.zero_init_residual)
    fpn = FPN(backbone.out_channels, model_cfg.fpn.out_channels, model_cfg.fpn.extra_from)
    anchor_generator = AnchorGenerator(anchor_cfg.strides, anchor_cfg.octave_base_scale, anchor_cfg.scales_per_octave,
                                       anchor_cfg.ratios, anchor_cfg.offset)
    extra = {"reg_max": head_cfg.reg_max} if head_cfg.type == "gfl" else {}
    head = HEADS[head_cfg.type](model_cfg.fpn.out_channels, num_classes, anchor_generator.num_per_location,
                                head_cfg.feat_channels, head_cfg.stacked_convs, head_cfg.norm, head_cfg.prior_prob,
                                num_levels=len(anchor_cfg.strides), **extra)
    return Detector(backbone, fpn, head, anchor_generator)


def build_criterion(model_cfg, num_classes):
    """Criterion (assignment, targets, losses, normalisation) matching the head type."""
    from .criterion import CRITERIA

    return CRITERIA[model_cfg.head.type](model_cfg, num_classes)


def build_postprocessor(model_cfg):
    from .postprocess import PostProcessor

    return PostProcessor(model_cfg.head.type, model_cfg.test)
