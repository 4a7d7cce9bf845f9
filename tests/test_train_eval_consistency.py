"""Training and inference must decode the same boxes: the boxes the criterion trains for its positives
are the boxes the post-processor outputs for those anchors (a train/eval mismatch in decoding,
Scale, strides, ATSS's target stds or GFL's integral would break this)."""
import pytest
import torch

from detector import build_criterion, build_model, build_postprocessor
from tests.tiny_detector import padded_targets, tiny_config

BOXES = [[[10.0, 12.0, 70.0, 90.0], [40.0, 30.0, 90.0, 60.0]], [[5.0, 50.0, 60.0, 120.0]]]


def trained_boxes(criterion, outputs, targets):
    """(positive mask [B, A], boxes [P, 4]) that the criterion's box loss compares with the GT."""
    seen = {}
    box_fn = criterion.box_fn

    def spy(pred_boxes, gt_boxes, **params):
        seen["boxes"] = pred_boxes.detach().clone()
        return box_fn(pred_boxes, gt_boxes, **params)

    criterion.box_fn = spy
    criterion(outputs, targets)
    criterion.box_fn = box_fn
    return criterion.assign(outputs, targets) >= 0, seen["boxes"]


@pytest.mark.parametrize("head_type", ["retinanet", "atss", "gfl"])
def test_criterion_and_postprocessor_decode_the_same_boxes(head_type):
    torch.manual_seed(0)
    # giou for every head, so that the criterion decodes (RetinaNet's reference L1 compares codes)
    cfg = tiny_config(head_type, "model.loss_box.type=giou", "model.loss_box.params={}")
    model, criterion = build_model(cfg.model, 2), build_criterion(cfg.model, 2)
    outputs = model(torch.randn(2, 3, 128, 96))
    # Regression outputs far from zero, so the Scale, stds and integral all matter.
    outputs.box_regression = outputs.box_regression + torch.randn_like(outputs.box_regression) * 0.5
    positive, boxes = trained_boxes(criterion, outputs, padded_targets(BOXES, [[0, 1], [1]]))
    batch_index, anchor_index = positive.nonzero(as_tuple=True)
    assert len(batch_index) >= 3                                      # every GT has positives
    decoded = build_postprocessor(cfg.model).decode(outputs, batch_index, anchor_index)
    torch.testing.assert_close(decoded, boxes, rtol=0, atol=1e-4)


def test_gfl_decoding_matches_a_hand_computed_integral():
    """One GFL anchor: distances are the expectations of softmax over 0..reg_max bins, times the stride."""
    cfg = tiny_config("gfl")
    model = build_model(cfg.model, 1)
    outputs = model(torch.zeros(1, 3, 128, 96))
    anchor = 5                                                        # P3, row 0, column 5
    logits = torch.full((4, 17), -30.0)
    logits[0, 2] = logits[0, 3] = 0.0                                 # left: mean of bins 2 and 3 = 2.5
    logits[1, 1] = 0.0                                                # top: 1
    logits[2, 4] = 0.0                                                # right: 4
    logits[3, 0] = logits[3, 2] = 0.0                                 # bottom: mean of 0 and 2 = 1
    outputs.box_regression[0, anchor] = logits.reshape(-1)
    box = build_postprocessor(cfg.model).decode(outputs, torch.tensor([0]), torch.tensor([anchor]))[0]
    center_x, center_y = 5 * 8.0, 0.0                                 # mmdetection centres: offset 0
    expected = [center_x - 2.5 * 8, center_y - 1 * 8, center_x + 4 * 8, center_y + 1 * 8]
    torch.testing.assert_close(box, torch.tensor(expected), rtol=0, atol=1e-4)
