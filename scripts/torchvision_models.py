"""torchvision's detectors as the yardstick (scripts/compare_torchvision.py, scripts/benchmark.py --vs torchvision).

    model = build_torchvision_detector("fcos", depth=50, width=256, num_classes=80, min_size=800, max_size=1333)
    losses = model(*to_torchvision_inputs(images, targets))       # images [B, 3, H, W] padded, our targets

FCOS and RetinaNet are built as torchvision's fcos_resnet50_fpn / retinanet_resnet50_fpn build them with
weights=None and weights_backbone=None: a random-init ResNet with trainable BatchNorm, every stage trainable, an FPN
on C3..C5 with P6 and P7 from P5 (LastLevelP6P7(width, width)), their default anchors, heads, losses and
post-processing; any ResNet depth and FPN/head width. "retinanet_v2" is retinanet_resnet50_fpn_v2 with weights=None:
P6 from C5 (LastLevelP6P7(C5 channels, width)), GroupNorm(32) in the head towers, GIoU box loss. Their transform is
told not to resize or normalise: our loader has done both, so both detectors see the same tensors. Nothing else in
the repository imports torchvision's detection models.
"""
import functools

from torch import nn

KINDS = ("fcos", "retinanet", "retinanet_v2")


def build_torchvision_detector(kind, depth, width, num_classes, min_size, max_size, score_thresh=0.05):
    from torchvision.models import resnet
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead, _default_anchorgen
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if kind not in KINDS:
        raise ValueError(f"torchvision detector {kind!r}: choose from {', '.join(KINDS)}")
    body = getattr(resnet, f"resnet{depth}")(weights=None, norm_layer=nn.BatchNorm2d)
    c5 = body.fc.in_features
    if kind == "retinanet_v2" and c5 == width:
        raise ValueError(f"retinanet_v2 takes P6 from C5, which LastLevelP6P7 cannot tell from P5 when the FPN width "
                         f"equals C5's channels ({c5}): choose another width")
    extra_in = c5 if kind == "retinanet_v2" else width
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [c5 // 4, c5 // 2, c5], width,
                               extra_blocks=LastLevelP6P7(extra_in, width))
    kwargs = dict(min_size=min_size, max_size=max_size, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                  score_thresh=score_thresh, detections_per_img=100, topk_candidates=1000)
    # Sigmoid heads: C foreground logits for contiguous labels 0..C-1 (no background slot is needed).
    if kind == "fcos":
        model = FCOS(backbone, num_classes, **kwargs)
    elif kind == "retinanet":
        model = RetinaNet(backbone, num_classes, **kwargs)
    else:
        num_anchors = _default_anchorgen().num_anchors_per_location()[0]
        head = RetinaNetHead(width, num_anchors, num_classes, norm_layer=functools.partial(nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"
        model = RetinaNet(backbone, num_classes, head=head, **kwargs)
    model.transform.resize = lambda image, target: (image, target)   # our loader resized and normalised
    return model


def to_torchvision_inputs(images, targets):
    """Padded batch -> list of [3, h, w] images and torchvision's per-image target dicts (no crowd rows)."""
    image_list, target_list = [], []
    for i, (height, width) in enumerate(targets["image_sizes"].tolist()):
        image_list.append(images[i, :, :height, :width])
        keep = targets["valid"][i] & ~targets["crowd"][i]
        target_list.append({"boxes": targets["boxes"][i][keep], "labels": targets["labels"][i][keep]})
    return image_list, target_list


def retinanet_state_to_ours(theirs, ours):
    """torchvision RetinaNet's state dict -> our RetinaNet's keys (same depth and width, P6 from P5: extra_from=p5).

    The ResNet entries correspond one to one in order (our backbone wraps torchvision's ResNet); the FPN and
    head entries are named here. Raises ValueError when a shape or key does not match.
    """
    mapped = {}
    body = [k for k in theirs if k.startswith("backbone.body.")]
    our_body = [k for k in ours if k.startswith("backbone.")]
    if len(body) != len(our_body):
        raise ValueError(f"backbones differ: {len(body)} torchvision entries, {len(our_body)} ours")
    mapped.update(zip(our_body, body))
    for i in range(3):
        for t in ("weight", "bias"):
            mapped[f"fpn.lateral.{i}.{t}"] = f"backbone.fpn.inner_blocks.{i}.0.{t}"
            mapped[f"fpn.output.{i}.{t}"] = f"backbone.fpn.layer_blocks.{i}.0.{t}"
    for t in ("weight", "bias"):
        mapped[f"fpn.p6.{t}"] = f"backbone.fpn.extra_blocks.p6.{t}"
        mapped[f"fpn.p7.{t}"] = f"backbone.fpn.extra_blocks.p7.{t}"
        for i in range(4):   # our towers are Sequential(conv, relu, ...): convs at 0, 2, 4, 6
            mapped[f"head.cls_tower.{2 * i}.{t}"] = f"head.classification_head.conv.{i}.0.{t}"
            mapped[f"head.reg_tower.{2 * i}.{t}"] = f"head.regression_head.conv.{i}.0.{t}"
        mapped[f"head.cls_out.{t}"] = f"head.classification_head.cls_logits.{t}"
        mapped[f"head.reg_out.{t}"] = f"head.regression_head.bbox_reg.{t}"
    if set(mapped) != set(ours):
        raise ValueError(f"keys differ: {sorted(set(mapped) ^ set(ours))[:5]}")
    state = {}
    for our_key, their_key in mapped.items():
        if theirs[their_key].shape != ours[our_key].shape:
            raise ValueError(f"{our_key} {tuple(ours[our_key].shape)} <- {their_key} "
                             f"{tuple(theirs[their_key].shape)}: shapes differ (P6 from P5 needs extra_from=p5)")
        state[our_key] = theirs[their_key]
    return state
