"""Equalized losses inside the criterion: g_j starts at 1 (EFL is focal loss, EQFL is QFL), the statistics are the
autograd gradient of the step's loss, move in training only, survive a checkpoint exactly, and two gloo ranks
accumulate what one process accumulates on the two images together."""
import dataclasses
import os

import pytest
import torch
import torch.multiprocessing as multiprocessing
from tiny_detector import INPUT_SHAPE, padded_targets, tiny_config

from detector import build_criterion, build_model
from detector.assign import IGNORE
from detector.checkpoint import load_checkpoint, load_state
from detector.config import ConfigError
from detector.criterion import gather_gt

NUM_CLASSES = 3
TARGETS = dict(boxes_per_image=[[[10, 10, 60, 50], [40, 70, 90, 120]], [[5, 5, 30, 30]]],
               labels_per_image=[[0, 2], [1]])
# head type -> (the plain loss, its equalized form)
PAIRS = {"retinanet": ("focal", "equalized_focal"), "atss": ("focal", "equalized_focal"),
         "gfl": ("quality_focal", "equalized_quality_focal")}


def head_outputs(head_type, seed=0, dtype=torch.float32, cls_shift=3.0):
    """Outputs of a tiny detector on random images, as leaf tensors (the criterion alone is tested). The class
    logits are raised by cls_shift from the prior's -4.6, so that on these few anchors the negatives' gradient
    outweighs the positives' (as on a real image's 100k anchors) and g_j = G+ / G- < 1 after a step."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(head_type).model, NUM_CLASSES).eval()
    with torch.no_grad():
        outputs = model(torch.randn(*INPUT_SHAPE))
    leaf = lambda t: None if t is None else t.to(dtype).requires_grad_(True)  # noqa: E731
    return dataclasses.replace(outputs, cls_logits=leaf(outputs.cls_logits + cls_shift),
                               box_regression=leaf(outputs.box_regression), centerness=leaf(outputs.centerness),
                               anchors=outputs.anchors.to(dtype), strides=outputs.strides.to(dtype))


def criterion_of(head_type, loss_type, *overrides):
    return build_criterion(tiny_config(head_type, f"model.loss_cls.type={loss_type}", *overrides).model, NUM_CLASSES)


@pytest.mark.parametrize("head_type", ["retinanet", "atss", "gfl"])
def test_equalized_loss_equals_its_plain_form_before_any_statistics(head_type):
    plain, equalized = PAIRS[head_type]
    outputs, targets = head_outputs(head_type), padded_targets(**TARGETS)
    expected = criterion_of(head_type, plain).eval()(outputs, targets)["loss_cls"]
    criterion = criterion_of(head_type, equalized).eval()
    assert torch.equal(criterion.efl_pos_neg, torch.ones(NUM_CLASSES, dtype=torch.float64))
    torch.testing.assert_close(criterion(outputs, targets)["loss_cls"], expected)
    assert criterion.efl_pos_grad.sum() == 0 and criterion.efl_neg_grad.sum() == 0  # evaluation never updates them


@pytest.mark.parametrize("head_type, overrides", [("retinanet", ()), ("retinanet", ("model.normaliser=image",)),
                                                   ("gfl", ())])
def test_statistics_are_the_autograd_gradient_of_the_step(head_type, overrides):
    """G+_j / G-_j = sums of |d loss_cls / d logit| over positive / negative entries of class j, the gradient taken
    by autograd through the criterion (the closed form the criterion uses is not called here). With RetinaNet's
    per-image normaliser each image's entries carry their own 1 / positives (TARGETS' images have 2 and 1 GTs)."""
    _, equalized = PAIRS[head_type]
    outputs, targets = head_outputs(head_type, dtype=torch.float64), padded_targets(**TARGETS)
    criterion = criterion_of(head_type, equalized, "model.loss_cls.weight=1.5", *overrides).train()
    losses = criterion(outputs, targets)
    (grad,) = torch.autograd.grad(losses["loss_cls"], outputs.cls_logits)               # [B, A, C]
    matched = criterion.assign(outputs, targets)
    _, labels = gather_gt(matched, targets["boxes"], targets["labels"])
    positive = torch.zeros_like(grad, dtype=torch.bool)                                  # [B, A, C]
    batch, anchor = torch.nonzero(matched >= 0, as_tuple=True)
    positive[batch, anchor, labels[batch, anchor]] = True
    assert positive.sum() > 0 and ((matched == IGNORE).sum() > 0) == (head_type == "retinanet")
    assert grad[matched == IGNORE].abs().sum() == 0                                      # ignored anchors: no loss
    expected_positive = (grad.abs() * positive).sum(dim=(0, 1))
    expected_negative = (grad.abs() * ~positive).sum(dim=(0, 1))
    torch.testing.assert_close(criterion.efl_pos_grad, expected_positive, rtol=1e-10, atol=0)
    torch.testing.assert_close(criterion.efl_neg_grad, expected_negative, rtol=1e-10, atol=0)
    torch.testing.assert_close(criterion.efl_pos_neg, (expected_positive / expected_negative).clamp(0, 1))


@pytest.mark.parametrize("head_type", ["retinanet", "gfl"])
def test_statistics_move_and_change_the_next_loss(head_type):
    plain, equalized = PAIRS[head_type]
    outputs, targets = head_outputs(head_type), padded_targets(**TARGETS)
    criterion = criterion_of(head_type, equalized).train()
    first = criterion(outputs, targets)["loss_cls"]
    torch.testing.assert_close(first, criterion_of(head_type, plain)(outputs, targets)["loss_cls"])
    pos_neg = criterion.efl_pos_neg.clone()
    assert (pos_neg < 1).all() and (pos_neg > 0).all()     # negatives outweigh positives: g_j < 1, focus rises
    second = criterion(outputs, targets)["loss_cls"]
    # gamma_j > 2: the many negatives (p_t > 0.5) are suppressed by (1 - p_t)^gamma_j more than w_j = gamma_j / 2 adds
    assert second < first
    assert not torch.equal(criterion.efl_pos_neg, pos_neg)   # accumulated again


def test_resume_restores_the_statistics_exactly(tmp_path):
    outputs, targets = head_outputs("retinanet"), padded_targets(**TARGETS)
    later_outputs = head_outputs("retinanet", seed=1)
    running = criterion_of("retinanet", "equalized_focal").train()
    running(outputs, targets)
    path = str(tmp_path / "last.pth")
    torch.save({"model": {}, "config": {}, "criterion": running.state_dict()}, path)  # as checkpoints hold it
    resumed = criterion_of("retinanet", "equalized_focal").train()
    load_state(resumed, load_checkpoint(path, required=["criterion"])["criterion"], path, "criterion")
    for key, value in running.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert torch.equal(resumed(later_outputs, targets)["loss_cls"], running(later_outputs, targets)["loss_cls"])
    for key, value in running.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def _rank_steps(rank, world_size, init_file, batches, out_dir):
    """One gloo rank: the criterion on image `rank` of each batch; saves its statistics."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    criterion = criterion_of("gfl", "equalized_quality_focal").train()
    for outputs, targets in batches:
        mine = dataclasses.replace(outputs, cls_logits=outputs.cls_logits[rank:rank + 1],
                                   box_regression=outputs.box_regression[rank:rank + 1])
        criterion(mine, {key: value[rank:rank + 1] for key, value in targets.items()})
    torch.save(criterion.state_dict(), os.path.join(out_dir, f"rank{rank}.pth"))
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_accumulate_what_one_process_does_on_the_whole_batch(tmp_path):
    batches = []
    for seed in (0, 1):  # two steps, detached (they travel to the ranks by pickling)
        outputs = head_outputs("gfl", seed=seed, dtype=torch.float64)
        batches.append((dataclasses.replace(outputs, cls_logits=outputs.cls_logits.detach(),
                                            box_regression=outputs.box_regression.detach()), padded_targets(**TARGETS)))
    multiprocessing.spawn(_rank_steps, args=(2, str(tmp_path / "init"), batches, str(tmp_path)), nprocs=2)
    single = criterion_of("gfl", "equalized_quality_focal").train()
    for outputs, targets in batches:
        single(outputs, targets)
    assert (single.efl_pos_neg < 1).all()
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pth", weights_only=True)
        for key, value in single.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-12, atol=0, msg=f"rank {rank} {key}")


@pytest.mark.parametrize("loss_type", ["focal", "equalized_focal"])
def test_one_hot_losses_with_a_soft_target_head_are_config_errors(loss_type):
    with pytest.raises(ConfigError, match=f"model.loss_cls.type: '{loss_type}' takes one-hot targets.*gfl"):
        criterion_of("gfl", loss_type)
    with pytest.raises(ConfigError, match="model.loss_centerness.type: 'focal' takes one-hot targets"):
        build_criterion(tiny_config("atss", "model.loss_centerness.type=focal").model, NUM_CLASSES)
