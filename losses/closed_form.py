"""The focal family (focal, EFL, QFL, EQFL) as element-wise values and closed-form gradients, and the autograd
Function that takes its backward from the closed form.

Two kernels cover the four losses, with a per-class focusing exponent `focus` and weight `weight` (floats, or
[C] tensors for the equalized losses: gamma_j and gamma_j / gamma_b; focal and QFL are the case g_j = 1):

    focal    alpha_t w_j (1 - p_t)^focus_j (-log p_t),           one-hot targets (alpha < 0: no alpha_t)
    quality  w_j BCE(x, y) |y - p|^focus_j,                       soft target y at the label, 0 elsewhere

Why a closed-form backward: with LVIS's C = 1203 every [N, C] tensor autograd keeps is as large as the logits.
Autograd of these formulas keeps about four of them from forward to backward (sigmoid, softplus, the power,
their product) and makes four more in backward; ClosedFormLoss keeps only the logits (which exist anyway) and
recomputes the gradient in backward from a few temporaries (README, "Memory with 1203 classes"). The same
gradient gives the equalized losses their G+ / G- statistics without backward hooks (detector/criterion.py).
tests/test_losses.py checks every gradient against autograd of the formula written out in the test.

Targets are by index (losses/focal.py): labels [N] (outside [0, C): background row), scores [N] or None (1).
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
