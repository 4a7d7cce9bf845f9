"""Criteria: positives, empty images, the DDP gradient rule, GFL soft targets / DFL clamp / normaliser,
RetinaNet focal normalisation and ignored anchors, and every box loss with every head."""
import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_detector import INPUT_SHAPE, padded_targets, tiny_config
from torchvision.ops import box_iou, generalized_box_iou

from detector import build_criterion, build_model
from detector.anchors import AnchorGenerator
from detector.assign import atss_assign, max_iou_assign
from detector.detector import HeadOutputs

HEADS = ["retinanet", "atss", "gfl"]
NUM_CLASSES = 4
# image 0 (128 x 96) has two objects, image 1 none
TWO_IMAGES = dict(boxes_per_image=[[[10.0, 20.0, 60.0, 90.0], [40.0, 50.0, 90.0, 120.0]], []],
                  labels_per_image=[[1, 3], []])


@functools.lru_cache(maxsize=None)
def tiny_model(head_type):
    torch.manual_seed(0)
    return build_model(tiny_config(head_type).model, NUM_CLASSES)


@functools.lru_cache(maxsize=None)
def detached_outputs(head_type):
    torch.manual_seed(1)
    with torch.no_grad():
        return tiny_model(head_type)(torch.randn(INPUT_SHAPE))


def leaf_outputs(head_type, cls_shift=0.0):
    """The tiny model's outputs as fresh leaf tensors that require grad (no backbone in the graph)."""
    outputs = detached_outputs(head_type)
    leaf = lambda t: None if t is None else t.clone().requires_grad_(True)  # noqa: E731
    return dataclasses.replace(outputs, cls_logits=leaf(outputs.cls_logits + cls_shift),
                               box_regression=leaf(outputs.box_regression), centerness=leaf(outputs.centerness))


def assigner_positives(cfg, outputs, targets):
    """matched [B, A] straight from the assigner functions, with the config's parameters."""
    assigner = cfg.model.assigner
    if assigner.type == "atss":
        return atss_assign(outputs.anchors, outputs.num_per_level, targets["boxes"], targets["valid"],
                           targets["crowd"], topk=assigner.topk)[0]
    return max_iou_assign(outputs.anchors, targets["boxes"], targets["valid"], targets["crowd"],
                          pos_iou_thr=assigner.pos_iou_thr, neg_iou_thr=assigner.neg_iou_thr,
                          min_pos_iou=assigner.min_pos_iou, low_quality=assigner.low_quality)[0]


def loss_terms(losses):
    return {k: v for k, v in losses.items() if k.startswith("loss_")}


@pytest.mark.parametrize("head_type", HEADS)
def test_batch_with_an_empty_image(head_type):
    cfg = tiny_config(head_type)
    outputs, targets = leaf_outputs(head_type), padded_targets(**TWO_IMAGES)
    losses = build_criterion(cfg.model, NUM_CLASSES)(outputs, targets)
    expected_keys = {"retinanet": {"loss_cls", "loss_box"}, "atss": {"loss_cls", "loss_box", "loss_centerness"},
                     "gfl": {"loss_cls", "loss_box", "loss_dfl"}}[head_type]
    assert set(loss_terms(losses)) == expected_keys
    for key, value in loss_terms(losses).items():
        assert torch.isfinite(value) and value.item() > 0, key
    matched = assigner_positives(cfg, outputs, targets)
    assert (matched[1] == -1).all()                                  # the empty image: background only
    # mmdetection's normaliser: sum over images of max(positives, 1), so the empty image counts 1
    assert (matched[0] >= 0).sum().item() > 0
    assert losses["num_pos"].item() == (matched[0] >= 0).sum().item() + 1


@pytest.mark.parametrize("head_type", HEADS)
def test_all_empty_batch_gives_zero_box_losses_and_a_gradient_for_every_parameter(head_type):
    """DDP (find_unused_parameters=False) needs every trainable parameter in the graph even without GT."""
    model, cfg = tiny_model(head_type), tiny_config(head_type)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    outputs = model(torch.randn(INPUT_SHAPE))
    losses = build_criterion(cfg.model, NUM_CLASSES)(outputs, padded_targets([[], []]))
    for key in ("loss_box", "loss_dfl", "loss_centerness"):
        if key in losses:
            assert losses[key].item() == 0.0 and losses[key].requires_grad, key
    assert losses["loss_cls"].item() > 0 and losses["num_pos"].item() == 2.0   # each image without positives: 1
    sum(loss_terms(losses).values()).backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 0
    missing = [name for name, p in trainable if p.grad is None]
    assert missing == []
    assert model.head.reg_out.weight.grad.abs().sum() == 0 and model.head.cls_out.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def decoded_gfl_boxes(outputs, batch_index, anchor_index, reg_max):
    """Hand decode: d = sum_i i * softmax_i per side, box = centre -/+ d * stride."""
    logits = outputs.box_regression[batch_index, anchor_index].detach().reshape(-1, 4, reg_max + 1)
    distances = (logits.softmax(-1) * torch.arange(reg_max + 1.0)).sum(-1) * outputs.strides[anchor_index, None]
    anchors = outputs.anchors[anchor_index]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    return torch.cat([centres - distances[:, :2], centres + distances[:, 2:]], dim=1)


