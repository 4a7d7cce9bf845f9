"""Focal-family classification losses and the Distribution Focal Loss (all element-wise).

Shapes: N rows (anchors), C foreground classes (one sigmoid per class, no background logit),
R = reg_max + 1 distribution bins. Nothing is reduced here; the criterion sums and normalises.
Formulas: ../shared/REFERENCE.md, section "Losses". p = sigmoid(logit) throughout.

Classification targets are given by index, never as a dense [N, C] tensor: row i has target
scores[i] (1 when scores is None: one-hot) at class labels[i], and 0 at every other class; a label
outside [0, C) (the criterion's -1 for background) gives an all-zero row. With C = 1203 (LVIS) a
dense target would be as large as the logits.

Two kernels cover focal, EFL, QFL and EQFL (losses/equalized.py), with a per-class focusing exponent
`focus` and weight `weight` (floats, or [C] tensors for the equalized losses: gamma_j and gamma_j /
gamma_b; focal loss and QFL are the case g_j = 1):

    focal    alpha_t w_j (1 - p_t)^focus_j (-log p_t),           one-hot targets (alpha < 0: no alpha_t)
    quality  w_j BCE(x, y) |y - p|^focus_j,                       soft target y at the label, 0 elsewhere

each as element-wise values and as a closed-form gradient, joined by ClosedFormLoss, an autograd
Function whose backward is the closed form. Why: with C = 1203 every [N, C] tensor autograd keeps is
as large as the logits; autograd of these formulas keeps about four from forward to backward (sigmoid,
softplus, the power, their product) and makes four more in backward, ClosedFormLoss keeps only the
logits (which exist anyway) and recomputes the gradient from a few temporaries (README, "Memory with
1203 classes"). The same gradient gives the equalized losses their statistics without backward hooks
(detector/criterion.py). tests/test_losses.py checks values and gradients against autograd of the
formulas written out in the test, and against torchvision.
"""
import torch
import torch.nn.functional as F


def target_entries(labels, num_classes):
    """(rows [P], columns [P]) of the entries that hold a target: rows whose label lies in [0, C)."""
    rows = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    return rows, labels[rows]


def target_scores(scores, rows, like):
    """Target value of each entry that holds one: scores[rows] ([P]), or ones (one-hot) when scores is None."""
    if scores is None:
        return like.new_ones(rows.shape[0])
    return scores[rows].to(like.dtype)


def _at(value, columns):
    """A per-class factor at the target entries: value[columns] for a [C] tensor, the float itself otherwise."""
    return value[columns] if torch.is_tensor(value) else value


def _alpha_weights(alpha):
    """(weight of target-0 entries, weight of target-1 entries): (1 - alpha, alpha), or (1, 1) when alpha < 0."""
    return (1.0, 1.0) if alpha < 0 else (1 - alpha, alpha)


@torch.no_grad()
def focal_values(logits, labels, focus, weight, alpha):
    """[N, C] alpha_t w_j (1 - p_t)^focus_j (-log p_t) with one-hot targets; target 0: (1 - alpha) w_j p^focus_j
    softplus(x), target 1: alpha w_j (1 - p)^focus_j softplus(-x)."""
    negative_weight, positive_weight = _alpha_weights(alpha)
    values = torch.sigmoid(logits).pow_(focus).mul_(F.softplus(logits)).mul_(weight * negative_weight)
    rows, columns = target_entries(labels, logits.shape[-1])
    x = logits[rows, columns]
    values[rows, columns] = (positive_weight * _at(weight, columns) * torch.sigmoid(-x).pow(_at(focus, columns))
                             * F.softplus(-x))
    return values


