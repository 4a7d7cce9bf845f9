"""Loss functions of focaldet: pure element-wise functions, one signature per family.

Nothing here reduces; the criterion weights, sums and normalises (one rule, written once there).
This package imports only torch. Formulas: ../shared/REFERENCE.md, section "Losses".

Families (N rows, C classes, R = reg_max + 1 bins, K coordinates):
    classification  fn(logits [N, C], labels [N] long, scores [N] float or None, **params) -> [N, C]
                    targets by index (never a dense [N, C] tensor): row i has target scores[i]
                    (1 when None) at class labels[i], 0 elsewhere; a label outside [0, C) is a
                    background row. ONE-HOT-only losses refuse scores; the equalized losses also
                    take pos_neg [C] (the g_j statistics) and have a closed-form GRADIENTS entry.
    box             fn(pred [N, 4], target [N, 4], **params) -> [N]; decoded xyxy boxes in pixels.
    delta           fn(pred [N, K], target [N, K], **params) -> [N, K]; encoded deltas / distances.
    distribution    fn(logits [N, R], target [N] float in [0, R - 1]) -> [N]; GFL's DFL.

A config chooses a loss by name, e.g. `model.loss_box.type=focal_eiou`; `get_loss(name)` looks it
up in the tables below and lists the valid names when it is unknown.
"""
import difflib

from .equalized import (
    equalized_focal_grad,
    equalized_focal_loss,
    equalized_quality_focal_grad,
    equalized_quality_focal_loss,
)
from .focal import (
    binary_cross_entropy,
    distribution_focal_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
    target_entries,
)
from .iou import aligned_iou, ciou_loss, diou_loss, eiou_loss, focal_eiou_loss, giou_loss, iou_loss
from .regression import focal_l1_loss, l1_loss, smooth_l1_loss

CLASSIFICATION_LOSSES = {
    'focal': sigmoid_focal_loss,
    'quality_focal': quality_focal_loss,
    'equalized_focal': equalized_focal_loss,
    'equalized_quality_focal': equalized_quality_focal_loss,
    'bce': binary_cross_entropy,
}
# Classification losses that take one-hot targets only: a head family that trains soft (IoU) targets cannot use them.
ONE_HOT_ONLY = ('focal', 'equalized_focal')
# Losses driven by per-class gradient statistics (pos_neg): name -> closed-form d(sum of loss) / d logits [N, C].
GRADIENTS = {
    'equalized_focal': equalized_focal_grad,
    'equalized_quality_focal': equalized_quality_focal_grad,
}
BOX_LOSSES = {
    'iou': iou_loss,
    'giou': giou_loss,
    'diou': diou_loss,
    'ciou': ciou_loss,
    'eiou': eiou_loss,
    'focal_eiou': focal_eiou_loss,
}
DELTA_LOSSES = {
    'l1': l1_loss,
    'smooth_l1': smooth_l1_loss,
    'focal_l1': focal_l1_loss,
}
DISTRIBUTION_LOSSES = {
    'distribution_focal': distribution_focal_loss,
}
LOSS_TABLES = {
    'classification': CLASSIFICATION_LOSSES,
    'box': BOX_LOSSES,
    'delta': DELTA_LOSSES,
    'distribution': DISTRIBUTION_LOSSES,
}


def loss_kind(name):
    """Family of a loss name: 'classification', 'box', 'delta' or 'distribution'."""
    for kind, table in LOSS_TABLES.items():
        if name in table:
            return kind
    valid = [loss_name for table in LOSS_TABLES.values() for loss_name in table]
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ''
    raise ValueError(f"unknown loss {name!r}; valid: {', '.join(valid)}{hint}")


def get_loss(name):
    """The element-wise loss function called `name`, from whichever table holds it."""
    return LOSS_TABLES[loss_kind(name)][name]


__all__ = [
    'CLASSIFICATION_LOSSES', 'BOX_LOSSES', 'DELTA_LOSSES', 'DISTRIBUTION_LOSSES', 'LOSS_TABLES', 'ONE_HOT_ONLY',
    'GRADIENTS', 'get_loss', 'loss_kind', 'target_entries', 'aligned_iou', 'binary_cross_entropy',
    'sigmoid_focal_loss', 'quality_focal_loss', 'equalized_focal_loss', 'equalized_focal_grad',
    'equalized_quality_focal_loss', 'equalized_quality_focal_grad', 'distribution_focal_loss',
    'iou_loss', 'giou_loss', 'diou_loss', 'ciou_loss', 'eiou_loss', 'focal_eiou_loss',
    'l1_loss', 'smooth_l1_loss', 'focal_l1_loss',
]