def test_gfl_quality_focal_target_is_the_iou_of_the_decoded_prediction():
    cfg = tiny_config("gfl")
    outputs, targets = leaf_outputs("gfl"), padded_targets(**TWO_IMAGES)
    criterion = build_criterion(cfg.model, NUM_CLASSES)
    captured = {}

    def recording_qfl(logits, labels, scores, **params):
        # the targets the loss received, densified here: [B * A, C] with scores[i] at labels[i] of positive rows
        dense = torch.zeros_like(logits)
        rows = (labels >= 0).nonzero().squeeze(1)
        dense[rows, labels[rows]] = scores[rows]
        captured["targets"] = dense
        return criterion_qfl(logits, labels, scores, **params)
    criterion_qfl, criterion.cls_fn = criterion.cls_fn, recording_qfl
    losses = criterion(outputs, targets)

    matched = assigner_positives(cfg, outputs, targets)
    batch_index, anchor_index = torch.nonzero(matched >= 0, as_tuple=True)
    gt_index = matched[batch_index, anchor_index]
    gt_boxes, gt_labels = targets["boxes"][batch_index, gt_index], targets["labels"][batch_index, gt_index]
    pred_boxes = decoded_gfl_boxes(outputs, batch_index, anchor_index, cfg.model.head.reg_max)
    iou = box_iou(pred_boxes, gt_boxes).diagonal()                    # [P]
    expected = torch.zeros_like(outputs.cls_logits)                   # [B, A, C]
    expected[batch_index, anchor_index, gt_labels] = iou

    num_anchors = outputs.anchors.shape[0]
    first = batch_index[0] * num_anchors + anchor_index[0]            # one positive, row of the flat [B * A, C]
    assert 0 < iou[0] < 1
    assert captured["targets"][first, gt_labels[0]].item() == pytest.approx(iou[0].item(), rel=1e-5)
    assert captured["targets"][first].count_nonzero() == 1
    assert torch.allclose(captured["targets"], expected.reshape(-1, NUM_CLASSES), atol=1e-6)

    # QFL by hand: BCE(x, y) |y - sigmoid(x)|^2, summed, / (positives of image 0 + 1 for the empty image 1)
    logits = outputs.cls_logits.detach()
    qfl = F.binary_cross_entropy_with_logits(logits, expected, reduction="none") * (expected - logits.sigmoid()) ** 2
    assert losses["loss_cls"].item() == pytest.approx((qfl.sum() / (len(iou) + 1)).item(), rel=1e-5)


def gfl_box_losses_by_hand(outputs, targets, matched, reg_max):
    """(loss_box, loss_dfl, sum of w): w = max class score (detached) of each positive;
    loss_box = 2 sum(w GIoU loss) / max(sum w, 1); loss_dfl = 0.25 sum(w mean-over-sides DFL) / max(sum w, 1),
    DFL targets in bins clamped to [0, reg_max - 0.1] (mmdetection)."""
    batch_index, anchor_index = torch.nonzero(matched >= 0, as_tuple=True)
    gt_boxes = targets["boxes"][batch_index, matched[batch_index, anchor_index]]
    weights = outputs.cls_logits[batch_index, anchor_index].detach().sigmoid().max(dim=1).values
    normaliser = max(weights.sum().item(), 1.0)
    pred_boxes = decoded_gfl_boxes(outputs, batch_index, anchor_index, reg_max)
    giou_loss = 1 - generalized_box_iou(pred_boxes, gt_boxes).diagonal()
    loss_box = 2 * (weights * giou_loss).sum() / normaliser

    anchors = outputs.anchors[anchor_index]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    sides = torch.cat([centres - gt_boxes[:, :2], gt_boxes[:, 2:] - centres], dim=1)
    target = (sides / outputs.strides[anchor_index, None]).clamp(0, reg_max - 0.1)     # [P, 4] bins
    log_probs = outputs.box_regression[batch_index, anchor_index].detach().reshape(-1, 4, reg_max + 1).log_softmax(-1)
    left = target.floor().long()
    dfl = -((left + 1 - target) * log_probs.gather(-1, left[..., None])[..., 0]
            + (target - left) * log_probs.gather(-1, (left + 1)[..., None])[..., 0])
    loss_dfl = 0.25 * (dfl.mean(dim=1) * weights).sum() / normaliser
    return loss_box.item(), loss_dfl.item(), weights.sum().item()