@torch.no_grad()
def focal_gradient(logits, labels, focus, weight, alpha):
    """[N, C] d(sum of focal_values) / d logits. With z = x for t = 1, -x for t = 0, p_t = sigmoid(z), q = 1 - p_t:
    dL/dz = -alpha_t w q^focus (focus p_t softplus(-z) + q) and dL/dx = (2t - 1) dL/dz, so
    target 0: (1 - alpha) w p^focus (focus (1 - p) softplus(x) + p) >= 0;
    target 1: -alpha w (1 - p)^focus (focus p softplus(-x) + 1 - p) <= 0."""
    negative_weight, positive_weight = _alpha_weights(alpha)
    prob = torch.sigmoid(logits)
    grad = F.softplus(logits)
    grad.addcmul_(grad, prob, value=-1).mul_(focus).add_(prob)                        # focus (1 - p) softplus(x) + p
    grad.mul_(prob.pow_(focus)).mul_(weight * negative_weight)                     # prob now holds p^focus
    rows, columns = target_entries(labels, logits.shape[-1])
    x, focus = logits[rows, columns], _at(focus, columns)
    p = torch.sigmoid(x)
    grad[rows, columns] = (-positive_weight * _at(weight, columns) * (1 - p).pow(focus)
                           * (focus * p * F.softplus(-x) + 1 - p))
    return grad


@torch.no_grad()
def quality_values(logits, labels, scores, focus, weight):
    """[N, C] w_j BCE(x, y) |y - p|^focus_j, y = scores at the label, 0 elsewhere (target 0: w_j softplus(x)
    p^focus_j)."""
    values = torch.sigmoid(logits).pow_(focus).mul_(F.softplus(logits)).mul_(weight)
    rows, columns = target_entries(labels, logits.shape[-1])
    x, y = logits[rows, columns], target_scores(scores, rows, logits)
    values[rows, columns] = (_at(weight, columns) * (F.softplus(x) - x * y)
                             * (y - torch.sigmoid(x)).abs().pow(_at(focus, columns)))
    return values


@torch.no_grad()
def quality_gradient(logits, labels, scores, focus, weight):
    """[N, C] d(sum of quality_values) / d logits. With B = BCE(x, y) = softplus(x) - x y (dB/dx = p - y) and
    d = |p - y| (dd/dx = sign(p - y) p (1 - p)): dL/dx = w sign(p - y) d^(focus - 1) (d^2 + focus p (1 - p) B),
    zero at p = y; target 0 (d = p): w p^focus (p + focus (1 - p) softplus(x)). Needs focus >= 1."""
    prob = torch.sigmoid(logits)
    grad = F.softplus(logits)
    grad.addcmul_(grad, prob, value=-1).mul_(focus).add_(prob)                        # focus (1 - p) softplus(x) + p
    grad.mul_(prob.pow_(focus)).mul_(weight)
    rows, columns = target_entries(labels, logits.shape[-1])
    x, y, focus = logits[rows, columns], target_scores(scores, rows, logits), _at(focus, columns)
    p = torch.sigmoid(x)
    distance = (p - y).abs()
    grad[rows, columns] = (_at(weight, columns) * torch.sign(p - y) * distance.pow(focus - 1)
                           * (distance * distance + focus * p * (1 - p) * (F.softplus(x) - x * y)))
    return grad


class ClosedFormLoss(torch.autograd.Function):
    """values(logits, *arguments) [N, C] in forward; backward = grad_output x gradient(logits, *arguments).

    Saves nothing but the logits (and the small labels / scores); the other arguments are constants."""

    @staticmethod
    def forward(ctx, logits, labels, scores, values, gradient, arguments):
        ctx.save_for_backward(logits, labels, scores)
        ctx.gradient, ctx.arguments = gradient, arguments
        return values(logits, labels, scores, *arguments)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        logits, labels, scores = ctx.saved_tensors
        grad = ctx.gradient(logits, labels, scores, *ctx.arguments).mul_(grad_output)
        return grad, None, None, None, None, None


def _without_scores(kernel):
    """A one-hot kernel (logits, labels, ...) called as (logits, labels, scores, ...) by ClosedFormLoss."""
    return lambda logits, labels, scores, *arguments: kernel(logits, labels, *arguments)


def focal_loss(logits, labels, focus, weight, alpha):
    """Element-wise focal-form loss [N, C] with the closed-form backward (one-hot targets)."""
    return ClosedFormLoss.apply(logits, labels, None, _without_scores(focal_values), _without_scores(focal_gradient),
                                (focus, weight, alpha))


def quality_loss(logits, labels, scores, focus, weight):
    """Element-wise quality-form loss [N, C] with the closed-form backward (soft targets; scores None: 1)."""
    if scores is not None and scores.requires_grad:
        raise ValueError("quality targets are constants (the IoU of a detached prediction)")
    return ClosedFormLoss.apply(logits, labels, scores, quality_values, quality_gradient, (focus, weight))


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
