"""Criteria: assignment -> targets -> losses -> normalisation, one class per head family.

    losses = criterion(outputs, targets)    # dict: 'loss_*' terms (weighted) and detached statistics

targets (data/collate.py): boxes [B, M, 4], labels [B, M], valid [B, M], crowd [B, M].
Normalisation (mmdetection, REFERENCE.md): classification and RetinaNet box losses are divided by the
number of positives averaged over ranks (at least 1); ATSS box losses by the sum of centerness
targets, GFL box and DFL losses by the sum of the detached max class scores, both averaged over ranks
and clamped at 1 as mmdetection does. With no positive the box losses are exactly 0 and still in the graph.
"""
import inspect

import torch
import torch.nn.functional as F
from torch import nn

import losses

from .anchors import anchor_centers
from .assign import atss_assign, max_iou_assign
from .box_coder import decode_deltas, decode_distances, distribution_integral, encode_deltas, encode_distances
from .box_ops import box_iou_aligned
from .config import ConfigError
from .dist import reduce_mean, reduce_sum

ATSS_DELTA_STDS = (0.1, 0.1, 0.2, 0.2)  # mmdetection's ATSS box coder target_stds


def lookup_loss(loss_cfg, kinds, key):
    """The loss function named by `loss_cfg.type` (losses/__init__.py), checked to be one of `kinds` and to
    accept every keyword in `loss_cfg.params`."""
    try:
        function = losses.get_loss(loss_cfg.type)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None
    kind = losses.loss_kind(loss_cfg.type)
    if kind not in kinds:
        raise ConfigError(f"{key}: '{loss_cfg.type}' is a {kind} loss; expected a {' or '.join(kinds)} loss")
    accepted = [name for name in inspect.signature(function).parameters][2:]
    for name in loss_cfg.params:
        if name not in accepted or name == "pos_neg":
            raise ConfigError(f"{key.rsplit('.', 1)[0]}.params.{name}: not a parameter of '{loss_cfg.type}' "
                              f"(valid: {', '.join(a for a in accepted if a != 'pos_neg') or 'none'})")
    return function


def gather_gt(matched, gt_boxes, gt_labels):
    """Per-anchor GT box [B, A, 4] and label [B, A] of matched [B, A] (values for unmatched are arbitrary)."""
    index = matched.clamp(min=0)                                                # [B, A]
    boxes = torch.gather(gt_boxes, 1, index[..., None].expand(-1, -1, 4))      # [B, A, 4]
    labels = torch.gather(gt_labels, 1, index)                                  # [B, A]
    return boxes, labels