@pytest.mark.parametrize("cls_shift", [0.0, 6.0])
def test_gfl_box_and_dfl_losses_by_hand(cls_shift):
    cfg = tiny_config("gfl")
    outputs, targets = leaf_outputs("gfl", cls_shift), padded_targets(**TWO_IMAGES)
    losses = build_criterion(cfg.model, NUM_CLASSES)(outputs, targets)
    loss_box, loss_dfl, weight_sum = gfl_box_losses_by_hand(outputs, targets, assigner_positives(cfg, outputs, targets),
                                                            cfg.model.head.reg_max)
    # both branches of the clamp: scores near the 0.01 prior sum below 1, shifted logits above
    assert (weight_sum < 1) == (cls_shift == 0.0)
    assert losses["loss_box"].item() == pytest.approx(loss_box, rel=1e-5)
    assert losses["loss_dfl"].item() == pytest.approx(loss_dfl, rel=1e-5)


def single_level_outputs(grid, stride, num_classes, reg_max, seed=0):
    """HeadOutputs over one P3-like level of grid x grid GFL anchors (side 8 strides) with random logits."""
    generator = AnchorGenerator([stride], octave_base_scale=8, scales_per_octave=1, ratios=[1.0])
    anchors, strides, counts = generator([(grid, grid)], torch.device("cpu"))
    torch.manual_seed(seed)
    return HeadOutputs(torch.randn(1, len(anchors), num_classes), torch.randn(1, len(anchors), 4 * (reg_max + 1)),
                       None, anchors, strides, counts)


@pytest.mark.parametrize("box, clamped", [([10.0, 10.0, 310.0, 310.0], 36), ([32.0, 32.0, 288.0, 288.0], 24),
                                         ([140.0, 150.0, 200.0, 186.0], 0)])
def test_gfl_counts_and_clamps_distance_targets_at_reg_max(box, clamped):
    """At stride 8 (P3) reg_max 16 reaches 128 px. A 300 px box: sides ~150 px = 18.75 bins, all clamped; a 256 px
    box centred on an anchor: sides of exactly 16 bins count too (> 15.9); a 60 x 36 px box: none."""
    cfg = tiny_config("gfl")
    reg_max = cfg.model.head.reg_max
    outputs = single_level_outputs(grid=40, stride=8, num_classes=NUM_CLASSES, reg_max=reg_max)
    targets = padded_targets([[box]])
    losses = build_criterion(cfg.model, NUM_CLASSES)(outputs, targets)
    matched = assigner_positives(cfg, outputs, targets)
    positives = torch.nonzero(matched[0] >= 0)[:, 0]
    assert len(positives) == 9 if clamped else len(positives) > 0
    assert all(torch.isfinite(v) for v in loss_terms(losses).values())
    centres = (outputs.anchors[positives, :2] + outputs.anchors[positives, 2:]) / 2
    gt = torch.tensor(box)
    sides = torch.cat([centres - gt[:2], gt[2:] - centres], dim=1) / 8
    assert losses["dfl_clamped"].item() == (sides > reg_max - 0.1).sum().item() == clamped
    # the DFL reads the clamped targets (15.9 bins: the last bin 16 gets weight 0.9)
    _, loss_dfl, _ = gfl_box_losses_by_hand(outputs, targets, matched, reg_max)
    assert losses["loss_dfl"].item() == pytest.approx(loss_dfl, rel=1e-5)


RETINA_ANCHORS = torch.tensor([[0.0, 0.0, 32.0, 32.0],        # = the GT: the only positive (IoU 1)
                               [200.0, 200.0, 232.0, 232.0],   # background
                               [11.0, 0.0, 43.0, 32.0],        # IoU 0.488 with the GT: ignored (0.4 <= IoU < 0.5)
                               [100.0, 100.0, 132.0, 132.0]])  # background, or ignored inside a crowd box


def retina_outputs(cls_logits, deltas):
    return HeadOutputs(cls_logits[None], deltas[None], None, RETINA_ANCHORS, torch.full((4,), 8.0), [4])


