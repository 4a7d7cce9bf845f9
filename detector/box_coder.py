"""Box coders: delta-xywh (RetinaNet, ATSS) and ltrb distances with the DFL integral (GFL).

All functions work on [..., 4] tensors so batched [B, A, 4] inputs need no reshape.
"""
import math

import torch

MAX_LOG_RATIO = abs(math.log(16.0 / 1000))  # clamp of dw, dh before exp (mmdetection, torchvision)


def encode_deltas(anchors, boxes):
    """Boxes relative to anchors as (dx, dy, dw, dh), weights (1, 1, 1, 1). [..., 4] xyxy -> [..., 4]."""
    anchor_w = anchors[..., 2] - anchors[..., 0]
    anchor_h = anchors[..., 3] - anchors[..., 1]
    anchor_x = anchors[..., 0] + 0.5 * anchor_w
    anchor_y = anchors[..., 1] + 0.5 * anchor_h
    box_w = (boxes[..., 2] - boxes[..., 0]).clamp(min=1e-6)
    box_h = (boxes[..., 3] - boxes[..., 1]).clamp(min=1e-6)
    box_x = boxes[..., 0] + 0.5 * box_w
    box_y = boxes[..., 1] + 0.5 * box_h
    return torch.stack([(box_x - anchor_x) / anchor_w, (box_y - anchor_y) / anchor_h,
                        torch.log(box_w / anchor_w), torch.log(box_h / anchor_h)], dim=-1)


def decode_deltas(anchors, deltas):
    """Inverse of encode_deltas, with dw, dh clamped at log(1000 / 16). [..., 4] -> [..., 4] xyxy."""
    anchor_w = anchors[..., 2] - anchors[..., 0]
    anchor_h = anchors[..., 3] - anchors[..., 1]
    anchor_x = anchors[..., 0] + 0.5 * anchor_w
    anchor_y = anchors[..., 1] + 0.5 * anchor_h
    dw = deltas[..., 2].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    dh = deltas[..., 3].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    x = anchor_x + deltas[..., 0] * anchor_w
    y = anchor_y + deltas[..., 1] * anchor_h
    half_w = 0.5 * anchor_w * dw.exp()
    half_h = 0.5 * anchor_h * dh.exp()
    return torch.stack([x - half_w, y - half_h, x + half_w, y + half_h], dim=-1)


def encode_distances(centers, boxes, strides):
    """Distances (left, top, right, bottom) from points to box sides, in stride units (unclamped).

    centers [..., 2], boxes [..., 4], strides [...] -> [..., 4].
    """
    distances = torch.stack([centers[..., 0] - boxes[..., 0], centers[..., 1] - boxes[..., 1],
                             boxes[..., 2] - centers[..., 0], boxes[..., 3] - centers[..., 1]], dim=-1)
    return distances / strides[..., None]


def decode_distances(centers, distances, strides):
    """Points [..., 2] and distances [..., 4] in stride units -> boxes [..., 4] xyxy pixels."""
    distances = distances * strides[..., None]
    return torch.cat([centers - distances[..., :2], centers + distances[..., 2:]], dim=-1)


def distribution_integral(logits):
    """GFL expectation of the discrete distance distribution.

    logits [..., 4 * R] -> distances [..., 4]: d = sum_i i * softmax(logits)_i over R = reg_max + 1 bins.
    """
    logits = logits.reshape(*logits.shape[:-1], 4, logits.shape[-1] // 4)   # [..., 4, R]
    bins = torch.arange(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    return logits.softmax(dim=-1) @ bins                          # [..., 4]
