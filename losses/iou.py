"""IoU-family box losses on aligned pairs of boxes (element-wise, no reduction).

Boxes are xyxy in pixels. pred and target are [N, 4] (any [..., 4] that broadcasts works) and
every loss returns [N]. The math runs in the input dtype; the criterion casts to float32 first.
Formulas: ../shared/REFERENCE.md, section "Losses"; eps placement as in the references named
per function (it only matters for degenerate boxes). ../shared/golden/README.md has the vectors.
"""
import math

import torch


def _intersection(pred, target):
    """Area of the intersection of aligned boxes, [...]: widths and heights clamped at 0."""
    width = torch.minimum(pred[..., 2], target[..., 2]) - torch.maximum(pred[..., 0], target[..., 0])
    height = torch.minimum(pred[..., 3], target[..., 3]) - torch.maximum(pred[..., 1], target[..., 1])
    return width.clamp(min=0) * height.clamp(min=0)


def _area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _enclosing_size(pred, target):
    """Width and height of the smallest box enclosing both boxes, each [...]."""
    width = torch.maximum(pred[..., 2], target[..., 2]) - torch.minimum(pred[..., 0], target[..., 0])
    height = torch.maximum(pred[..., 3], target[..., 3]) - torch.minimum(pred[..., 1], target[..., 1])
    return width.clamp(min=0), height.clamp(min=0)


def _centre_distance_squared(pred, target):
    """Squared distance between the box centres, rho^2, [...]."""
    delta_x = (target[..., 0] + target[..., 2]) - (pred[..., 0] + pred[..., 2])
    delta_y = (target[..., 1] + target[..., 3]) - (pred[..., 1] + pred[..., 3])
    return (delta_x ** 2 + delta_y ** 2) / 4


def aligned_iou(pred, target, mode='iou', eps=1e-6):
    """IoU or GIoU of aligned boxes with mmdetection's bbox_overlaps semantics.

    IoU = overlap / max(union, eps); GIoU = IoU - (E - U) / E with E = max(enclosing area, eps)
    and U the clamped union. Broadcasts: detector.box_ops builds its pairwise [N, M] version on it.

    Args:
        pred, target: [..., 4] xyxy boxes that broadcast against each other.
        mode: 'iou' or 'giou'.
    Returns:
        [...] overlaps.
    """
    if mode not in ('iou', 'giou'):
        raise ValueError(f"unknown overlap mode {mode!r}; valid: 'iou', 'giou'")
    overlap = _intersection(pred, target)
    union = (_area(pred) + _area(target) - overlap).clamp(min=eps)
    iou = overlap / union
    if mode == 'iou':
        return iou
    enclose_width, enclose_height = _enclosing_size(pred, target)
    enclose_area = (enclose_width * enclose_height).clamp(min=eps)
    return iou - (enclose_area - union) / enclose_area


def iou_loss(pred, target, mode='linear', eps=1e-6):
    """IoU loss (Yu et al. 2016): 1 - IoU ('linear', REFERENCE) or -ln IoU ('log', mmdetection's default).

    As mmdetection's iou_loss: IoU = overlap / max(union, eps), then clamped to at least eps, so
    disjoint boxes give 1 - eps or -ln(eps).

    Args:
        pred, target: [N, 4] xyxy. Returns: [N].
    """
    iou = aligned_iou(pred, target, 'iou', eps).clamp(min=eps)
    if mode == 'linear':
        return 1 - iou
    if mode == 'log':
        return -iou.log()
    raise ValueError(f"unknown iou_loss mode {mode!r}; valid: 'linear', 'log'")


def giou_loss(pred, target, eps=1e-6):
    """GIoU loss (Rezatofighi et al. 2019): 1 - IoU + (E - U) / E, E the enclosing box area.

    eps as mmdetection's GIoULoss (union and enclosing area clamped to at least eps).

    Args:
        pred, target: [N, 4] xyxy. Returns: [N].
    """
    return 1 - aligned_iou(pred, target, 'giou', eps)


def _distance_terms(pred, target, eps):
    """IoU = overlap / (union + eps) and rho^2 / (c_w^2 + c_h^2 + eps), as mmdetection's diou/ciou."""
    overlap = _intersection(pred, target)
    iou = overlap / (_area(pred) + _area(target) - overlap + eps)
    enclose_width, enclose_height = _enclosing_size(pred, target)
    diagonal_squared = enclose_width ** 2 + enclose_height ** 2 + eps
    return iou, _centre_distance_squared(pred, target) / diagonal_squared