def focal_by_hand(logits, targets, alpha=0.25, gamma=2.0):
    p = logits.sigmoid()
    positive = -alpha * (1 - p) ** gamma * torch.log(p)
    negative = -(1 - alpha) * p ** gamma * torch.log(1 - p)
    return torch.where(targets > 0, positive, negative)


def test_retinanet_single_positive_focal_loss_by_hand():
    cfg = tiny_config("retinanet")
    criterion = build_criterion(cfg.model, 2)
    torch.manual_seed(0)
    logits, deltas = torch.randn(4, 2), torch.randn(4, 4) * 0.1
    losses = criterion(retina_outputs(logits, deltas), padded_targets([[[0.0, 0.0, 32.0, 32.0]]], [[1]]))
    assert losses["num_pos"].item() == 1.0
    one_hot = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    kept = [0, 1, 3]                                                   # anchor 2 is ignored
    expected = focal_by_hand(logits[kept], one_hot[kept]).sum() / 1.0
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    # L1 on the deltas of the positive; the GT equals the anchor, so its target deltas are 0
    assert losses["loss_box"].item() == pytest.approx(deltas[0].abs().sum().item(), rel=1e-5)


def test_retinanet_ignored_and_crowd_anchors_do_not_touch_loss_cls():
    criterion = build_criterion(tiny_config("retinanet", "model.assigner.crowd_iof_thr=0.5").model, 2)
    targets = padded_targets([[[0.0, 0.0, 32.0, 32.0], [95.0, 95.0, 140.0, 140.0]]], [[1, 0]], [[False, True]])
    torch.manual_seed(0)
    logits, deltas = torch.randn(4, 2), torch.zeros(4, 4)
    base = criterion(retina_outputs(logits, deltas), targets)["loss_cls"].item()
    for anchor, changes in [(2, False), (3, False), (1, True)]:     # IoU-ignored, crowd-ignored, background
        moved = logits.clone()
        moved[anchor] += 3.0
        value = criterion(retina_outputs(moved, deltas), targets)["loss_cls"].item()
        assert (value != base) == changes, anchor
    # without the crowd flag the box is an ordinary GT and anchor 3 (IoU 0.506) becomes its positive
    targets["crowd"][:] = False
    assert criterion(retina_outputs(logits, deltas), targets)["num_pos"].item() == 2.0


def retinanet_losses_per_image(outputs, targets, matched):
    """torchvision RetinaNet's normalisation, written as its per-image loop: each image's focal loss over its
    non-ignored anchors and L1 on the (x, y, log w, log h) deltas of its positives, / max(its positives, 1);
    the mean of the images."""
    cls_total, box_total = 0.0, 0.0
    logits, deltas = outputs.cls_logits.detach(), outputs.box_regression.detach()
    for image in range(len(matched)):
        kept = matched[image] != -2
        one_hot = torch.zeros_like(logits[image])
        positive = torch.nonzero(matched[image] >= 0)[:, 0]
        gt_index = matched[image, positive]
        one_hot[positive, targets["labels"][image, gt_index]] = 1.0
        count = max(len(positive), 1)
        cls_total += focal_by_hand(logits[image][kept], one_hot[kept]).sum().item() / count
        anchors, gt = outputs.anchors[positive], targets["boxes"][image, gt_index]
        aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        target = torch.stack([((gt[:, 0] + gt[:, 2]) - (anchors[:, 0] + anchors[:, 2])) / 2 / aw,
                              ((gt[:, 1] + gt[:, 3]) - (anchors[:, 1] + anchors[:, 3])) / 2 / ah,
                              torch.log(gw / aw), torch.log(gh / ah)], dim=1)
        box_total += (deltas[image, positive] - target).abs().sum().item() / count
    return cls_total / len(matched), box_total / len(matched)


@pytest.mark.parametrize("boxes_per_image, labels_per_image", [
    (TWO_IMAGES["boxes_per_image"], TWO_IMAGES["labels_per_image"]),          # image 1 without GT
    ([[[10.0, 20.0, 60.0, 90.0], [40.0, 50.0, 90.0, 120.0]], [[5.0, 5.0, 30.0, 40.0]]], [[1, 3], [2]])])