def centerness_target(centers, boxes):
    """FCOS/ATSS centerness of points [P, 2] inside boxes [P, 4]: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    left, top = centers[:, 0] - boxes[:, 0], centers[:, 1] - boxes[:, 1]
    right, bottom = boxes[:, 2] - centers[:, 0], boxes[:, 3] - centers[:, 1]
    horizontal = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=1e-6)
    vertical = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=1e-6)
    return (horizontal.clamp(min=0) * vertical.clamp(min=0)).sqrt()


class DenseCriterion(nn.Module):
    """Shared pieces: loss lookup, assignment, the classification loss and its normaliser."""

    def __init__(self, model_cfg, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.assigner = model_cfg.assigner
        self.anchors_per_location = len(model_cfg.anchors.ratios) * model_cfg.anchors.scales_per_octave
        self.loss_cls, self.loss_box = model_cfg.loss_cls, model_cfg.loss_box
        self.cls_fn = lookup_loss(self.loss_cls, ("classification",), "model.loss_cls.type")
        self.box_fn = lookup_loss(self.loss_box, ("box", "delta"), "model.loss_box.type")
        self.box_on_codes = losses.loss_kind(self.loss_box.type) == "delta"  # l1-type losses compare encoded targets
        if self.loss_cls.type == "equalized_focal":
            # EFL gradient statistics G+ / G- per class, summed over ranks, kept in checkpoints (REFERENCE.md).
            self.register_buffer("efl_pos_grad", torch.zeros(num_classes, dtype=torch.float64))
            self.register_buffer("efl_neg_grad", torch.zeros(num_classes, dtype=torch.float64))
            self.register_buffer("efl_pos_neg", torch.ones(num_classes, dtype=torch.float64))

    def assign(self, outputs, targets):
        """matched [B, A]: >= 0 GT index, -1 background, -2 ignore."""
        config = self.assigner
        if config.type == "max_iou":
            matched, _ = max_iou_assign(outputs.anchors, targets["boxes"], targets["valid"], targets["crowd"],
                                        pos_iou_thr=config.pos_iou_thr, neg_iou_thr=config.neg_iou_thr,
                                        min_pos_iou=config.min_pos_iou, low_quality=config.low_quality,
                                        crowd_iof_thr=config.crowd_iof_thr)
        elif config.type == "atss":
            matched, _ = atss_assign(outputs.anchors, outputs.num_per_level, targets["boxes"], targets["valid"],
                                     targets["crowd"], topk=config.topk, anchors_per_location=self.anchors_per_location,
                                     crowd_iof_thr=config.crowd_iof_thr)
        else:
            raise ValueError(f"model.assigner.type must be 'max_iou' or 'atss', got {config.type!r}")
        return matched

    def classification_loss(self, logits, cls_targets, valid, num_pos):
        """Sum of the elementwise loss over non-ignored anchors [B, A] / num_pos, times the config weight."""
        logits, cls_targets = logits[valid].float(), cls_targets[valid]           # [N, C]
        params = dict(self.loss_cls.params)
        if self.loss_cls.type == "equalized_focal":
            params["pos_neg"] = self.efl_pos_neg.to(logits.dtype)
            if self.training:
                self._update_efl_statistics(logits.detach(), cls_targets, params, num_pos)
        return self.cls_fn(logits, cls_targets, **params).sum() / num_pos * self.loss_cls.weight

    @torch.no_grad()
    def _update_efl_statistics(self, logits, cls_targets, params, num_pos):
        """G+_j += sum |dL/dx| over positives of class j, G-_j over negatives; g_j = clamp(G+/G-, 0, 1)."""
        grad = losses.equalized_focal_grad(logits, cls_targets, **params).abs().double() / num_pos.double()
        is_positive = (cls_targets > 0).double()
        statistics = torch.stack([(grad * is_positive).sum(0), (grad * (1 - is_positive)).sum(0)])
        statistics = reduce_sum(statistics)
        self.efl_pos_grad += statistics[0]
        self.efl_neg_grad += statistics[1]
        self.efl_pos_neg.copy_((self.efl_pos_grad / (self.efl_neg_grad + 1e-10)).clamp(0, 1))

    def weighted_box_loss(self, pred_boxes, gt_boxes, pred_codes, target_codes, weights, normaliser):
        """Box loss of the positives [P], each weighted, summed, divided by normaliser, times the config weight.

        Box-space losses (IoU family) compare decoded boxes in fp32; delta-space losses (L1 family)
        compare the encoded regression targets and are summed over the coordinates.
        """
        if self.box_on_codes:
            elementwise = self.box_fn(pred_codes.float(), target_codes, **self.loss_box.params).sum(dim=-1)
        else:
            elementwise = self.box_fn(pred_boxes.float(), gt_boxes.float(), **self.loss_box.params)
        return (elementwise * weights).sum() / normaliser * self.loss_box.weight

    def num_positives(self, positive):
        return reduce_mean(positive.sum().float()).clamp(min=1.0)

    def one_hot_targets(self, gt_labels, positive, dtype):
        """[B, A, C] one-hot rows for positives, zeros elsewhere."""
        return F.one_hot(gt_labels.clamp(min=0), self.num_classes).to(dtype) * positive[..., None].to(dtype)


class RetinaNetCriterion(DenseCriterion):
    """Focal loss over non-ignored anchors + box loss over positives, both / num_pos (mmdetection RetinaNet)."""

    def forward(self, outputs, targets):
        matched = self.assign(outputs, targets)
        positive, valid = matched >= 0, matched != -2                            # [B, A]
        gt_boxes, gt_labels = gather_gt(matched, targets["boxes"], targets["labels"])
        num_pos = self.num_positives(positive)
        cls_targets = self.one_hot_targets(gt_labels, positive, torch.float32)
        anchors = outputs.anchors.expand(positive.shape[0], -1, -1)[positive]      # [P, 4]
        deltas = outputs.box_regression[positive]                                  # [P, 4]
        pos_gt = gt_boxes[positive]                                                # [P, 4]
        loss_box = self.weighted_box_loss(decode_deltas(anchors, deltas.float()), pos_gt, deltas,
                                          encode_deltas(anchors, pos_gt), 1.0, num_pos)
        return {"loss_cls": self.classification_loss(outputs.cls_logits, cls_targets, valid, num_pos),
                "loss_box": loss_box, "num_pos": num_pos}


class ATSSCriterion(DenseCriterion):
    """ATSS (mmdetection ATSSHead.loss): focal / num_pos; GIoU weighted by the centerness target and
    divided by the sum of centerness targets; centerness BCE / num_pos."""

    def __init__(self, model_cfg, num_classes):
        super().__init__(model_cfg, num_classes)
        self.loss_centerness = model_cfg.loss_centerness
        self.centerness_fn = lookup_loss(self.loss_centerness, ("classification",), "model.loss_centerness.type")

    def forward(self, outputs, targets):
        matched = self.assign(outputs, targets)
        positive, valid = matched >= 0, matched != -2
        gt_boxes, gt_labels = gather_gt(matched, targets["boxes"], targets["labels"])
        num_pos = self.num_positives(positive)
        cls_targets = self.one_hot_targets(gt_labels, positive, torch.float32)
        anchors = outputs.anchors.expand(positive.shape[0], -1, -1)[positive]      # [P, 4]
        stds = anchors.new_tensor(ATSS_DELTA_STDS)
        deltas = outputs.box_regression[positive].float()                          # [P, 4]
        pos_gt = gt_boxes[positive]
        centerness = centerness_target(anchor_centers(anchors), pos_gt)            # [P]
        normaliser = reduce_mean(centerness.sum()).clamp(min=1.0)
        loss_box = self.weighted_box_loss(decode_deltas(anchors, deltas * stds), pos_gt, deltas,
                                          encode_deltas(anchors, pos_gt) / stds, centerness, normaliser)
        pred_centerness = outputs.centerness[positive].float()                     # [P]
        loss_centerness = self.centerness_fn(pred_centerness, centerness, **self.loss_centerness.params).sum() / num_pos
        return {"loss_cls": self.classification_loss(outputs.cls_logits, cls_targets, valid, num_pos),
                "loss_box": loss_box, "loss_centerness": loss_centerness * self.loss_centerness.weight,
                "num_pos": num_pos}


class GFLCriterion(DenseCriterion):
    """Generalized Focal Loss (mmdetection GFLHead.loss): QFL with the detached IoU of the decoded
    prediction as soft target / num_pos; GIoU and DFL weighted by the detached max class score w and
    divided by the sum of w; DFL averages the four sides."""

    def __init__(self, model_cfg, num_classes):
        super().__init__(model_cfg, num_classes)
        self.reg_max = model_cfg.head.reg_max
        self.loss_dfl = model_cfg.loss_dfl
        self.dfl_fn = lookup_loss(self.loss_dfl, ("distribution",), "model.loss_dfl.type")

    def forward(self, outputs, targets):
        matched = self.assign(outputs, targets)
        positive, valid = matched >= 0, matched != -2
        batch = positive.shape[0]
        gt_boxes, gt_labels = gather_gt(matched, targets["boxes"], targets["labels"])
        num_pos = self.num_positives(positive)
        centers = anchor_centers(outputs.anchors).expand(batch, -1, -1)[positive]  # [P, 2]
        strides = outputs.strides.expand(batch, -1)[positive]                      # [P]
        logits = outputs.box_regression[positive].float()                          # [P, 4 * R]
        pred_distances = distribution_integral(logits)                             # [P, 4] stride units
        pred_boxes = decode_distances(centers, pred_distances, strides)            # [P, 4] pixels
        pos_gt = gt_boxes[positive]                                                # [P, 4]

        # QFL soft target: IoU of the (detached) decoded prediction with its GT, at the GT class only.
        quality = box_iou_aligned(pred_boxes.detach(), pos_gt).clamp(min=0)
        cls_targets = torch.zeros_like(outputs.cls_logits, dtype=torch.float32)
        cls_targets[positive] = self.one_hot_targets(gt_labels[positive], torch.ones_like(quality, dtype=torch.bool),
                                                     torch.float32) * quality[:, None]
        loss_cls = self.classification_loss(outputs.cls_logits, cls_targets, valid, num_pos)

        weights = outputs.cls_logits[positive].detach().float().sigmoid().amax(dim=-1)  # [P]
        normaliser = reduce_mean(weights.sum()).clamp(min=1.0)
        raw_distances = encode_distances(centers, pos_gt, strides)                 # [P, 4] before clamping
        target_distances = raw_distances.clamp(min=0, max=self.reg_max - 0.01)
        loss_box = self.weighted_box_loss(pred_boxes, pos_gt, pred_distances, target_distances, weights, normaliser)
        dfl = self.dfl_fn(logits.reshape(-1, self.reg_max + 1), target_distances.reshape(-1), **self.loss_dfl.params)
        loss_dfl = (dfl.reshape(-1, 4).mean(dim=1) * weights).sum() / normaliser * self.loss_dfl.weight
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_dfl": loss_dfl, "num_pos": num_pos,
                "dfl_clamped": (raw_distances > self.reg_max - 0.01).sum().float()}


CRITERIA = {"retinanet": RetinaNetCriterion, "atss": ATSSCriterion, "gfl": GFLCriterion}
