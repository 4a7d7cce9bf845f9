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
from .anchors import AnchorGenerator
from .backbone import EXTRA_FROM, FPN, NORMS, RESNETS, ResNetBackbone
from .config import ConfigError, choose
from .criterion import ASSIGNERS, CenternessCriterion, QualityCriterion, RetinaNetCriterion
from .detector import Detector
from .families import ATSSFamily, GFLFamily, RetinaNetFamily
from .heads import HEAD_NORMS, ATSSHead, GFLHead, RetinaNetHead
from .postprocess import PostProcessor

# model.head.type -> (head, family, criterion). A new head family is a head class, a family object and one line here.
HEAD_TYPES = {
    "retinanet": (RetinaNetHead, RetinaNetFamily, RetinaNetCriterion),
    "atss": (ATSSHead, ATSSFamily, CenternessCriterion),
    "gfl": (GFLHead, GFLFamily, QualityCriterion),
}


def check_model_config(model_cfg):
    """Every registry-backed choice of the `model` section is a known name (ConfigError naming the key if not)."""
    choose(RESNETS, model_cfg.backbone.depth, "model.backbone.depth")
    choose(NORMS, model_cfg.backbone.norm, "model.backbone.norm")
    choose(EXTRA_FROM, model_cfg.fpn.extra_from, "model.fpn.extra_from")
    choose(HEAD_TYPES, model_cfg.head.type, "model.head.type")
    choose(HEAD_NORMS, model_cfg.head.norm, "model.head.norm")
    choose(ASSIGNERS, model_cfg.assigner.type, "model.assigner.type")
    if model_cfg.normaliser == "image" and model_cfg.head.type != "retinanet":
        raise ConfigError(f"model.normaliser: 'image' is RetinaNet's (torchvision's) normaliser; the "
                          f"{model_cfg.head.type} head normalises as mmdetection: use model.normaliser=batch")


def build_family(model_cfg):
    """The head family object (box coder, score, target type) shared by the criterion and the post-processor."""
    return choose(HEAD_TYPES, model_cfg.head.type, "model.head.type")[1](model_cfg.head)


def build_model(model_cfg, num_classes):
    """Detector (backbone -> FPN -> head) from the `model` section of the config."""
    check_model_config(model_cfg)
    head_class = HEAD_TYPES[model_cfg.head.type][0]
    family = build_family(model_cfg)
    backbone_cfg, head_cfg, anchor_cfg = model_cfg.backbone, model_cfg.head, model_cfg.anchors
    backbone = ResNetBackbone(backbone_cfg.depth, backbone_cfg.frozen_stages, backbone_cfg.norm,
                              backbone_cfg.norm_eval, backbone_cfg.pretrained, backbone_cfg.zero_init_residual,
                              backbone_cfg.fold_norm)
    fpn = FPN(backbone.out_channels, model_cfg.fpn.out_channels, model_cfg.fpn.extra_from,
              model_cfg.fpn.relu_before_extra_convs)
    anchor_generator = AnchorGenerator(anchor_cfg.strides, anchor_cfg.octave_base_scale, anchor_cfg.scales_per_octave,
                                       anchor_cfg.ratios, anchor_cfg.offset)
    head = head_class(model_cfg.fpn.out_channels, num_classes, anchor_generator.num_per_location, family.box_channels,
                      head_cfg.feat_channels, head_cfg.stacked_convs, head_cfg.norm, head_cfg.prior_prob,
                      num_levels=len(anchor_cfg.strides))
    return Detector(backbone, fpn, head, anchor_generator)


def build_criterion(model_cfg, num_classes):
    """Criterion (assignment, targets, losses, normalisation) of the head type's loss structure."""
    check_model_config(model_cfg)
    return HEAD_TYPES[model_cfg.head.type][2](model_cfg, build_family(model_cfg), num_classes)


def build_postprocessor(model_cfg):
    """Post-processor (decode, threshold, NMS) with the head type's family; knows nothing of training."""
    return PostProcessor(build_family(model_cfg), model_cfg.test)
