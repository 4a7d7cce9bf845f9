"""Focal-family classification losses and the Distribution Focal Loss (all element-wise).

Shapes: N rows (anchors), C foreground classes (one sigmoid per class, no background logit),
R = reg_max + 1 distribution bins. Nothing is reduced here; the criterion sums and normalises.
Formulas: ../shared/REFERENCE.md, section "Losses". p = sigmoid(logit) throughout.

Classification targets are given by index, never as a dense [N, C] tensor: row i has target
scores[i] (1 when scores is None: one-hot) at class labels[i], and 0 at every other class; a label
outside [0, C) (the criterion's -1 for background) gives an all-zero row. With C = 1203 (LVIS) a
dense target would be as large as the logits. The focal and quality losses run through
losses/closed_form.py: their values, and a backward from their closed-form gradient.
"""
import torch.nn.functional as F

from .closed_form import focal_loss, quality_loss, target_entries, target_scores


def require_one_hot(scores, name):
    """One-hot-only losses refuse soft scores (the criterion rejects such pairs at config time)."""
    if scores is not None:
        raise ValueError(f"{name} takes one-hot targets only (scores must be None); "
                         "quality_focal and equalized_quality_focal take soft scores")


def binary_cross_entropy(logits, labels, scores=None):
    """Plain sigmoid BCE, elementwise: -[y log p + (1 - y) log(1 - p)] (ATSS centerness: C = 1, scores the
    centerness targets). Plain autograd: it serves small inputs.

    Args:
        logits: [N, C]. labels: [N] long (outside [0, C): no target). scores: [N] float or None (one-hot).
    Returns:
        [N, C] element-wise loss.
    """
    loss = F.softplus(logits)                                   # target 0: -log(1 - p) = softplus(x)
    rows, columns = target_entries(labels, logits.shape[-1])
    x = logits[rows, columns]
    loss[rows, columns] = F.softplus(x) - x * target_scores(scores, rows, logits)
    return loss


def sigmoid_focal_loss(logits, labels, scores=None, alpha=0.25, gamma=2.0):
    """Focal loss (Lin et al. 2017): FL = -alpha_t (1 - p_t)^gamma log p_t, one-hot targets.

    p_t = p where t = 1 and 1 - p where t = 0; alpha_t = alpha where t = 1 and 1 - alpha where t = 0
    (alpha < 0 disables it). -log p_t is a softplus, so large logits do not overflow. gamma = 0 with
    alpha < 0 is plain BCE. Same numbers as torchvision.ops.sigmoid_focal_loss and mmdetection's
    py_sigmoid_focal_loss on one-hot targets.

    Args:
        logits: [N, C] raw scores.
        labels: [N] long, the class of each row's 1, or outside [0, C) for an all-zero row.
        scores: must be None (one-hot only).
    Returns:
        [N, C] element-wise loss.
    """
    require_one_hot(scores, "focal")
    return focal_loss(logits, labels, float(gamma), 1.0, alpha)


def quality_focal_loss(logits, labels, scores=None, beta=2.0):
    """Quality Focal Loss (Li et al. 2020, GFL): QFL = BCE(x, y) * |y - sigmoid(x)|^beta.

    y is the soft target: the IoU of the (detached) decoded box with its GT at the GT class,
    0 for every other entry. The minimum over p is at p = y. As in mmdetection's
    gfocal_loss.quality_focal_loss, the modulating factor |y - p|^beta is not detached
    (its derivative is part of the gradient). beta >= 1.

    Args:
        logits: [N, C] raw joint class-quality scores.
        labels: [N] long GT class of positive rows, outside [0, C) for the others.
        scores: [N] float soft scores in [0, 1] (read at rows with a label), or None for 1 (one-hot).
    Returns:
        [N, C] element-wise loss (mmdetection sums it over classes; the criterion decides).
    """
    return quality_loss(logits, labels, scores, float(beta), 1.0)


def distribution_focal_loss(logits, target):
    """Distribution Focal Loss (Li et al. 2020, GFL).

    With y_l = floor(y), y_r = y_l + 1 and S = softmax over the R bins:
    DFL = -[(y_r - y) log S[y_l] + (y - y_l) log S[y_r]]. The left bin is weighted by the
    distance to the right edge. At an integer y = k this is the cross-entropy at bin k.
    y must lie in [0, R - 1]; at y = R - 1 exactly the right weight is 0 and its index is
    clamped, so no bin R is ever read.

    Args:
        logits: [N, R] one logit per bin 0..R-1 (R = reg_max + 1).
        target: [N] float distances in bin units.
    Returns:
        [N] element-wise loss.
    """
    num_bins = logits.shape[-1]
    target = target.to(logits.dtype)
    left = target.detach().floor().long().clamp(0, num_bins - 1)  # [N]
    weight_left = (left + 1).to(logits.dtype) - target
    weight_right = target - left.to(logits.dtype)
    right = (left + 1).clamp(max=num_bins - 1)
    log_prob = F.log_softmax(logits, dim=-1)  # [N, R]
    log_left = log_prob.gather(-1, left.unsqueeze(-1)).squeeze(-1)  # [N]
    log_right = log_prob.gather(-1, right.unsqueeze(-1)).squeeze(-1)  # [N]
    return -(weight_left * log_left + weight_right * log_right)
