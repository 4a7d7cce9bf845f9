"""Criteria: assignment -> targets -> losses -> normalisation, one class per loss structure.

    losses = criterion(outputs, targets)    # dict: 'loss_*' terms (weighted) and detached statistics

targets (data/collate.py): boxes [B, M, 4], labels [B, M], valid [B, M], crowd [B, M], and pad_sizes [B, 2]
(each image's size rounded up to the size divisor; absent: the whole batch tensor is the image).
The head family (detector/families.py) decodes and encodes boxes and says whether classification targets
are one-hot or soft; the criterion never asks which head it trains.

Normalisation, as mmdetection 3.3 (REFERENCE.md), written once in `num_positives` and `box_normaliser`:
classification losses, RetinaNet's box loss and ATSS's centerness loss are divided by the sum over images of
max(positives, 1), averaged over ranks and at least 1. ATSS box losses are divided by the sum of centerness targets,
GFL box and DFL losses by the sum of the detached max class scores, both averaged over ranks and clamped at 1 (in
one process; at 1 / world size under DDP, so that N ranks train as one process on their N batches). Anchors
outside an image's own padded area are never positive and take no loss. With no positive the box losses are
exactly 0 and still in the graph (every parameter gets a gradient under DDP).

Classification targets stay an index (labels [B, A], -1 for background, and for soft targets scores [B, A]):
with LVIS's 1203 classes a [B, A, C] target or a masked copy of the logits would each be as large as the logits.
The equalized losses (EFL, EQFL) keep per-class gradient statistics G+, G-, g_j as buffers (saved in checkpoints),
accumulated from their closed-form gradient in training, summed over ranks; see update_gradient_statistics.
"""
import inspect

import torch
from torch import nn

import losses

from .anchors import anchor_centers, inside_padded_images
from .assign import IGNORE, atss_assign, max_iou_assign
from .box_ops import box_iou_aligned
from .config import ConfigError
from .dist import get_world_size, reduce_mean, reduce_sum
from .families import at_least_float32

# Arguments of a loss function that the criterion supplies (not config parameters).
LOSS_INPUTS = ("scores", "pos_neg")


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
        if name not in accepted or name in LOSS_INPUTS:
            valid = [a for a in accepted if a not in LOSS_INPUTS]
            raise ConfigError(f"{key.rsplit('.', 1)[0]}.params.{name}: not a parameter of '{loss_cfg.type}' "
                              f"(valid: {', '.join(valid) or 'none'})")
    return function


def check_soft_target_loss(loss_type, key, trainer):
    """`trainer` trains soft targets: a one-hot-only loss there would silently get IoU scores (ConfigError)."""
    if loss_type in losses.ONE_HOT_ONLY:
        soft = [name for name in losses.CLASSIFICATION_LOSSES if name not in losses.ONE_HOT_ONLY]
        equalized = " (equalized_quality_focal is EFL's form for soft targets)" if loss_type in losses.GRADIENTS else ""
        raise ConfigError(f"{key}: '{loss_type}' takes one-hot targets, but {trainer} trains soft targets; use one "
                          f"of {', '.join(soft)}{equalized}")


def box_normaliser(weights):
    """Normaliser of weighted box losses: the sum of the positives' weights [P] over every rank's batch, clamped
    at 1, divided by the number of ranks (DDP averages the ranks' gradients).

    mmdetection clamps the rank mean at 1 (`reduce_mean(sum).clamp_(min=1)`); in one process the two are the same,
    and clamping the mean at 1 / world_size keeps N ranks of b images equal to one process of N b images when the
    sum is below 1 (GFL's first steps, whose weights are class scores near the 0.01 prior).
    """
    return reduce_mean(weights.sum()).clamp(min=1.0 / get_world_size())


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


