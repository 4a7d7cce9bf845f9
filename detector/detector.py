"""Detector: backbone -> FPN -> head -> HeadOutputs. The model never computes a loss."""
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from .anchors import AnchorGenerator


@dataclass
class HeadOutputs:
    """Raw dense predictions of a batch plus the anchors they refer to.

    cls_logits      [B, A, C]
    box_regression  [B, A, 4] deltas, or [B, A, 4 * R] GFL distribution logits
    centerness      [B, A] logits (ATSS) or None
    anchors         [A, 4] xyxy pixels, shared by the batch
    strides         [A]    stride of each anchor's level
    num_per_level   [L]    anchors per level (python ints)
    """

    cls_logits: torch.Tensor
    box_regression: torch.Tensor
    centerness: Optional[torch.Tensor]
    anchors: torch.Tensor
    strides: torch.Tensor
    num_per_level: List[int]


class Detector(nn.Module):
    def __init__(self, backbone, fpn, head, anchor_generator: AnchorGenerator):
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.anchor_generator = anchor_generator

    def forward(self, images):
        """images [B, 3, H, W] normalised and padded -> HeadOutputs."""
        features = self.fpn(self.backbone(images))                   # P3..P7, [B, F, H / s, W / s]
        cls_logits, box_regression, centerness = self.head(features)
        anchors, strides, num_per_level = self.anchor_generator([f.shape[-2:] for f in features], images.device,
                                                                torch.promote_types(images.dtype, torch.float32))
        return HeadOutputs(cls_logits, box_regression, centerness, anchors, strides, num_per_level)