def test_retinanet_per_image_normaliser_against_a_per_image_loop(boxes_per_image, labels_per_image):
    cfg = tiny_config("retinanet", "model.normaliser=image")
    outputs, targets = leaf_outputs("retinanet"), padded_targets(boxes_per_image, labels_per_image)
    losses = build_criterion(cfg.model, NUM_CLASSES)(outputs, targets)
    matched = assigner_positives(cfg, outputs, targets)
    counts = (matched >= 0).sum(dim=1).tolist()
    assert counts[0] > 0 and counts[0] != max(counts[1], 1)    # unequal images: the two normalisers differ
    expected_cls, expected_box = retinanet_losses_per_image(outputs, targets, matched)
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(expected_box, rel=1e-5)
    batch = build_criterion(tiny_config("retinanet").model, NUM_CLASSES)(outputs, targets)
    differences = [abs(batch["loss_cls"].item() / expected_cls - 1), abs(batch["loss_box"].item() / expected_box - 1)]
    assert max(differences) > 1e-3                                    # mmdetection's normaliser gives other values
    with pytest.raises(ValueError, match="model.normaliser: 'image' is RetinaNet's"):
        build_criterion(tiny_config("gfl", "model.normaliser=image").model, NUM_CLASSES)


BOX_LOSSES = ["iou", "giou", "diou", "ciou", "eiou", "focal_eiou", "l1", "smooth_l1", "focal_l1"]


@pytest.mark.parametrize("head_type", HEADS)
def test_every_box_loss_works_with_every_head(head_type):
    targets = padded_targets(**TWO_IMAGES)
    for loss_type in BOX_LOSSES:
        cfg = tiny_config(head_type, f"model.loss_box.type={loss_type}")
        outputs = leaf_outputs(head_type)
        losses = build_criterion(cfg.model, NUM_CLASSES)(outputs, targets)
        assert all(torch.isfinite(v) for v in loss_terms(losses).values()), loss_type
        assert losses["loss_box"].item() > 0, loss_type
        losses["loss_box"].backward()
        grad = outputs.box_regression.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, loss_type


def test_unknown_or_misplaced_loss_names_are_errors():
    with pytest.raises(ValueError) as error:
        build_criterion(tiny_config("gfl", "model.loss_box.type=gioux").model, NUM_CLASSES)
    message = str(error.value)
    assert "'gioux'" in message and all(name in message for name in BOX_LOSSES + ["quality_focal"])
    with pytest.raises(ValueError, match="model.loss_box.type: 'quality_focal' is a classification loss"):
        build_criterion(tiny_config("gfl", "model.loss_box.type=quality_focal").model, NUM_CLASSES)
    with pytest.raises(ValueError, match="model.loss_cls.type"):
        build_criterion(tiny_config("retinanet", "model.loss_cls.type=giou").model, NUM_CLASSES)


def test_atss_centerness_and_box_losses_by_hand():
    """loss_centerness = BCE(logit, c) summed over positives / num_pos with c = sqrt(min(l,r)/max(l,r) *
    min(t,b)/max(t,b)); loss_box = 2 sum(c GIoU loss) / max(sum c, 1) on deltas scaled by (0.1, 0.1, 0.2, 0.2)."""
    cfg = tiny_config("atss")
    outputs, targets = leaf_outputs("atss"), padded_targets(**TWO_IMAGES)
    losses = build_criterion(cfg.model, NUM_CLASSES)(outputs, targets)
    matched = assigner_positives(cfg, outputs, targets)
    batch_index, anchor_index = torch.nonzero(matched >= 0, as_tuple=True)
    gt = targets["boxes"][batch_index, matched[batch_index, anchor_index]]
    anchors = outputs.anchors[anchor_index]
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    left, right, top, bottom = cx - gt[:, 0], gt[:, 2] - cx, cy - gt[:, 1], gt[:, 3] - cy
    target = torch.sqrt(torch.minimum(left, right) / torch.maximum(left, right)
                        * torch.minimum(top, bottom) / torch.maximum(top, bottom))
    pred = outputs.centerness[batch_index, anchor_index].detach()
    expected = F.binary_cross_entropy_with_logits(pred, target, reduction="sum") / (len(target) + 1)
    assert losses["loss_centerness"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert math.isclose(losses["num_pos"].item(), len(target) + 1)     # + 1: image 1 has no positive
    deltas = outputs.box_regression[batch_index, anchor_index].detach() * torch.tensor([0.1, 0.1, 0.2, 0.2])
    width, height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    x, y = cx + deltas[:, 0] * width, cy + deltas[:, 1] * height
    half_w, half_h = width * deltas[:, 2].exp() / 2, height * deltas[:, 3].exp() / 2
    pred = torch.stack([x - half_w, y - half_h, x + half_w, y + half_h], dim=1)
    giou_loss = 1 - generalized_box_iou(pred, gt).diagonal()
    expected_box = 2 * (target * giou_loss).sum() / max(target.sum().item(), 1.0)
    assert target.sum() > 1                                          # the normaliser is the sum, not the clamp
    assert losses["loss_box"].item() == pytest.approx(expected_box.item(), rel=1e-5)
