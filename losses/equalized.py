"""Equalized Focal Loss and Equalized Quality Focal Loss (long-tailed detection), with closed-form gradients.

Equalized Focal Loss (Li et al. 2022; ModelTC/United-Perception efl.py): per class j,
    gamma_j = gamma + scale (1 - g_j)    focusing factor,    w_j = gamma_j / gamma    weighting factor,
both constants in the backward pass; g_j in [0, 1] is the accumulated ratio of the class's positive to
negative gradient magnitudes (the criterion keeps it), 1 at the start, where EFL is the focal loss.
Equalized QFL (ours, for GFL's soft targets): QFL whose modulating exponent beta becomes the per-class
gamma_j = beta + scale (1 - g_j), weighted by gamma_j / beta; with every g_j = 1 it is QFL.

Targets are given by index as in losses/focal.py: labels [N] (outside [0, C): background row), scores [N]
(soft target at the label; None: 1). `*_grad` return d(sum of the loss) / d logits element by element,
detached, from which the criterion accumulates the g_j statistics without backward hooks (REFERENCE.md).
"""
from .focal import focal_gradient, focal_loss, quality_gradient, quality_loss, require_one_hot


def equalized_focus(pos_neg, gamma, scale, like):
    """Per-class focusing factor gamma_j = gamma + scale (1 - g_j) [C] and weighting factor gamma_j / gamma [C],
    detached, in the dtype of `like`."""
    focus = gamma + scale * (1 - pos_neg.detach().to(like.dtype))
    return focus, focus / gamma


def equalized_focal_loss(logits, labels, scores=None, pos_neg=None, alpha=0.25, gamma=2.0, scale=8.0):
    """Equalized Focal Loss: EFL_ij = -alpha_t w_j (1 - p_t)^gamma_j log p_t, one-hot targets.

    Args:
        logits: [N, C] raw scores.
        labels: [N] long class of each row's 1, outside [0, C) for an all-zero row.
        scores: must be None (one-hot only).
        pos_neg: [C] g_j in [0, 1], treated as a constant (required).
    Returns:
        [N, C] element-wise loss; with pos_neg all ones, losses.sigmoid_focal_loss.
    """
    require_one_hot(scores, "equalized_focal")
    return focal_loss(logits, labels, *equalized_focus(pos_neg, gamma, scale, logits), alpha)


def equalized_focal_grad(logits, labels, scores=None, pos_neg=None, alpha=0.25, gamma=2.0, scale=8.0):
    """Closed-form d(sum of equalized_focal_loss) / d logits, element by element, detached [N, C]
    (losses/focal.py, focal_gradient). Args: as equalized_focal_loss."""
    require_one_hot(scores, "equalized_focal")
    return focal_gradient(logits, labels, *equalized_focus(pos_neg, gamma, scale, logits), alpha)


def equalized_quality_focal_loss(logits, labels, scores=None, pos_neg=None, beta=2.0, scale=8.0):
    """Equalized Quality Focal Loss: w_j BCE(x, y) |y - p|^gamma_j, gamma_j = beta + scale (1 - g_j),
    w_j = gamma_j / beta.

    Args:
        logits: [N, C] raw joint class-quality scores.
        labels: [N] long GT class of positive rows, outside [0, C) for the others.
        scores: [N] float soft targets in [0, 1] at the label (IoU), or None for 1.
        pos_neg: [C] g_j in [0, 1], a constant (required).
    Returns:
        [N, C] element-wise loss; with pos_neg all ones, losses.quality_focal_loss.
    """
    return quality_loss(logits, labels, scores, *equalized_focus(pos_neg, beta, scale, logits))


def equalized_quality_focal_grad(logits, labels, scores=None, pos_neg=None, beta=2.0, scale=8.0):
    """Closed-form d(sum of equalized_quality_focal_loss) / d logits, element by element, detached [N, C]
    (losses/focal.py, quality_gradient: w_j sign(p - y) d^(gamma_j - 1) (d^2 + gamma_j p (1 - p) BCE(x, y)),
    d = |p - y|). Args: as equalized_quality_focal_loss."""
    return quality_gradient(logits, labels, scores, *equalized_focus(pos_neg, beta, scale, logits))