def diou_loss(pred, target, eps=1e-6):
    """DIoU loss (Zheng et al. 2020): 1 - IoU + rho^2 / c^2, c the enclosing box diagonal.

    eps as mmdetection's diou_loss: union + eps, c^2 + eps, no clamp.

    Args:
        pred, target: [N, 4] xyxy. Returns: [N].
    """
    iou, distance_penalty = _distance_terms(pred, target, eps)
    return 1 - iou + distance_penalty


def ciou_loss(pred, target, eps=1e-6, variant='plain'):
    """CIoU loss (Zheng et al. 2020): DIoU loss + a v.

    v = 4 / pi^2 (atan(w_t / h_t) - atan(w_p / h_p))^2, heights + eps (mmdetection), and the
    trade-off a is a constant in the backward pass:
      'plain' (default; paper, torchvision): a = v / (1 - IoU + v + eps), no gate, no clamp.
      'mmdet' (mmdetection v3): a = [IoU > 0.5] v / (1 - IoU + v); loss = 1 - clamp(CIoU, -1, 1).
    Identical boxes give IoU = 1 and v = 0 in float32, hence 0 / 0 in mmdetection's a; the
    denominator is clamped to the smallest positive float, which changes nothing else.

    Args:
        pred, target: [N, 4] xyxy. Returns: [N].
    """
    iou, distance_penalty = _distance_terms(pred, target, eps)
    # atan2(w, h + eps) == atan(w / (h + eps)) for valid boxes, with a bounded gradient at h = 0.
    pred_angle = torch.atan2(pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1] + eps)
    target_angle = torch.atan2(target[..., 2] - target[..., 0], target[..., 3] - target[..., 1] + eps)
    aspect = (4 / math.pi ** 2) * (target_angle - pred_angle) ** 2
    tiny = torch.finfo(iou.dtype).tiny
    with torch.no_grad():
        if variant == 'plain':
            trade_off = aspect / (1 - iou + aspect + eps).clamp(min=tiny)
        elif variant == 'mmdet':
            trade_off = (iou > 0.5).to(iou.dtype) * aspect / (1 - iou + aspect).clamp(min=tiny)
        else:
            raise ValueError(f"unknown ciou_loss variant {variant!r}; valid: 'plain', 'mmdet'")
    if variant == 'plain':
        return 1 - iou + distance_penalty + trade_off * aspect
    return 1 - (iou - distance_penalty - trade_off * aspect).clamp(min=-1.0, max=1.0)


def _efficient_iou_terms(pred, target, eps):
    """EIoU loss, overlap and union with the YOLO-family bbox_iou(EIoU=True) eps placement.

    Heights are clamped to at least eps, union = w_p h_p + w_t h_t - overlap + eps,
    IoU = overlap / union; each penalty denominator gets + eps.
    """
    pred_width = pred[..., 2] - pred[..., 0]
    pred_height = (pred[..., 3] - pred[..., 1]).clamp(min=eps)
    target_width = target[..., 2] - target[..., 0]
    target_height = (target[..., 3] - target[..., 1]).clamp(min=eps)
    overlap = _intersection(pred, target)
    union = pred_width * pred_height + target_width * target_height - overlap + eps
    enclose_width, enclose_height = _enclosing_size(pred, target)
    loss = (1 - overlap / union
            + _centre_distance_squared(pred, target) / (enclose_width ** 2 + enclose_height ** 2 + eps)
            + (pred_width - target_width) ** 2 / (enclose_width ** 2 + eps)
            + (pred_height - target_height) ** 2 / (enclose_height ** 2 + eps))
    return loss, overlap, union


def eiou_loss(pred, target, eps=1e-7):
    """Efficient-IoU loss (Zhang et al. 2021, arXiv 2101.08158), not mmdetection's Extended-IoU.

    EIoU = 1 - IoU + rho^2 / (c_w^2 + c_h^2) + (w_p - w_t)^2 / c_w^2 + (h_p - h_t)^2 / c_h^2, with
    c_w, c_h the enclosing box's width and height (separately, not its diagonal).

    Args:
        pred, target: [N, 4] xyxy. Returns: [N].
    """
    return _efficient_iou_terms(pred, target, eps)[0]


def focal_eiou_loss(pred, target, gamma=0.5, eps=1e-7):
    """Focal-EIoU loss (Zhang et al. 2021): IoU^gamma * EIoU loss, IoU^gamma detached (**ours**).

    The weight only re-weights (high-IoU boxes count more); IoU = overlap / (union + eps) as the
    YOLO-family code. (1 - IoU)^gamma would be a different loss.

    Args:
        pred, target: [N, 4] xyxy. Returns: [N].
    """
    loss, overlap, union = _efficient_iou_terms(pred, target, eps)
    weight = (overlap / (union + eps)).detach().pow(gamma)
    return weight * loss