def _assign_max_iou(config, outputs, targets, anchors_valid, anchors_per_location):
    return max_iou_assign(outputs.anchors, targets["boxes"], targets["valid"], targets["crowd"],
                          pos_iou_thr=config.pos_iou_thr, neg_iou_thr=config.neg_iou_thr,
                          min_pos_iou=config.min_pos_iou, low_quality=config.low_quality,
                          crowd_iof_thr=config.crowd_iof_thr, anchors_valid=anchors_valid)[0]


def _assign_atss(config, outputs, targets, anchors_valid, anchors_per_location):
    return atss_assign(outputs.anchors, outputs.num_per_level, targets["boxes"], targets["valid"],
                       targets["crowd"], topk=config.topk, anchors_per_location=anchors_per_location,
                       crowd_iof_thr=config.crowd_iof_thr, anchors_valid=anchors_valid)[0]


# model.assigner.type -> assignment of a batch: matched [B, A] (>= 0 GT index, -1 background, -2 ignore)
ASSIGNERS = {"max_iou": _assign_max_iou, "atss": _assign_atss}


class DenseCriterion(nn.Module):
    """Shared pieces: loss lookup, assignment, the classification loss and its normaliser.

    Subclasses implement forward(outputs, targets) -> dict of 'loss_*' terms and statistics.
    """

    def __init__(self, model_cfg, family, num_classes):
        super().__init__()
        self.family = family
        self.num_classes = num_classes
        self.assigner = model_cfg.assigner   # its type is a key of ASSIGNERS (detector.check_model_config)
        self.anchor_offset = model_cfg.anchors.offset
        self.anchors_per_location = len(model_cfg.anchors.ratios) * model_cfg.anchors.scales_per_octave
        self.loss_cls, self.loss_box = model_cfg.loss_cls, model_cfg.loss_box
        self.cls_fn = lookup_loss(self.loss_cls, ("classification",), "model.loss_cls.type")
        self.box_fn = lookup_loss(self.loss_box, ("box", "delta"), "model.loss_box.type")
        self.box_on_codes = losses.loss_kind(self.loss_box.type) == "delta"  # l1-type losses compare encoded targets
        if family.soft_targets:
            check_soft_target_loss(self.loss_cls.type, "model.loss_cls.type",
                                   f"the {model_cfg.head.type} head family")
        self.cls_grad_fn = losses.GRADIENTS.get(self.loss_cls.type)
        if self.cls_grad_fn is not None:
            # EFL gradient statistics G+ / G- per class, summed over ranks, kept in checkpoints (REFERENCE.md).
            self.register_buffer("efl_pos_grad", torch.zeros(num_classes, dtype=torch.float64))
            self.register_buffer("efl_neg_grad", torch.zeros(num_classes, dtype=torch.float64))
            self.register_buffer("efl_pos_neg", torch.ones(num_classes, dtype=torch.float64))

    def assign(self, outputs, targets):
        """matched [B, A]: >= 0 GT index, -1 background, -2 ignore (anchors outside an image's padded area too)."""
        anchors_valid = None
        if targets.get("pad_sizes") is not None:
            anchors_valid = inside_padded_images(outputs.anchors, outputs.strides, self.anchor_offset,
                                                 targets["pad_sizes"])
        return ASSIGNERS[self.assigner.type](self.assigner, outputs, targets, anchors_valid,
                                             self.anchors_per_location)

    def classification_loss(self, logits, labels, scores, valid, num_pos):
        """Sum of the elementwise loss over non-ignored anchors (times their weights) / num_pos, times the config
        weight.

        Args:
            logits: [B, A, C] class logits.
            labels: [B, A] long, the GT class of positive anchors, -1 for the others.
            scores: [B, A] soft target at the label (GFL's IoU), or None for one-hot targets.
            valid: [B, A] bool, False for ignored anchors (and anchors outside an image's padded area), or float
                per-anchor weights (0 for those; RetinaNet's per-image normaliser).
            num_pos: the normaliser (num_positives; 1 with RetinaNet's per-image weights).
        Targets stay an index: no [B, A, C] target is built and no masked copy of the logits is made (with LVIS's
        1203 classes each would be as large as the logits); ignored rows are computed and weighted by 0.
        In training, the equalized losses then add this step's gradient to their statistics (G+, G-, g_j).
        """
        logits = at_least_float32(logits).flatten(0, 1)                                   # [N, C] view, N = B A
        labels, weights = labels.flatten(), valid.flatten().to(logits.dtype)              # [N]
        scores = scores.flatten() if scores is not None else None                         # [N]
        params = dict(self.loss_cls.params)
        if self.cls_grad_fn is not None:
            params["pos_neg"] = self.efl_pos_neg.to(logits.dtype, copy=True)  # this step's g_j, before the update
        elementwise = self.cls_fn(logits, labels, scores, **params)                       # [N, C]
        loss = (elementwise.sum(dim=-1) * weights).sum() / num_pos * self.loss_cls.weight
        del elementwise  # [N, C], not needed by the backward (losses/focal.py's ClosedFormLoss keeps only the logits)
        if self.cls_grad_fn is not None and self.training:
            self.update_gradient_statistics(logits.detach(), labels, scores, weights, params,
                                            self.loss_cls.weight / num_pos.to(torch.float64))
        return loss

    @torch.no_grad()
    def update_gradient_statistics(self, logits, labels, scores, weights, params, scale):
        """Equalized losses: G+_j += sum of |dL/dx| over the positive entries of class j, G-_j over its negative
        entries, g_j = clamp(G+_j / G-_j, 0, 1) (REFERENCE.md, EFL; UP's collect_grad).

        dL/dx is the closed form (losses.GRADIENTS) of this step's loss, `scale` (weight / num_pos) included, so no
        backward hook is needed. Under DDP each rank's share is divided by the world size before the sum over ranks:
        the statistics are those of the gradient DDP applies (the mean over ranks), and two ranks accumulate what
        one process accumulates on the two batches together. A positive entry is a positive anchor's GT class
        (whatever its soft score); every other entry of a non-ignored anchor is negative.

        Args:
            logits: [N, C] detached. labels: [N] long (-1 background). scores: [N] or None.
            weights: [N] 1 for non-ignored anchors, 0 for ignored ones (RetinaNet's per-image normaliser: 1 /
                (B max(positives of the anchor's image, 1)), with scale = weight / 1).
        """
        grad = self.cls_grad_fn(logits, labels, scores, **params).abs_()                # [N, C], this step's own
        rows, columns = losses.target_entries(labels, logits.shape[-1])            # positive entries [P]
        positive = torch.zeros_like(self.efl_pos_grad).index_add_(
            0, columns, (grad[rows, columns] * weights[rows]).to(self.efl_pos_grad.dtype))
        grad[rows, columns] = 0
        negative = (weights @ grad).to(self.efl_neg_grad.dtype)                          # [C], no [N, C] product
        statistics = reduce_sum(torch.stack([positive, negative]) * (scale / get_world_size()))
        self.efl_pos_grad += statistics[0]
        self.efl_neg_grad += statistics[1]
        self.efl_pos_neg.copy_((self.efl_pos_grad / (self.efl_neg_grad + 1e-10)).clamp(0, 1))

    def weighted_box_loss(self, pred_boxes, gt_boxes, pred_codes, target_codes, weights, normaliser):
        """Box loss of the positives [P], each weighted, summed, divided by normaliser, times the config weight.

        Box-space losses (IoU family) compare decoded boxes in at least fp32; delta-space losses (L1 family)
        compare the family's codes and are summed over the coordinates.
        """
        if self.box_on_codes:
            elementwise = self.box_fn(pred_codes, target_codes, **self.loss_box.params).sum(dim=-1)
        else:
            elementwise = self.box_fn(pred_boxes, gt_boxes, **self.loss_box.params)
        return (elementwise * weights).sum() / normaliser * self.loss_box.weight

    def num_positives(self, positive):
        """Sum over images of max(positives, 1), averaged over ranks, at least 1 (mmdetection's avg_factor)."""
        return reduce_mean(positive.sum(dim=1).clamp(min=1).sum().float()).clamp(min=1.0)

    def positives(self, outputs, targets):
        """Assignment and what every criterion gathers from it (positives flattened over the batch: P rows)."""
        matched = self.assign(outputs, targets)
        positive, valid = matched >= 0, matched != IGNORE                          # [B, A]
        batch = positive.shape[0]
        gt_boxes, gt_labels = gather_gt(matched, targets["boxes"], targets["labels"])
        dtype = at_least_float32(outputs.box_regression).dtype
        return {"positive": positive, "valid": valid,
                "labels": torch.where(positive, gt_labels, -1),                         # [B, A] class index or -1
                "anchors": outputs.anchors.to(dtype).expand(batch, -1, -1)[positive],   # [P, 4]
                "strides": outputs.strides.to(dtype).expand(batch, -1)[positive],       # [P]
                "gt_boxes": gt_boxes[positive].to(dtype),                               # [P, 4]
                "codes": self.family.codes(outputs.box_regression[positive])}           # [P, 4]


