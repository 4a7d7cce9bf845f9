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
import torch
import torch.nn.functional as F

from .focal import require_one_hot, target_entries, target_scores


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
    focus, weight = equalized_focus(pos_neg, gamma, scale, logits)                 # [C]
    negative_weight, positive_weight = (1.0, 1.0) if alpha < 0 else (1 - alpha, alpha)
    # target 0: (1 - alpha) w_j p^gamma_j softplus(x) (1 - p_t = p, -log(1 - p) = softplus(x)). The constant is
    # applied in place to softplus's output, which its backward does not need (pow's backward needs its output).
    loss = F.softplus(logits).mul_(negative_weight * weight) * torch.sigmoid(logits).pow(focus)
    rows, columns = target_entries(labels, logits.shape[-1])
    x = logits[rows, columns]
    loss[rows, columns] = (positive_weight * weight[columns] * torch.sigmoid(-x).pow(focus[columns])
                           * F.softplus(-x))
    return loss


@torch.no_grad()
def equalized_focal_grad(logits, labels, scores=None, pos_neg=None, alpha=0.25, gamma=2.0, scale=8.0):
    """Closed-form d(sum of equalized_focal_loss) / d logits, element by element, detached.

    With z = x for t = 1 and -x for t = 0, p_t = sigmoid(z), q = 1 - p_t and l = -log p_t = softplus(-z):
    dL/dz = -alpha_t w_j q^gamma_j (gamma_j p_t l + q), and dL/dx = (2t - 1) dL/dz. So
    target 0: dL/dx = (1 - alpha) w_j p^gamma_j (gamma_j (1 - p) softplus(x) + p) >= 0;
    target 1: dL/dx = -alpha w_j (1 - p)^gamma_j (gamma_j p softplus(-x) + 1 - p) <= 0.

    Args: as equalized_focal_loss. Returns: [N, C].
    """
    require_one_hot(scores, "equalized_focal")
    focus, weight = equalized_focus(pos_neg, gamma, scale, logits)
    negative_weight, positive_weight = (1.0, 1.0) if alpha < 0 else (1 - alpha, alpha)
    prob = torch.sigmoid(logits)
    grad = F.softplus(logits).mul_(1 - prob).mul_(focus).add_(prob)
    grad.mul_(prob.pow_(focus)).mul_(negative_weight * weight)                     # prob now holds p^gamma_j
    rows, columns = target_entries(labels, logits.shape[-1])
    x = logits[rows, columns]
    focus, p = focus[columns], torch.sigmoid(x)
    grad[rows, columns] = (-positive_weight * weight[columns] * (1 - p).pow(focus)
                           * (focus * p * F.softplus(-x) + 1 - p))
    return grad


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
    focus, weight = equalized_focus(pos_neg, beta, scale, logits)                  # [C]
    loss = F.softplus(logits).mul_(weight) * torch.sigmoid(logits).pow(focus)      # target 0: w_j BCE(x, 0) p^gamma_j
    rows, columns = target_entries(labels, logits.shape[-1])
    x, y = logits[rows, columns], target_scores(scores, rows, logits)
    loss[rows, columns] = weight[columns] * (F.softplus(x) - x * y) * (y - torch.sigmoid(x)).abs().pow(focus[columns])
    return loss


@torch.no_grad()
def equalized_quality_focal_grad(logits, labels, scores=None, pos_neg=None, beta=2.0, scale=8.0):
    """Closed-form d(sum of equalized_quality_focal_loss) / d logits, element by element, detached.

    With B = BCE(x, y) = softplus(x) - x y (dB/dx = p - y) and d = |p - y| (dd/dx = sign(p - y) p (1 - p)):
    dL/dx = w_j sign(p - y) d^(gamma_j - 1) (d^2 + gamma_j p (1 - p) B); zero at p = y, the minimum.
    Target 0 (d = p): w_j p^gamma_j (p + gamma_j (1 - p) softplus(x)). Needs beta >= 1 (gamma_j - 1 >= 0).

    Args: as equalized_quality_focal_loss. Returns: [N, C].
    """
    focus, weight = equalized_focus(pos_neg, beta, scale, logits)
    prob = torch.sigmoid(logits)
    grad = F.softplus(logits).mul_(1 - prob).mul_(focus).add_(prob)
    grad.mul_(prob.pow_(focus)).mul_(weight)
    rows, columns = target_entries(labels, logits.shape[-1])
    x, y = logits[rows, columns], target_scores(scores, rows, logits)
    focus, p = focus[columns], torch.sigmoid(x)
    distance = (p - y).abs()
    grad[rows, columns] = (weight[columns] * torch.sign(p - y) * distance.pow(focus - 1)
                           * (distance * distance + focus * p * (1 - p) * (F.softplus(x) - x * y)))
    return grad
