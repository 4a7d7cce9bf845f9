"""Anchor-to-ground-truth assignment for dense detectors, batched over images.

Both assigners follow the package assignment contract: they return ``matched`` of shape [B, A]
(int64) where a value >= 0 is the index of the matched GT along M, -1 means background and -2
means ignore (the anchor contributes to no classification loss).

Shape glossary: B images, A anchors over all levels concatenated level-major (P3 first),
M max GTs per image (padded, with a validity mask), L levels. Boxes are xyxy pixels.

Padding GTs (``gt_valid`` False) and crowd GTs (``gt_crowd`` True) never become positives:
their IoU is replaced by -1 before matching. Crowd boxes instead mark ignore regions: an anchor
that is not positive and whose intersection-over-anchor-area (IoF) with any crowd box of its
image is >= ``crowd_iof_thr`` becomes -2.
"""
from __future__ import annotations

import torch

from detector.box_ops import box_iou, box_iou_aligned

BACKGROUND = -1
IGNORE = -2
CHUNK_ELEMENTS = 2 ** 23  # [B, m, A] temporaries of at most 8M elements (32 MB in float32) per chunk of GTs


def _batched_iou(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU between every GT of every image and every anchor.

    Args:
        gt_boxes: [B, M, 4] xyxy.
        anchors: [A, 4] xyxy.

    Returns:
        [B, M, A] IoU with mmdet ``bbox_overlaps`` semantics (overlap / max(union, 1e-6)).
    """
    return box_iou(gt_boxes, anchors)


def _crowd_iof(gt_boxes: torch.Tensor, crowd_mask: torch.Tensor, anchors: torch.Tensor,
               eps: float = 1e-6) -> torch.Tensor:
    """Largest intersection-over-anchor-area of each anchor with the crowd boxes of its image.

    Args:
        gt_boxes: [B, M, 4] xyxy.
        crowd_mask: [B, M] bool, True for boxes that are (valid) crowd regions.
        anchors: [A, 4] xyxy.
        eps: lower bound of the anchor area.

    Returns:
        [B, A] max IoF over crowd boxes, 0 where the image has no crowd box.
    """
    boxes = gt_boxes[:, :, None, :]                                               # [B, M, 1, 4]
    width = (torch.minimum(boxes[..., 2], anchors[:, 2]) - torch.maximum(boxes[..., 0], anchors[:, 0])).clamp(min=0)
    height = (torch.minimum(boxes[..., 3], anchors[:, 3]) - torch.maximum(boxes[..., 1], anchors[:, 1])).clamp(min=0)
    intersection = width * height                                                 # [B, M, A]
    anchor_area = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).clamp(min=eps)
    iof = intersection / anchor_area
    iof = torch.where(crowd_mask[:, :, None], iof, torch.zeros_like(iof))
    return iof.amax(dim=1)


def _apply_crowd_rule(matched: torch.Tensor, gt_boxes: torch.Tensor, gt_valid: torch.Tensor,
                      gt_crowd: torch.Tensor | None, anchors: torch.Tensor,
                      crowd_iof_thr: float) -> torch.Tensor:
    """Turn non-positive anchors that lie mostly inside a crowd box into ignore (-2); off when crowd_iof_thr < 0."""
    if gt_crowd is None or gt_boxes.shape[1] == 0 or crowd_iof_thr < 0:
        return matched
    crowd_mask = gt_crowd & gt_valid
    crowd_count = int(crowd_mask.sum(dim=1).max())            # one host sync; crowd boxes are rare
    if crowd_count == 0:
        return matched
    # Move each image's crowd boxes to the front and keep only those: [B, crowd_count].
    order = torch.argsort((~crowd_mask).to(torch.uint8), dim=1, stable=True)[:, :crowd_count]
    crowd_boxes = gt_boxes.gather(1, order[..., None].expand(-1, -1, 4))
    iof = _crowd_iof(crowd_boxes, crowd_mask.gather(1, order), anchors)
    in_crowd = (iof >= crowd_iof_thr) & crowd_mask.any(dim=1, keepdim=True)
    return torch.where((matched < 0) & in_crowd, torch.full_like(matched, IGNORE), matched)


def _ignore_invalid(matched: torch.Tensor, anchors_valid: torch.Tensor | None) -> torch.Tensor:
    """Anchors outside their image's padded area (anchors_valid False) -> ignore (-2): no loss at all."""
    if anchors_valid is None:
        return matched
    return torch.where(anchors_valid, matched, torch.full_like(matched, IGNORE))


def _matchable(gt_valid: torch.Tensor, gt_crowd: torch.Tensor | None) -> torch.Tensor:
    """[B, M] bool: GTs that may become positives (valid and not crowd)."""
    return gt_valid if gt_crowd is None else gt_valid & ~gt_crowd


def _prepare(anchors, gt_boxes, gt_valid, gt_crowd):
    """Boxes in at least float32 (half precision IoUs are too coarse), masks as bool."""
    dtype = torch.promote_types(anchors.dtype, torch.float32)
    gt_crowd = None if gt_crowd is None else gt_crowd.bool()
    return anchors.to(dtype), gt_boxes.to(dtype), gt_valid.bool(), gt_crowd


@torch.no_grad()
def max_iou_assign(anchors: torch.Tensor,
                   gt_boxes: torch.Tensor,
                   gt_valid: torch.Tensor,
                   gt_crowd: torch.Tensor | None = None,
                   pos_iou_thr: float = 0.5,
                   neg_iou_thr: float = 0.4,
                   min_pos_iou: float = 0.0,
                   low_quality: str = 'mmdet',
                   crowd_iof_thr: float = -1.0,
                   anchors_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-IoU assignment (RetinaNet), batched, with mmdet ``MaxIoUAssigner`` semantics.

    Steps, per image (all images at once):
      1. IoU of every matchable GT with every anchor; padding and crowd GTs get IoU -1.
      2. Every anchor starts as ignore (-2). Max IoU over GTs < ``neg_iou_thr`` -> background (-1).
         Max IoU >= ``pos_iou_thr`` -> its argmax GT (first index on ties).
      3. Low-quality matches (``low_quality``):
         - ``'mmdet'``: for each GT i in order whose best IoU over anchors is >= ``min_pos_iou``,
           every anchor whose IoU with GT i equals that best value goes to GT i; a later GT
           overwrites an earlier one. A GT overlapping no anchor has best IoU 0, so with
           ``min_pos_iou`` 0 every anchor with IoU 0 to it becomes its positive (mmdet quirk,
           kept on purpose).
         - ``'torchvision'``: every anchor that is some GT's best anchor (ties included, same
           ``min_pos_iou`` condition) is matched to its own argmax GT.
         - ``'none'``: no low-quality pass.
      4. Crowd rule: a non-positive anchor with IoF >= ``crowd_iof_thr`` to a crowd box -> -2.
    An image without matchable GT gets all -1 (before the crowd rule). Anchors outside their image's
    padded area (``anchors_valid`` False) take no part in steps 1-3 and are -2 (mmdetection assigns only
    the anchors inside each image). The GTs are taken in chunks whose [B, m, A] IoU stays within
    ``CHUNK_ELEMENTS``, so hundreds of GTs per image cost time, not memory.

    Args:
        anchors: [A, 4] xyxy anchors of all levels.
        gt_boxes: [B, M, 4] xyxy GT boxes, padded.
        gt_valid: [B, M] bool, False for padding.
        gt_crowd: optional [B, M] bool, True for crowd (iscrowd) boxes.
        pos_iou_thr: IoU at or above which an anchor is positive.
        neg_iou_thr: IoU below which an anchor is background.
        min_pos_iou: smallest best-IoU for which a GT takes its low-quality matches.
        low_quality: ``'mmdet'``, ``'torchvision'`` or ``'none'`` (model.assigner.low_quality).
        crowd_iof_thr: IoF with a crowd box at or above which a non-positive anchor is ignored; < 0 (default,
            mmdetection's ignore_iof_thr -1) turns the rule off and crowd boxes are only never positive.
        anchors_valid: optional [B, A] bool, False for anchors outside the image's own padded area.

    Returns:
        matched: [B, A] int64, GT index >= 0, -1 background, -2 ignore.
        max_iou: [B, A] largest IoU of each anchor with a matchable GT (0 if the image has none).
    """
    anchors, gt_boxes, gt_valid, gt_crowd = _prepare(anchors, gt_boxes, gt_valid, gt_crowd)
    batch_size, max_gts = gt_boxes.shape[:2]
    num_anchors, dtype, device = anchors.shape[0], anchors.dtype, anchors.device
    matchable = _matchable(gt_valid, gt_crowd)                                    # [B, M]
    max_iou = torch.full((batch_size, num_anchors), -1.0, dtype=dtype, device=device)
    argmax_gt = torch.zeros((batch_size, num_anchors), dtype=torch.long, device=device)
    low_quality_gt = torch.full((batch_size, num_anchors), -1, dtype=torch.long, device=device)
    for first, last in _chunks(max_gts, batch_size * num_anchors):
        usable = matchable[:, first:last, None]
        if anchors_valid is not None:
            usable = usable & anchors_valid[:, None]
        iou = torch.where(usable, _batched_iou(gt_boxes[:, first:last], anchors), -1.0)   # [B, m, A]
        chunk_max, chunk_argmax = iou.max(dim=1)                                  # [B, A]
        better = chunk_max > max_iou                                              # earlier GTs win ties
        max_iou = torch.where(better, chunk_max, max_iou)
        argmax_gt = torch.where(better, chunk_argmax + first, argmax_gt)
        if low_quality != 'none':
            gt_best_iou = iou.amax(dim=2, keepdim=True)                           # [B, m, 1]
            is_best_anchor = (iou == gt_best_iou) & matchable[:, first:last, None] & (gt_best_iou >= min_pos_iou)
            if low_quality == 'mmdet':   # the last GT whose best anchor this is
                gt_index = torch.arange(first, last, device=device).view(1, -1, 1)
                chunk_last = torch.where(is_best_anchor, gt_index, -1).amax(dim=1)
            else:                        # torchvision: some GT's best anchor, matched to its own argmax
                chunk_last = torch.where(is_best_anchor.any(dim=1), 0, -1)
            low_quality_gt = torch.maximum(low_quality_gt, chunk_last)

    matched = torch.full((batch_size, num_anchors), IGNORE, dtype=torch.long, device=device)
    matched = torch.where(max_iou < neg_iou_thr, BACKGROUND, matched)
    matched = torch.where(max_iou >= pos_iou_thr, argmax_gt, matched)
    if low_quality == 'mmdet':
        matched = torch.where(low_quality_gt >= 0, low_quality_gt, matched)
    elif low_quality == 'torchvision':
        matched = torch.where(low_quality_gt >= 0, argmax_gt, matched)
    has_gt = matchable.any(dim=1, keepdim=True)                                   # [B, 1]
    matched = torch.where(has_gt, matched, BACKGROUND)
    matched = _apply_crowd_rule(matched, gt_boxes, gt_valid, gt_crowd, anchors, crowd_iof_thr)
    return _ignore_invalid(matched, anchors_valid), max_iou.clamp(min=0)


@torch.no_grad()
def atss_assign(anchors: torch.Tensor,
                num_anchors_per_level: list[int],
                gt_boxes: torch.Tensor,
                gt_valid: torch.Tensor,
                gt_crowd: torch.Tensor | None = None,
                topk: int = 9,
                anchors_per_location: int = 1,
                crowd_iof_thr: float = -1.0,
                anchors_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive Training Sample Selection (ATSS), batched, with mmdet ``ATSSAssigner`` semantics.

    Steps, for every image and every matchable GT at once:
      1. L2 distance between anchor centres and GT centres (with the square root, as mmdetection: a tie it
         creates or keeps is then broken by torch.topk exactly as in mmdetection).
      2. Per level, the k = min(topk * anchors_per_location, anchors in the level) anchors with
         the nearest centres are candidates (a level with fewer anchors than k gives all of them).
      3. IoU between each candidate anchor box and the GT (mmdet ``bbox_overlaps``; only the K candidates
         of a GT are ever compared with it, so no [B, M, A] IoU is formed).
      4. Threshold per GT = mean + std of the candidates' IoUs over all levels; std is unbiased
         (``torch.std`` default), so a GT with a single candidate gets NaN and no positive.
      5. A candidate is positive when IoU >= threshold and the anchor centre lies strictly
         inside the GT: min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01.
      6. An anchor positive for several GTs takes the GT of highest IoU (lowest index on exact
         ties). Every other anchor is background (-1).
      7. Crowd rule: a non-positive anchor with IoF >= ``crowd_iof_thr`` to a crowd box -> -2.
    Padding and crowd GTs never have candidates that become positive. Anchors outside their image's padded
    area (``anchors_valid`` False) are never candidates (k counts the valid anchors of the level, as
    mmdetection's num_level_anchors_inside) and are -2. The distances of step 1 are formed level by level
    and in chunks of GTs within ``CHUNK_ELEMENTS``.

    Args:
        anchors: [A, 4] xyxy anchors of all levels, level-major.
        num_anchors_per_level: L ints summing to A.
        gt_boxes: [B, M, 4] xyxy GT boxes, padded.
        gt_valid: [B, M] bool, False for padding.
        gt_crowd: optional [B, M] bool, True for crowd (iscrowd) boxes.
        topk: candidates per level and per GT for one anchor per location.
        anchors_per_location: anchors at each location; k scales to ``topk * anchors_per_location``.
        crowd_iof_thr: IoF with a crowd box at or above which a non-positive anchor is ignored; < 0 (default)
            turns the rule off.
        anchors_valid: optional [B, A] bool, False for anchors outside the image's own padded area.

    Returns:
        matched: [B, A] int64, GT index >= 0, -1 background, -2 ignore.
        iou_threshold: [B, M] the per-GT threshold mean + std (0 for padding and crowd GTs).
    """
    anchors, gt_boxes, gt_valid, gt_crowd = _prepare(anchors, gt_boxes, gt_valid, gt_crowd)
    batch_size, max_gts = gt_boxes.shape[:2]
    num_anchors, dtype, device = anchors.shape[0], anchors.dtype, anchors.device
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(f'num_anchors_per_level sums to {sum(num_anchors_per_level)}, expected {num_anchors}')
    if max_gts == 0 or num_anchors == 0:
        matched = torch.full((batch_size, num_anchors), BACKGROUND, dtype=torch.long, device=device)
        matched = _apply_crowd_rule(matched, gt_boxes, gt_valid, gt_crowd, anchors, crowd_iof_thr)
        return _ignore_invalid(matched, anchors_valid), torch.zeros((batch_size, max_gts), dtype=dtype, device=device)
    matchable = _matchable(gt_valid, gt_crowd)                                    # [B, M]
    anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2.0                      # [A, 2]
    gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2.0                    # [B, M, 2]
    candidate_indices = []                                                        # per level [B, M, k]
    start = 0
    for level_size in num_anchors_per_level:
        k = min(topk * anchors_per_location, level_size)
        nearest = []
        for first, last in _chunks(max_gts, batch_size * level_size):
            offsets = anchor_centres[None, None, start:start + level_size] - gt_centres[:, first:last, None]
            distance = offsets.pow(2).sum(-1).sqrt()                              # [B, m, A_l]
            if anchors_valid is not None:  # invalid anchors are the farthest: chosen only to fill k, then masked
                distance = distance.masked_fill(~anchors_valid[:, None, start:start + level_size], float('inf'))
            nearest.append(distance.topk(k, dim=-1, largest=False).indices + start)
        if k > 0:
            candidate_indices.append(torch.cat(nearest, dim=1))
        start += level_size
    candidate_indices = torch.cat(candidate_indices, dim=-1)                      # [B, M, K]
    candidate_boxes = anchors[candidate_indices]                                  # [B, M, K, 4]
    candidate_iou = box_iou_aligned(gt_boxes[:, :, None].expand_as(candidate_boxes), candidate_boxes)
    if anchors_valid is None:
        candidate_valid = torch.ones_like(candidate_iou, dtype=torch.bool)
    else:
        candidate_valid = torch.gather(anchors_valid[:, None].expand(-1, max_gts, -1), -1, candidate_indices)
    threshold = _masked_mean_plus_std(candidate_iou, candidate_valid)             # [B, M]

    candidate_centres = anchor_centres[candidate_indices]                         # [B, M, K, 2]
    side_distance = torch.cat([candidate_centres - gt_boxes[:, :, None, :2],
                               gt_boxes[:, :, None, 2:] - candidate_centres], dim=-1)
    centre_inside = side_distance.amin(dim=-1) > 0.01                             # [B, M, K]
    is_positive = (candidate_iou >= threshold[..., None]) & centre_inside & matchable[..., None] & candidate_valid

    # An anchor positive for several GTs: the highest IoU, then the lowest GT index (scatter over anchors).
    positive_iou = torch.where(is_positive, candidate_iou, float('-inf')).flatten(1)          # [B, M * K]
    flat_anchor = candidate_indices.flatten(1)
    best_iou = torch.full((batch_size, num_anchors), float('-inf'), dtype=dtype, device=device)
    best_iou.scatter_reduce_(1, flat_anchor, positive_iou, reduce='amax')
    gt_index = torch.arange(max_gts, device=device).view(1, -1, 1).expand_as(candidate_indices).flatten(1)
    wins = is_positive.flatten(1) & (positive_iou == best_iou.gather(1, flat_anchor))
    best_gt = torch.full((batch_size, num_anchors), max_gts, dtype=torch.long, device=device)
    best_gt.scatter_reduce_(1, flat_anchor, torch.where(wins, gt_index, max_gts), reduce='amin')
    matched = torch.where(best_gt < max_gts, best_gt, BACKGROUND)

    iou_threshold = torch.where(matchable, threshold, 0.0)
    matched = _apply_crowd_rule(matched, gt_boxes, gt_valid, gt_crowd, anchors, crowd_iof_thr)
    return _ignore_invalid(matched, anchors_valid), iou_threshold


def _chunks(count: int, elements_per_item: int):
    """(first, last) ranges over `count` GTs, each chunk's [B, m, A] temporaries within CHUNK_ELEMENTS."""
    size = max(1, CHUNK_ELEMENTS // max(elements_per_item, 1))
    return [(first, min(first + size, count)) for first in range(0, count, size)]


def _masked_mean_plus_std(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean + unbiased std of `values` [..., K] over the entries where `mask` is True (torch.std's n - 1;
    NaN for a single entry, as torch.std)."""
    count = mask.sum(dim=-1).to(values.dtype)
    mean = torch.where(mask, values, 0).sum(dim=-1) / count
    squares = torch.where(mask, (values - mean[..., None]).pow(2), 0).sum(dim=-1)
    return mean + (squares / (count - 1)).sqrt()
