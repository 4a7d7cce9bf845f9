"""Box geometry on [..., 4] tensors: areas, centres, format conversions, IoU and GIoU.

Boxes are xyxy in pixels inside the package; xywh (COCO: top-left corner, width, height) and
cxcywh appear only at the dataset / evaluator boundaries. Overlaps follow mmdetection's
bbox_overlaps (union and enclosing area clamped to at least eps); the aligned math lives in
losses.iou.aligned_iou and is reused here, so the loss and the assigners share one definition.
"""
import torch

from losses.iou import aligned_iou


def box_area(boxes):
    """[..., 4] xyxy -> [...] areas (negative sizes are not clamped)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_centers(boxes):
    """[..., 4] xyxy -> [..., 2] centres (cx, cy)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def xyxy_to_xywh(boxes):
    """[..., 4] xyxy -> [..., 4] COCO xywh (top-left x, top-left y, width, height)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


def xywh_to_xyxy(boxes):
    """[..., 4] COCO xywh (top-left x, top-left y, width, height) -> [..., 4] xyxy."""
    return torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], dim=-1)


def xyxy_to_cxcywh(boxes):
    """[..., 4] xyxy -> [..., 4] (centre x, centre y, width, height)."""
    return torch.cat([box_centers(boxes), boxes[..., 2:] - boxes[..., :2]], dim=-1)


def cxcywh_to_xyxy(boxes):
    """[..., 4] (centre x, centre y, width, height) -> [..., 4] xyxy."""
    half = boxes[..., 2:] / 2
    return torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], dim=-1)


def bbox_overlaps(boxes1, boxes2, mode='iou', is_aligned=False, eps=1e-6):
    """IoU or GIoU with mmdetection's bbox_overlaps semantics.

    IoU = overlap / max(union, eps); GIoU = IoU - (E - U) / E with E = max(enclosing area, eps).

    Args:
        boxes1: [..., N, 4] xyxy.
        boxes2: [..., M, 4] xyxy (leading dims broadcast, e.g. anchors [A, 4] against GTs [B, M, 4]);
            [..., N, 4] when is_aligned.
        mode: 'iou' or 'giou'.
    Returns:
        [..., N, M] pairwise, or [..., N] when is_aligned. The pairwise path only allocates
        [..., N, M] temporaries (one per coordinate), never [..., N, M, 4].
    """
    if is_aligned:
        return aligned_iou(boxes1, boxes2, mode, eps)
    # [..., N, 1, 4] against [..., 1, M, 4]: every term below broadcasts to [..., N, M].
    return aligned_iou(boxes1.unsqueeze(-2), boxes2.unsqueeze(-3), mode, eps)


def box_iou(boxes1, boxes2, eps=1e-6):
    """Pairwise IoU: [..., N, 4], [..., M, 4] -> [..., N, M]."""
    return bbox_overlaps(boxes1, boxes2, 'iou', False, eps)


def box_iou_aligned(boxes1, boxes2, eps=1e-6):
    """IoU of aligned pairs: [..., 4], [..., 4] -> [...]."""
    return bbox_overlaps(boxes1, boxes2, 'iou', True, eps)


def generalized_box_iou(boxes1, boxes2, is_aligned=False, eps=1e-6):
    """GIoU, pairwise ([..., N, M]) or aligned ([..., N])."""
    return bbox_overlaps(boxes1, boxes2, 'giou', is_aligned, eps)