class RetinaNetCriterion(DenseCriterion):
    """Focal loss over non-ignored anchors + box loss over positives, both / num_pos (mmdetection RetinaNet).

    model.normaliser 'image' (torchvision's RetinaNet) divides each image's two losses by its own max(positives, 1)
    and averages over the images of the batch (under DDP the gradient mean over ranks makes it the mean over all
    images when the ranks' batches are equal). num_pos stays mmdetection's normaliser, as a statistic.
    """

    def __init__(self, model_cfg, family, num_classes):
        super().__init__(model_cfg, family, num_classes)
        self.per_image = model_cfg.normaliser == "image"

    def forward(self, outputs, targets):
        pos = self.positives(outputs, targets)
        positive, valid = pos["positive"], pos["valid"]                            # [B, A]
        num_pos = self.num_positives(positive)
        normaliser, cls_weights, box_weights = num_pos, valid, 1.0
        if self.per_image:
            batch = positive.shape[0]
            image_weight = 1.0 / (positive.sum(dim=1).clamp(min=1) * batch).to(pos["anchors"].dtype)  # [B]
            cls_weights = valid * image_weight[:, None]                            # [B, A]
            box_weights = image_weight[:, None].expand_as(positive)[positive]      # [P]
            normaliser = torch.ones((), device=num_pos.device)   # a tensor: classification_loss casts it
        pred_boxes = self.family.decode(pos["anchors"], pos["strides"], pos["codes"])
        target_codes = self.family.encode(pos["anchors"], pos["strides"], pos["gt_boxes"])
        loss_box = self.weighted_box_loss(pred_boxes, pos["gt_boxes"], pos["codes"], target_codes, box_weights,
                                          normaliser)
        loss_cls = self.classification_loss(outputs.cls_logits, pos["labels"], None, cls_weights, normaliser)
        return {"loss_cls": loss_cls, "loss_box": loss_box, "num_pos": num_pos}


