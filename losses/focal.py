"""Focal-family classification losses and the Distribution Focal Loss (all element-wise).

Shapes: N rows (anchors), C foreground classes (one sigmoid per class, no background logit),
R = reg_max + 1 distribution bins. Nothing is reduced here; the criterion sums and normalises.
Formulas: ../shared/REFERENCE.md, section "Losses". p = sigmoid(logit) throughout.
"""
import torch
import torch.nn.functional as F


def _alpha_balance(loss, targets, alpha):
    """alpha_t = alpha where target is 1 and 1 - alpha where it is 0; alpha < 0 disables it."""
    if alpha < 0:
        return loss
    return loss * (alpha * targets + (1 - alpha) * (1 - targets))


def binary_cross_entropy(logits, targets):
    """Plain sigmoid BCE, elementwise: -[y log p + (1 - y) log(1 - p)] (ATSS centerness). Any shape."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction='none')


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Focal loss (Lin et al. 2017): FL = -alpha_t (1 - p_t)^gamma log p_t.

    p_t = p where t = 1 and 1 - p where t = 0. -log p_t is computed as BCE with logits, so large
    logits do not overflow. gamma = 0 with alpha < 0 is plain BCE. Same numbers as
    torchvision.ops.sigmoid_focal_loss and mmdetection's py_sigmoid_focal_loss.

    Args:
        logits: [N, C] raw scores.
        targets: [N, C] float, one-hot rows (all zeros for background).
    Returns:
        [N, C] element-wise loss.
    """
    prob = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    prob_true = prob * targets + (1 - prob) * (1 - targets)
    loss = cross_entropy * (1 - prob_true).pow(gamma)
    return _alpha_balance(loss, targets, alpha)


def quality_focal_loss(logits, targets, beta=2.0):
    """Quality Focal Loss (Li et al. 2020, GFL): QFL = BCE(x, y) * |y - sigmoid(x)|^beta.

    y is the soft target: the IoU of the (detached) decoded box with its GT at the GT class,
    0 for every other entry. The minimum over p is at p = y. As in mmdetection's
    gfocal_loss.quality_focal_loss, the modulating factor |y - p|^beta is not detached.

    Args:
        logits: [N, C] raw joint class-quality scores.
        targets: [N, C] float soft scores in [0, 1].
    Returns:
        [N, C] element-wise loss (mmdetection sums it over classes; the criterion decides).
    """
    modulating = (targets - torch.sigmoid(logits)).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction='none') * modulating


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


def _signed_terms(logits, targets):
    """For one-hot targets: p_t, 1 - p_t and -log p_t, each from a single signed logit.

    z = x for t = 1 and -x for t = 0, so p_t = sigmoid(z), 1 - p_t = sigmoid(-z) (no
    cancellation) and -log p_t = softplus(-z) (no overflow).
    """
    signed = logits * (2 * targets - 1)
    return torch.sigmoid(signed), torch.sigmoid(-signed), F.softplus(-signed)


def _equalized_focus(pos_neg, gamma, scale, like):
    """Per-class focusing factor gamma_j = gamma + scale (1 - g_j) and weight gamma_j / gamma.

    Both are constants in the backward pass ([C], broadcast over rows).
    """
    focus = gamma + scale * (1 - pos_neg.detach().to(like.dtype))
    return focus, focus / gamma


def equalized_focal_loss(logits, targets, pos_neg, alpha=0.25, gamma=2.0, scale=8.0):
    """Equalized Focal Loss (Li et al. 2022, long-tailed detection).

    EFL_ij = -alpha_t (gamma_j / gamma) (1 - p_t)^gamma_j log p_t, gamma_j = gamma + scale (1 - g_j),
    g_j = clamp(G+_j / G-_j, 0, 1) the accumulated positive/negative gradient ratio of class j
    (ModelTC/United-Perception efl.py). With g = 1 everywhere this is sigmoid_focal_loss.

    Args:
        logits: [N, C] raw scores.
        targets: [N, C] float one-hot rows (all zeros for background).
        pos_neg: [C] g_j in [0, 1], treated as a constant.
    Returns:
        [N, C] element-wise loss.
    """
    focus, weight = _equalized_focus(pos_neg, gamma, scale, logits)
    _, prob_false, neg_log_prob_true = _signed_terms(logits, targets)
    loss = weight * prob_false.pow(focus) * neg_log_prob_true
    return _alpha_balance(loss, targets, alpha)


@torch.no_grad()
def equalized_focal_grad(logits, targets, pos_neg, alpha=0.25, gamma=2.0, scale=8.0):
    """Closed-form d(sum of equalized_focal_loss) / d logits, element by element.

    With z = (2t - 1) x, q = 1 - p_t = sigmoid(-z) and l = -log p_t = softplus(-z):
    dL/dz = -alpha_t w_j q^gamma_j (gamma_j p_t l + q), and dL/dx = (2t - 1) dL/dz.
    Used to accumulate G+_j / G-_j without backward hooks (REFERENCE, Equalized Focal Loss):
    divide by the same normaliser as the loss, then sum |grad| over positive and negative entries.

    Args: as equalized_focal_loss (targets must be one-hot).
    Returns:
        [N, C] gradient, detached.
    """
    focus, weight = _equalized_focus(pos_neg, gamma, scale, logits)
    prob_true, prob_false, neg_log_prob_true = _signed_terms(logits, targets)
    grad_signed = -weight * prob_false.pow(focus) * (focus * prob_true * neg_log_prob_true + prob_false)
    return _alpha_balance(grad_signed * (2 * targets - 1), targets, alpha)
