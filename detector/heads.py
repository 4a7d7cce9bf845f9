"""Dense heads: RetinaNet, ATSS and GFL. Each maps P3..P7 to flat per-anchor outputs.

Every level's map [B, K * X, H, W] is flattened to [B, H * W * K, X] and the levels are concatenated,
giving the anchor order of detector/anchors.py. Heads return raw outputs, never a loss.
"""
import math

import torch
from torch import nn


class Scale(nn.Module):
    """A learnable scalar per FPN level (ATSS, GFL) multiplying the regression output."""

    def __init__(self, value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return x * self.scale


def group_norm(channels):
    """GroupNorm with 32 groups (reference) when there are >= 2 channels per group; fewer for slim demo heads."""
    return nn.GroupNorm(math.gcd(32, channels // 2), channels)


HEAD_NORMS = {None: None, "gn": group_norm}  # model.head.norm: none (RetinaNet) or GroupNorm (ATSS, GFL)


def tower(in_channels, feat_channels, stacked_convs, norm):
    """stacked_convs x (conv3x3 [+ norm] + ReLU); the conv has no bias when a norm follows."""
    layers = []
    for i in range(stacked_convs):
        channels = in_channels if i == 0 else feat_channels
        layers.append(nn.Conv2d(channels, feat_channels, 3, padding=1, bias=norm is None))
        if norm is not None:
            layers.append(HEAD_NORMS[norm](feat_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def flatten_levels(maps, channels_per_anchor):
    """[[B, K * X, H_l, W_l]] per level -> [B, A, X] with A = sum_l H_l * W_l * K.

    Each level is copied once, straight into its slice of the output (no per-level reshaped copy before a
    concatenation): with LVIS's 1203 classes RetinaNet's [B, A, C] logits are ~1 GB per image at 1333x800.
    """
    batch = maps[0].shape[0]
    sizes = [x.shape[1] * x.shape[2] * x.shape[3] // channels_per_anchor for x in maps]   # H_l W_l K per level
    flat = maps[0].new_empty(batch, sum(sizes), channels_per_anchor)                      # [B, A, X]
    start = 0
    for x, size in zip(maps, sizes):
        _, channels, height, width = x.shape
        flat[:, start:start + size].view(batch, height, width, channels).copy_(x.permute(0, 2, 3, 1))
        start += size
    return flat


class DenseHead(nn.Module):
    """Shared structure: a classification tower and a regression tower over every level.

    Outputs (all flat over anchors, see flatten_levels):
        cls_logits      [B, A, C]   RetinaNet / ATSS: class logits; GFL: joint class-quality logits
        box_regression  [B, A, box_channels]  deltas (4: RetinaNet, ATSS), or 4 * R distribution logits (GFL);
                        box_channels comes from the head family (detector/families.py)
        centerness      [B, A]      ATSS only, else None
    """

    use_scale = False
    use_centerness = False

    def __init__(self, in_channels, num_classes, num_anchors, box_channels=4, feat_channels=256, stacked_convs=4,
                 norm=None, prior_prob=0.01, num_levels=5):
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.box_channels = box_channels
        self.cls_tower = tower(in_channels, feat_channels, stacked_convs, norm)
        self.reg_tower = tower(in_channels, feat_channels, stacked_convs, norm)
        self.cls_out = nn.Conv2d(feat_channels, num_anchors * num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(feat_channels, num_anchors * self.box_channels, 3, padding=1)
        self.centerness_out = nn.Conv2d(feat_channels, num_anchors, 3, padding=1) if self.use_centerness else None
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels)) if self.use_scale else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Prior bias so that every anchor starts with p = prior_prob (Focal Loss paper, section 4.1).
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features):
        cls_maps, reg_maps, centerness_maps = [], [], []
        for level, x in enumerate(features):
            cls_feat = self.cls_tower(x)
            reg_feat = self.reg_tower(x)
            cls_maps.append(self.cls_out(cls_feat))
            reg = self.reg_out(reg_feat)
            reg_maps.append(self.scales[level](reg) if self.scales is not None else reg)
            if self.centerness_out is not None:
                centerness_maps.append(self.centerness_out(reg_feat))
        cls_logits = flatten_levels(cls_maps, self.num_classes)            # [B, A, C]
        box_regression = flatten_levels(reg_maps, self.box_channels)      # [B, A, 4] or [B, A, 4 * R]
        centerness = flatten_levels(centerness_maps, 1)[..., 0] if centerness_maps else None  # [B, A]
        return cls_logits, box_regression, centerness


class RetinaNetHead(DenseHead):
    """Focal Loss for Dense Object Detection (Lin et al. 2017): 9 anchors per location, no norm by default
    (model.head.norm: gn adds GroupNorm to the towers, as torchvision's retinanet_resnet50_fpn_v2)."""


class ATSSHead(DenseHead):
    """ATSS (Zhang et al. 2020): GN towers, a per-level Scale on the deltas, a centerness branch."""

    use_scale = True
    use_centerness = True


class GFLHead(DenseHead):
    """Generalized Focal Loss (Li et al. 2020): joint class-quality logits and 4 x R distribution logits
    (box_channels = 4 (reg_max + 1), from GFLFamily), a per-level Scale on them."""

    use_scale = True
