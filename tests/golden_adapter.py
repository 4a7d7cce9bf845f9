"""check_golden.py adapter: maps focaldet's losses and box_ops onto the golden schema.

Usage (from the repository root):
    python ../shared/golden/check_golden.py tests/golden_adapter.py [--dtype float32]
The reference conventions (labels with background == C, -1 ignore, reductions, avg_factor) are
translated here; the library functions keep ours (targets by index: labels outside [0, C) are
background rows; element-wise output). EFL's gradient collection runs through the criterion's own
classification_loss and statistics update (detector/criterion.py), the code training runs, not a copy.
See ../shared/golden/README.md for the schema of every file.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import losses  # noqa: E402
from detector import box_ops, build_criterion  # noqa: E402
from detector.config import load_config  # noqa: E402


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


def sigmoid_focal_loss(x, p):
    out = losses.sigmoid_focal_loss(x['logits'], x['labels'], alpha=p['alpha'], gamma=p['gamma'])
    return _reduce(out, p)


def quality_focal_loss(x, p):
    out = losses.quality_focal_loss(x['logits'], x['labels'], x['scores'], beta=p['beta'])
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


def _efl_params(p):
    return dict(alpha=p['focal_alpha'], gamma=p['focal_gamma'], scale=p['scale_factor'])


def equalized_focal_loss(x, p):
    kept = x['labels_bg_last'] != p['ignore_index']  # UP removes ignored rows
    out = losses.equalized_focal_loss(x['logits'][kept], x['labels_bg_last'][kept], pos_neg=x['pos_neg'],
                                      **_efl_params(p))
    reduction = p.get('reduction', 'none')
    if reduction == 'none':
        return out
    if reduction == 'sum':
        return out.sum()
    return out.sum() / p.get('normalizer', 1.0)  # UP's _reduce: mean means sum / normalizer


def _efl_criterion(p):
    """The RetinaNet criterion with EFL of these parameters: its classification_loss and statistics are tested."""
    params = _efl_params(p)
    cfg = load_config(None, ["model.loss_cls.type=equalized_focal"]
                      + [f"model.loss_cls.params.{key}={value}" for key, value in params.items()])
    return build_criterion(cfg.model, p['num_classes']).train()


def _efl_step(criterion, logits, labels_bg_last, normalizer, p):
    """One training step of the criterion's classification loss on a batch of one image with N anchors:
    loss, dL/dlogits by autograd, and the statistics the criterion accumulated (UP's collect_grad)."""
    num_classes = p['num_classes']
    valid = labels_bg_last != p['ignore_index']                                  # ignored rows take no loss
    labels = torch.where((labels_bg_last >= 0) & (labels_bg_last < num_classes), labels_bg_last, -1)
    logits = logits.detach().clone().requires_grad_()
    normaliser = torch.tensor(float(normalizer), dtype=logits.dtype)
    loss = criterion.classification_loss(logits[None], labels[None], None, valid[None], normaliser)
    (grad,) = torch.autograd.grad(loss, logits)
    state = {key: getattr(criterion, f'efl_{key}').to(logits.dtype) for key in ('pos_grad', 'neg_grad', 'pos_neg')}
    return dict(loss=loss.detach(), grad_logits=grad, **state)


def efl_grad_collect(x, p):
    criterion = _efl_criterion(p)
    if p.get('two_step'):  # buffers as the criterion starts them: zeros, zeros, ones
        for step in ('step1', 'step2'):
            state = _efl_step(criterion, x[f'logits_{step}'], x[f'labels_bg_last_{step}'], p[f'normalizer_{step}'], p)
        return state
    for key in ('pos_grad', 'neg_grad', 'pos_neg'):
        getattr(criterion, f'efl_{key}').copy_(x[key])
    state = _efl_step(criterion, x['logits'], x['labels_bg_last'], p['normalizer'], p)
    # next_loss_sum: the EFL sum with the updated statistics, from the criterion (evaluation: no update)
    with torch.no_grad():
        criterion.eval()
        normaliser = torch.tensor(1.0, dtype=x['logits'].dtype)
        labels = x['labels_bg_last']
        state['next_loss_sum'] = criterion.classification_loss(
            x['logits'][None], torch.where(labels < p['num_classes'], labels, -1)[None], None,
            (labels != p['ignore_index'])[None], normaliser)
    return state


try:  # the assigner adapters live beside this file, written with detector/assign.py
    from golden_assigners import atss_assigner, max_iou_assigner  # noqa: E402,F401
except ImportError:
    pass
