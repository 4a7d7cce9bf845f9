"""check_golden.py adapter: maps focaldet's losses and box_ops onto the golden schema.

Usage (from the repository root):
    python ../shared/golden/check_golden.py tests/golden_adapter.py [--dtype float32]
The reference conventions (labels with background == C, -1 ignore, reductions, avg_factor) are
translated here; the library functions keep ours (one-hot / soft targets, element-wise output).
See ../shared/golden/README.md for the schema of every file.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import losses  # noqa: E402
from detector import box_ops  # noqa: E402


def _reduce(elementwise, p):
    """mmdetection reductions: none, sum, mean over all elements, or sum / avg_factor."""
    reduction = p.get('reduction', 'none')
    if reduction == 'none':
        return elementwise
    if reduction == 'sum':
        return elementwise.sum()
    if p.get('avg_factor') is not None:
        return elementwise.sum() / p['avg_factor']
    return elementwise.mean()


def _one_hot(labels, num_classes, dtype):
    """[N] labels, foreground 0..C-1, anything else negative -> [N, C] float one-hot."""
    foreground = (labels >= 0) & (labels < num_classes)
    targets = torch.zeros(labels.shape[0], num_classes, dtype=dtype)
    rows = foreground.nonzero().squeeze(1)
    targets[rows, labels[rows]] = 1
    return targets


def sigmoid_focal_loss(x, p):
    targets = _one_hot(x['labels'], p['num_classes'], x['logits'].dtype)
    out = losses.sigmoid_focal_loss(x['logits'], targets, alpha=p['alpha'], gamma=p['gamma'])
    return _reduce(out, p)


def quality_focal_loss(x, p):
    targets = _one_hot(x['labels'], p['num_classes'], x['logits'].dtype) * x['scores'][:, None]
    out = losses.quality_focal_loss(x['logits'], targets, beta=p['beta'])
    return _reduce(out.sum(dim=1), p)  # mmdetection sums over classes: [N]


def distribution_focal_loss(x, p):
    return _reduce(losses.distribution_focal_loss(x['logits'], x['target']), p)


def iou_loss(x, p):
    return _reduce(losses.iou_loss(x['pred'], x['target'], mode=p['mode'], eps=p['eps']), p)


def giou_loss(x, p):
    return _reduce(losses.giou_loss(x['pred'], x['target'], eps=p['eps']), p)


def diou_loss(x, p):
    return _reduce(losses.diou_loss(x['pred'], x['target'], eps=p['eps']), p)


def ciou_loss(x, p):
    out = losses.ciou_loss(x['pred'], x['target'], eps=p['eps'], variant=p['variant'])
    return _reduce(out, p)


def eiou_loss(x, p):
    return _reduce(losses.eiou_loss(x['pred'], x['target'], eps=p['eps']), p)


def focal_eiou_loss(x, p):
    out = losses.focal_eiou_loss(x['pred'], x['target'], gamma=p['gamma'], eps=p['eps'])
    return _reduce(out, p)


def bbox_overlaps(x, p):
    return box_ops.bbox_overlaps(x['pred'], x['target'], mode=p['mode'],
                                 is_aligned=p['is_aligned'], eps=p['eps'])


def _efl_inputs(logits, labels_bg_last, p):
    """Drop ignored rows (UP removes them) and build one-hot targets (background == C)."""
    valid = labels_bg_last != p['ignore_index']
    return logits[valid], _one_hot(labels_bg_last[valid], p['num_classes'], logits.dtype), valid


def _efl_params(p):
    return dict(alpha=p['focal_alpha'], gamma=p['focal_gamma'], scale=p['scale_factor'])


def equalized_focal_loss(x, p):
    logits, targets, _ = _efl_inputs(x['logits'], x['labels_bg_last'], p)
    out = losses.equalized_focal_loss(logits, targets, x['pos_neg'], **_efl_params(p))
    reduction = p.get('reduction', 'none')
    if reduction == 'none':
        return out
    if reduction == 'sum':
        return out.sum()
    return out.sum() / p.get('normalizer', 1.0)  # UP's _reduce: mean means sum / normalizer


def _efl_step(logits, labels_bg_last, pos_grad, neg_grad, pos_neg, normalizer, p):
    """One EFL step: loss, closed-form dL/dlogits, then the G+/G- buffer update (UP collect_grad)."""
    valid_logits, targets, valid = _efl_inputs(logits, labels_bg_last, p)
    loss = losses.equalized_focal_loss(valid_logits, targets, pos_neg, **_efl_params(p)).sum() / normalizer
    grad_valid = losses.equalized_focal_grad(valid_logits, targets, pos_neg, **_efl_params(p)) / normalizer
    grad = torch.zeros_like(logits)
    grad[valid] = grad_valid
    pos_grad = pos_grad + (grad_valid.abs() * targets).sum(dim=0)
    neg_grad = neg_grad + (grad_valid.abs() * (1 - targets)).sum(dim=0)
    pos_neg = (pos_grad / (neg_grad + 1e-10)).clamp(0, 1)
    return dict(loss=loss, grad_logits=grad, pos_grad=pos_grad, neg_grad=neg_grad, pos_neg=pos_neg)


def efl_grad_collect(x, p):
    if p.get('two_step'):
        num_classes = p['num_classes']
        dtype = x['logits_step1'].dtype
        zeros = torch.zeros(num_classes, dtype=dtype)
        state = dict(pos_grad=zeros, neg_grad=zeros, pos_neg=torch.ones(num_classes, dtype=dtype))
        for step in ('step1', 'step2'):
            state = _efl_step(x[f'logits_{step}'], x[f'labels_bg_last_{step}'], state['pos_grad'],
                              state['neg_grad'], state['pos_neg'], p[f'normalizer_{step}'], p)
        return state
    state = _efl_step(x['logits'], x['labels_bg_last'], x['pos_grad'], x['neg_grad'], x['pos_neg'],
                      p['normalizer'], p)
    logits, targets, _ = _efl_inputs(x['logits'], x['labels_bg_last'], p)
    next_loss = losses.equalized_focal_loss(logits, targets, state['pos_neg'], **_efl_params(p))
    state['next_loss_sum'] = next_loss.sum()
    return state


try:  # the assigner adapters live beside this file, written with detector/assign.py
    from golden_assigners import atss_assigner, max_iou_assigner  # noqa: E402,F401
except ImportError:
    pass
