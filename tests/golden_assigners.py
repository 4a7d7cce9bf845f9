"""Golden adapters for the assigners (see ../shared/golden/README.md, assigner sections).

Maps ``detector.assign`` onto the golden schema: one image (B = 1), every GT valid. The golden
coding is 0 = negative, k = 1-based GT index, -1 = ignore; ours is -1 background, -2 ignore,
>= 0 GT index. Usable directly as a check_golden.py adapter, or imported by golden_adapter.py.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.assign import atss_assign, max_iou_assign  # noqa: E402


def _to_golden(matched, gt_labels):
    """[A] matched (ours) -> (gt_inds, labels) in the golden coding."""
    positive = matched >= 0
    gt_inds = torch.where(positive, matched + 1, torch.where(matched == -2, -1, 0))
    if gt_labels.numel() > 0:
        labels = torch.where(positive, gt_labels[matched.clamp(min=0)], torch.full_like(matched, -1))
    else:
        labels = torch.full_like(matched, -1)
    return gt_inds, labels


def atss_assigner(x, p):
    # x: anchors (A,4), num_level_anchors (L,), gt_bboxes (G,4), gt_labels (G,); p: topk
    gt_boxes = x['gt_bboxes'][None]
    gt_valid = torch.ones(gt_boxes.shape[:2], dtype=torch.bool)
    matched, threshold = atss_assign(x['anchors'], [int(n) for n in x['num_level_anchors'].tolist()],
                                     gt_boxes, gt_valid, topk=int(p.get('topk', 9)))
    gt_inds, labels = _to_golden(matched[0], x['gt_labels'])
    return {'gt_inds': gt_inds, 'labels': labels, 'iou_thr_per_gt': threshold[0]}


def max_iou_assigner(x, p):
    # x: anchors (A,4), gt_bboxes (G,4), gt_labels (G,)
    # p: variant, pos_iou_thr, neg_iou_thr, min_pos_iou, gt_max_assign_all, match_low_quality
    if not p.get('gt_max_assign_all', True):
        raise NotImplementedError('gt_max_assign_all=False is not supported')
    variant = p.get('variant', 'mmdet')
    low_quality = variant if p.get('match_low_quality', True) else 'none'
    gt_boxes = x['gt_bboxes'][None]
    gt_valid = torch.ones(gt_boxes.shape[:2], dtype=torch.bool)
    matched, max_iou = max_iou_assign(x['anchors'], gt_boxes, gt_valid,
                                      pos_iou_thr=p.get('pos_iou_thr', 0.5),
                                      neg_iou_thr=p.get('neg_iou_thr', 0.4),
                                      min_pos_iou=p.get('min_pos_iou', 0.0),
                                      low_quality=low_quality)
    gt_inds, labels = _to_golden(matched[0], x['gt_labels'])
    result = {'gt_inds': gt_inds, 'labels': labels}
    if variant == 'mmdet':
        result['max_overlaps'] = max_iou[0]
    return result
