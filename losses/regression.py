"""Coordinate-wise regression losses on encoded targets (box deltas or side distances).

pred and target are [N, K] (K = 4 coordinates, any matching shape works); every loss returns the
element-wise [N, K] tensor. Formulas: ../shared/REFERENCE.md, section "Losses".
"""
import math

import torch


def l1_loss(pred, target):
    """|pred - target|, [N, K] (mmdetection's RetinaNet default)."""
    return (pred - target).abs()


def smooth_l1_loss(pred, target, beta=1.0 / 9):
    """Smooth L1 (Girshick 2015): 0.5 x^2 / beta for x < beta, else x - 0.5 beta, x = |pred - target|.

    The default beta = 1/9 (about 0.11) is the value of the original Detectron RetinaNet
    (BBOX_REG_BETA = 0.11): RetinaNet's deltas are small, so the quadratic zone is kept narrow.
    beta = 0 is exactly L1 (no division by zero).

    Returns: [N, K].
    """
    difference = (pred - target).abs()
    if beta <= 0:
        return difference
    return torch.where(difference < beta, 0.5 * difference ** 2 / beta, difference - 0.5 * beta)


def focal_l1_loss(pred, target, alpha=None, beta=0.5):
    """Focal L1 (Zhang et al. 2021, Focal-EIoU paper) on x = |pred - target|.

    L = -alpha x^2 (2 ln(beta x) - 1) / 4 for x < 1, and -alpha ln(beta) x + C for x >= 1 with
    C = (2 alpha ln(beta) + alpha) / 4, so that L and its gradient are continuous at x = 1.
    The gradient -alpha x ln(beta x) vanishes at x = 0, peaks at x = 1 / (e beta) and settles to
    -alpha ln(beta) for outliers; 1/e <= beta <= 1 keeps the peak inside (0, 1].

    Defaults (**ours**): alpha = e * beta (alpha=None), which makes the peak gradient exactly 1 for
    every beta (the paper's normalisation); beta = 0.5 puts the peak at x = 2/e ~ 0.74 and leaves
    outliers a gradient of (e/2) ln 2 ~ 0.94. A larger beta suppresses outliers more: their
    gradient is -e beta ln(beta), 1 at beta = 1/e and 0 at beta = 1.

    Returns: [N, K].
    """
    if alpha is None:
        alpha = math.e * beta
    difference = (pred - target).abs()
    # Evaluate the log branch on a safe copy: x = 0 (0 * log 0) and x >= 1 use the other values.
    inside = (difference > 0) & (difference < 1)
    safe = torch.where(inside, difference, torch.ones_like(difference))
    small = -alpha * safe ** 2 * (2 * torch.log(beta * safe) - 1) / 4
    constant = (2 * alpha * math.log(beta) + alpha) / 4
    large = -alpha * math.log(beta) * difference + constant
    return torch.where(inside, small, torch.where(difference >= 1, large, torch.zeros_like(difference)))