class CenternessCriterion(DenseCriterion):
    """ATSS (mmdetection ATSSHead.loss): focal / num_pos; box loss weighted by the centerness target and
    divided by the sum of centerness targets; centerness BCE / num_pos."""

    def __init__(self, model_cfg, family, num_classes):
        super().__init__(model_cfg, family, num_classes)
        self.loss_centerness = model_cfg.loss_centerness
        self.centerness_fn = lookup_loss(self.loss_centerness, ("classification",), "model.loss_centerness.type")
        check_soft_target_loss(self.loss_centerness.type, "model.loss_centerness.type", "the centerness branch")
        if self.loss_centerness.type in losses.GRADIENTS:
            raise ConfigError(f"model.loss_centerness.type: '{self.loss_centerness.type}' needs class statistics; "
                              f"the centerness branch has no classes")

    def forward(self, outputs, targets):
        pos = self.positives(outputs, targets)
        num_pos = self.num_positives(pos["positive"])
        centerness = centerness_target(anchor_centers(pos["anchors"]), pos["gt_boxes"])      # [P]
        normaliser = box_normaliser(centerness)
        pred_boxes = self.family.decode(pos["anchors"], pos["strides"], pos["codes"])
        target_codes = self.family.encode(pos["anchors"], pos["strides"], pos["gt_boxes"])
        loss_box = self.weighted_box_loss(pred_boxes, pos["gt_boxes"], pos["codes"], target_codes, centerness,
                                          normaliser)
        pred_centerness = at_least_float32(outputs.centerness[pos["positive"]])[:, None]        # [P, 1]: one class
        loss_centerness = self.centerness_fn(pred_centerness, torch.zeros_like(pos["strides"], dtype=torch.long),
                                             centerness, **self.loss_centerness.params).sum()
        return {"loss_cls": self.classification_loss(outputs.cls_logits, pos["labels"], None, pos["valid"], num_pos),
                "loss_box": loss_box,
                "loss_centerness": loss_centerness / num_pos * self.loss_centerness.weight,
                "num_pos": num_pos}


