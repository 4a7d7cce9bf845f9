"""torchvision's detectors as the yardstick (scripts/compare_torchvision.py, scripts/benchmark.py --vs torchvision).

    model = build_torchvision_detector("fcos", depth=50, width=256, num_classes=80, min_size=800, max_size=1333)
    losses = model(*to_torchvision_inputs(images, targets))       # images [B, 3, H, W] padded, our targets

FCOS and RetinaNet are built as torchvision's fcos_resnet50_fpn / retinanet_resnet50_fpn build them with
weights=None and weights_backbone=None: a random-init ResNet with trainable BatchNorm, every stage trainable,
an FPN on C3..C5 with P6 and P7 from P5 (LastLevelP6P7(width, width)), their default anchors, heads, losses and
post-processing; any ResNet depth and FPN/head width. Their transform is told not to resize or normalise: our
loader has done both, so both detectors see the same tensors. Nothing else in the repository imports torchvision's
detection models.
"""
from torch import nn

KINDS = ("fcos", "retinanet")


def build_torchvision_detector(kind, depth, width, num_classes, min_size, max_size, score_thresh=0.05):
    from torchvision.models import resnet
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = getattr(resnet, f"resnet{depth}")(weights=None, norm_layer=nn.BatchNorm2d)
    c5 = body.fc.in_features
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [c5 // 4, c5 // 2, c5], width,
                               extra_blocks=LastLevelP6P7(width, width))
    # Sigmoid heads: C foreground logits for contiguous labels 0..C-1 (no background slot is needed).
    detector = {"fcos": FCOS, "retinanet": RetinaNet}[kind]
    model = detector(backbone, num_classes, min_size=min_size, max_size=max_size, image_mean=[0.0] * 3,
                     image_std=[1.0] * 3, score_thresh=score_thresh, detections_per_img=100, topk_candidates=1000)
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
