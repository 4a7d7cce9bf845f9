"""Equalized Focal Loss inside the criterion: g_j starts at 1 (plain focal), statistics move in training only."""
import torch

import losses
from detector import build_criterion, build_model
from detector.criterion import gather_gt
from tests.tiny_detector import INPUT_SHAPE, padded_targets, tiny_config

EFL = ["model.loss_cls.type=equalized_focal"]


def _setup():
    torch.manual_seed(0)
    focal_cfg = tiny_config("retinanet")
    efl_cfg = tiny_config("retinanet", *EFL)
    model = build_model(focal_cfg.model, num_classes=3).eval()
    targets = padded_targets([[[10, 10, 60, 50], [40, 70, 90, 120]], [[5, 5, 30, 30]]], [[0, 2], [1]])
    with torch.no_grad():
        outputs = model(torch.randn(*INPUT_SHAPE))
    return focal_cfg, efl_cfg, outputs, targets


def test_efl_equals_focal_before_any_statistics():
    focal_cfg, efl_cfg, outputs, targets = _setup()
    focal = build_criterion(focal_cfg.model, 3).eval()(outputs, targets)["loss_cls"]
    efl_criterion = build_criterion(efl_cfg.model, 3).eval()
    assert torch.equal(efl_criterion.efl_pos_neg, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(efl_criterion(outputs, targets)["loss_cls"], focal)
    assert efl_criterion.efl_pos_grad.sum() == 0  # evaluation never updates the statistics


def test_efl_statistics_accumulate_closed_form_gradient():
    _, efl_cfg, outputs, targets = _setup()
    criterion = build_criterion(efl_cfg.model, 3).train()
    losses_ = criterion(outputs, targets)
    # Recompute G+ and G- from autograd: d(loss_cls)/d(logits) over the non-ignored anchors.
    logits = outputs.cls_logits.detach().clone().requires_grad_(True)
    matched = criterion.assign(outputs, targets)
    valid, positive = matched != -2, matched >= 0

    _, labels = gather_gt(matched, targets["boxes"], targets["labels"])
    one_hot = criterion.one_hot_targets(labels, positive, torch.float32)
    loss = losses.equalized_focal_loss(logits[valid], one_hot[valid], torch.ones(3)).sum() / positive.sum()
    (grad,) = torch.autograd.grad(loss, logits)
    grad = grad[valid].abs().double()
    is_positive = one_hot[valid].double()
    torch.testing.assert_close(criterion.efl_pos_grad, (grad * is_positive).sum(0))
    torch.testing.assert_close(criterion.efl_neg_grad, (grad * (1 - is_positive)).sum(0))
    expected = (criterion.efl_pos_grad / (criterion.efl_neg_grad + 1e-10)).clamp(0, 1)
    torch.testing.assert_close(criterion.efl_pos_neg, expected)
    assert (criterion.efl_pos_grad > 0).all() and (criterion.efl_neg_grad > 0).all()
    assert torch.isfinite(losses_["loss_cls"])
    assert set(criterion.state_dict()) == {"efl_pos_grad", "efl_neg_grad", "efl_pos_neg"}  # saved in checkpoints
