"""Tiny detectors for the model and criterion tests: R18, 32-channel FPN and head, one stacked conv.

The head type picks the COCO config it starts from, so anchors, assigner and losses are the real ones.
"""
import torch

from detector.config import load_config

CONFIG_OF_HEAD = {"retinanet": "retinanet_r50.yaml", "atss": "atss_r50.yaml", "gfl": "gfl_r50.yaml"}
TINY_OVERRIDES = ["model.backbone.depth=18", "model.backbone.pretrained=null", "model.backbone.norm_eval=false",
                  "model.fpn.out_channels=32", "model.head.feat_channels=32", "model.head.stacked_convs=1"]
INPUT_SHAPE = (2, 3, 128, 96)   # [B, 3, H, W]


def tiny_config(head_type, *overrides):
    """Config for a tiny detector of `head_type` (retinanet | atss | gfl), plus dotted overrides."""
    return load_config(CONFIG_OF_HEAD[head_type], TINY_OVERRIDES + list(overrides))


def padded_targets(boxes_per_image, labels_per_image=None, crowd_per_image=None):
    """Collate-style targets from per-image box lists (an empty list is an image without GT).

    Returns boxes [B, M, 4], labels [B, M], valid [B, M], crowd [B, M] with M = max(1, most boxes).
    """
    batch = len(boxes_per_image)
    max_boxes = max(1, max(len(b) for b in boxes_per_image))
    targets = {"boxes": torch.zeros(batch, max_boxes, 4), "labels": torch.full((batch, max_boxes), -1),
               "valid": torch.zeros(batch, max_boxes, dtype=torch.bool),
               "crowd": torch.zeros(batch, max_boxes, dtype=torch.bool)}
    for image, boxes in enumerate(boxes_per_image):
        count = len(boxes)
        if count == 0:
            continue
        targets["boxes"][image, :count] = torch.tensor(boxes, dtype=torch.float32)
        labels = labels_per_image[image] if labels_per_image else [0] * count
        targets["labels"][image, :count] = torch.tensor(labels)
        targets["valid"][image, :count] = True
        if crowd_per_image:
            targets["crowd"][image, :count] = torch.tensor(crowd_per_image[image])
    return targets