class QualityCriterion(DenseCriterion):
    """Generalized Focal Loss (mmdetection GFLHead.loss): QFL with the detached IoU of the decoded
    prediction as soft target / num_pos; box loss and DFL weighted by the detached max class score w and
    divided by the sum of w; DFL averages the four sides."""

    def __init__(self, model_cfg, family, num_classes):
        super().__init__(model_cfg, family, num_classes)
        self.loss_dfl = model_cfg.loss_dfl
        self.dfl_fn = lookup_loss(self.loss_dfl, ("distribution",), "model.loss_dfl.type")

    def forward(self, outputs, targets):
        pos = self.positives(outputs, targets)
        positive = pos["positive"]
        num_pos = self.num_positives(positive)
        pred_boxes = self.family.decode(pos["anchors"], pos["strides"], pos["codes"])   # [P, 4] pixels

        # QFL soft target: IoU of the (detached) decoded prediction with its GT, at the GT class only.
        quality = box_iou_aligned(pred_boxes.detach(), pos["gt_boxes"]).clamp(min=0)     # [P]
        scores = torch.zeros(positive.shape, dtype=quality.dtype, device=quality.device)
        scores[positive] = quality                                                       # [B, A]
        loss_cls = self.classification_loss(outputs.cls_logits, pos["labels"], scores, pos["valid"], num_pos)

        weights = at_least_float32(outputs.cls_logits[positive].detach()).sigmoid().amax(dim=-1)  # [P]
        normaliser = box_normaliser(weights)
        raw_distances = self.family.encode(pos["anchors"], pos["strides"], pos["gt_boxes"], clamp=False)
        target_distances = self.family.encode(pos["anchors"], pos["strides"], pos["gt_boxes"])  # [P, 4] clamped
        loss_box = self.weighted_box_loss(pred_boxes, pos["gt_boxes"], pos["codes"], target_distances, weights,
                                          normaliser)
        bins = self.family.reg_max + 1
        logits = at_least_float32(outputs.box_regression[positive]).reshape(-1, bins)          # [P * 4, R]
        dfl = self.dfl_fn(logits, target_distances.reshape(-1), **self.loss_dfl.params)
        loss_dfl = (dfl.reshape(-1, 4).mean(dim=1) * weights).sum() / normaliser * self.loss_dfl.weight
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_dfl": loss_dfl, "num_pos": num_pos,
                "dfl_clamped": (raw_distances > self.family.reg_max - self.family.DFL_EPS).sum().float()}
