"""Loss functions of focaldet: pure element-wise functions, one signature per family.

Nothing here reduces; the criterion weights, sums and normalises (one rule, written once there).
This package imports only torch. Formulas: ../shared/REFERENCE.md, section "Losses".

Families (N rows, C classes, R = reg_max + 1 bins, K coordinates):
    classification  fn(logits [N, C], targets [N, C] float, **params) -> [N, C]
                    targets one-hot for focal / equalized_focal (equalized_focal also takes
                    pos_neg [C]); soft IoU scores for quality_focal.
    box             fn(pred [N, 4], target [N, 4], **params) -> [N]; decoded xyxy boxes in pixels.
    delta           fn(pred [N, K], target [N, K], **params) -> [N, K]; encoded deltas / distances.
    distribution    fn(logits [N, R], target [N] float in [0, R - 1]) -> [N]; GFL's DFL.

A config chooses a loss by name, e.g. `model.loss_box.type=focal_eiou`; `get_loss(name)` looks it
up in the tables below and lists the valid names when it is unknown.
"""
import difflib

from .focal import (
    binary_cross_entropy,
    distribution_focal_loss,
    equalized_focal_grad,
    equalized_focal_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from .iou import aligned_iou, ciou_loss, diou_loss, eiou_loss, focal_eiou_loss, giou_loss, iou_loss
from .regression import focal_l1_loss, l1_loss, smooth_l1_loss

CLASSIFICATION_LOSSES = {
    'focal': sigmoid_focal_loss,
    'quality_focal': quality_focal_loss,
    'equalized_focal': equalized_focal_loss,
    'bce': binary_cross_entropy,
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
    'CLASSIFICATION_LOSSES', 'BOX_LOSSES', 'DELTA_LOSSES', 'DISTRIBUTION_LOSSES', 'LOSS_TABLES',
    'get_loss', 'loss_kind', 'aligned_iou', 'equalized_focal_grad',
    'sigmoid_focal_loss', 'quality_focal_loss', 'equalized_focal_loss', 'distribution_focal_loss',
    'iou_loss', 'giou_loss', 'diou_loss', 'ciou_loss', 'eiou_loss', 'focal_eiou_loss',
    'l1_loss', 'smooth_l1_loss', 'focal_l1_loss',
]
