"""Whole heads, end to end, against per-image reference code written here from mmdetection 3.3's procedure:
fixed random head outputs and GTs for a batch of two unequal images in one padded tensor -> the criterion's
losses and the post-processor's detections, in float64 and float32.

The reference follows mmdetection image by image: anchors outside the image's own padded area are dropped
before assignment (valid_flags), the assigners are the per-GT reference loops of test_assign.py run on the
remaining anchors, the losses are written out element by element (focal, QFL, DFL, GIoU, L1, centerness BCE)
with mmdetection's normalisers, and inference goes level by level: threshold, top-k, decode, clip, rescale by
the reciprocal per-axis factors, drop boxes without area, per-class NMS (torchvision.ops.nms), max_per_img.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from test_assign import reference_atss, reference_max_iou
from torchvision.ops import nms

from detector import build_criterion, build_postprocessor
from detector.anchors import AnchorGenerator
from detector.config import load_config
from detector.detector import HeadOutputs

NUM_CLASSES = 3
FEATURE_SIZES = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]       # a 128 x 160 batch tensor, strides 8..128
STRIDES = [8, 16, 32, 64, 128]
IMAGE_SIZES = [(128, 150), (70, 90)]                               # (h, w) after resize; image 1 is padded
PAD_SIZES = [(128, 160), (96, 96)]                                 # each rounded up to 32
SCALE_FACTORS = [(150 / 301, 128 / 256), (90 / 179, 70 / 139)]     # (w, h) resized / original, unequal
GT_BOXES = [[[12.0, 10.0, 70.0, 60.0], [60.0, 40.0, 140.0, 120.0], [100.0, 5.0, 118.0, 30.0]],
            [[5.0, 8.0, 40.0, 60.0], [30.0, 20.0, 88.0, 68.0]]]
GT_LABELS = [[0, 2, 1], [1, 2]]
CONFIGS = {"retinanet": "retinanet_r50.yaml", "atss": "atss_r50.yaml", "gfl": "gfl_r50.yaml"}


def scene(head_type, dtype, seed=0, second_image_has_gt=True):
    cfg = load_config(CONFIGS[head_type], ["model.backbone.pretrained=null", "model.test.score_thr=0.3",
                                           "model.test.max_per_img=20"])
    anchor_cfg = cfg.model.anchors
    generator = AnchorGenerator(anchor_cfg.strides, anchor_cfg.octave_base_scale, anchor_cfg.scales_per_octave,
                                anchor_cfg.ratios)
    anchors, strides, counts = generator(FEATURE_SIZES, torch.device("cpu"), dtype)
    per_location = generator.num_per_location
    box_channels = 4 * (cfg.model.head.reg_max + 1) if head_type == "gfl" else 4
    torch.manual_seed(seed)
    count = anchors.shape[0]
    regression = torch.randn(2, count, box_channels, dtype=dtype) * (1.5 if head_type == "gfl" else 0.3)
    outputs = HeadOutputs(torch.randn(2, count, NUM_CLASSES, dtype=dtype) - 1.0, regression,
                          torch.randn(2, count, dtype=dtype) if head_type == "atss" else None,
                          anchors, strides, counts)
    targets = {"boxes": torch.zeros(2, 3, 4, dtype=dtype), "labels": torch.full((2, 3), -1),
               "valid": torch.zeros(2, 3, dtype=torch.bool), "crowd": torch.zeros(2, 3, dtype=torch.bool),
               "pad_sizes": torch.tensor(PAD_SIZES), "image_sizes": torch.tensor(IMAGE_SIZES),
               "scale_factors": torch.tensor(SCALE_FACTORS, dtype=torch.float64)}
    for image, boxes in enumerate(GT_BOXES if second_image_has_gt else GT_BOXES[:1]):
        targets["boxes"][image, :len(boxes)] = torch.tensor(boxes, dtype=dtype)
        targets["labels"][image, :len(boxes)] = torch.tensor(GT_LABELS[image])
        targets["valid"][image, :len(boxes)] = True
    return cfg, outputs, targets, per_location


def valid_flags(pad_size, per_location):
    """mmdetection's AnchorGenerator.valid_flags for one image: location (y, x) of a level with stride s is
    valid when y < ceil(pad_h / s) and x < ceil(pad_w / s)."""
    flags = []
    for (height, width), stride in zip(FEATURE_SIZES, STRIDES):
        valid_h, valid_w = min(math.ceil(pad_size[0] / stride), height), min(math.ceil(pad_size[1] / stride), width)
        for y in range(height):
            for x in range(width):
                flags += [y < valid_h and x < valid_w] * per_location
    return torch.tensor(flags)


def level_counts(flags, per_location):
    counts, start = [], 0
    for height, width in FEATURE_SIZES:
        size = height * width * per_location
        counts.append(int(flags[start:start + size].sum()))
        start += size
    return counts


# --- losses by hand ----------------------------------------------------------------------------------------
def focal(logit, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logit)
    return torch.where(target > 0, -alpha * (1 - p) ** gamma * F.logsigmoid(logit),
                       -(1 - alpha) * p ** gamma * F.logsigmoid(-logit))


def qfl(logit, target, beta=2.0):
    p = torch.sigmoid(logit)
    bce = -(target * F.logsigmoid(logit) + (1 - target) * F.logsigmoid(-logit))
    return bce * (target - p).abs() ** beta


def iou_and_giou(pred, gt, eps=1e-6):
    """mmdetection bbox_overlaps, aligned: union and enclosing area clamped at eps."""
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_g = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    inter_w = (torch.minimum(pred[:, 2], gt[:, 2]) - torch.maximum(pred[:, 0], gt[:, 0])).clamp(min=0)
    inter_h = (torch.minimum(pred[:, 3], gt[:, 3]) - torch.maximum(pred[:, 1], gt[:, 1])).clamp(min=0)
    overlap = inter_w * inter_h
    union = (area_p + area_g - overlap).clamp(min=eps)
    enclose = ((torch.maximum(pred[:, 2], gt[:, 2]) - torch.minimum(pred[:, 0], gt[:, 0]))
               * (torch.maximum(pred[:, 3], gt[:, 3]) - torch.minimum(pred[:, 1], gt[:, 1]))).clamp(min=eps)
    iou = overlap / union
    return iou, iou - (enclose - union) / enclose


def decode_deltas(anchor, delta, stds):
    delta = delta * torch.tensor(stds, dtype=delta.dtype)
    width, height = anchor[:, 2] - anchor[:, 0], anchor[:, 3] - anchor[:, 1]
    cx, cy = (anchor[:, 0] + anchor[:, 2]) * 0.5, (anchor[:, 1] + anchor[:, 3]) * 0.5
    limit = abs(math.log(16 / 1000))
    w, h = width * delta[:, 2].clamp(-limit, limit).exp(), height * delta[:, 3].clamp(-limit, limit).exp()
    x, y = cx + width * delta[:, 0], cy + height * delta[:, 1]
    return torch.stack([x - w * 0.5, y - h * 0.5, x + w * 0.5, y + h * 0.5], dim=1)


def encode_deltas(anchor, gt):
    width, height = anchor[:, 2] - anchor[:, 0], anchor[:, 3] - anchor[:, 1]
    cx, cy = (anchor[:, 0] + anchor[:, 2]) * 0.5, (anchor[:, 1] + anchor[:, 3]) * 0.5
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = (gt[:, 0] + gt[:, 2]) * 0.5, (gt[:, 1] + gt[:, 3]) * 0.5
    return torch.stack([(gx - cx) / width, (gy - cy) / height, torch.log(gw / width), torch.log(gh / height)], 1)


def gfl_distances(logits, reg_max=16):
    probabilities = logits.reshape(-1, 4, reg_max + 1).softmax(-1)
    return (probabilities * torch.arange(reg_max + 1, dtype=logits.dtype)).sum(-1)        # [P, 4] stride units


def reference_losses(head_type, outputs, targets, per_location):
    """Per image: valid anchors -> reference assignment -> losses summed; then mmdetection's normalisers."""
    sums = {"cls": 0.0, "box": 0.0, "centerness": 0.0, "dfl": 0.0, "box_weight": 0.0}
    avg_factor = 0
    for image in range(2):
        inside = valid_flags(PAD_SIZES[image], per_location)
        anchors, strides = outputs.anchors[inside], outputs.strides[inside]
        boxes, valid = targets["boxes"][image], targets["valid"][image]
        if head_type == "retinanet":
            matched = reference_max_iou(anchors, boxes, valid, targets["crowd"][image], "mmdet")
        else:
            matched, _ = reference_atss(anchors, level_counts(inside, per_location), boxes, valid,
                                        targets["crowd"][image])
        assert (matched >= 0).any() == valid.any()
        positive = matched >= 0
        weight = (matched != -2).to(anchors.dtype)                                # label weights
        logits = outputs.cls_logits[image][inside]
        labels = targets["labels"][image][matched.clamp(min=0)].clamp(min=0)    # padding rows hold -1
        one_hot = F.one_hot(labels, NUM_CLASSES).to(anchors.dtype) * positive[:, None]
        gt = boxes[matched[positive]]
        avg_factor += max(int(positive.sum()), 1)                                # an image without positives: 1
        regression = outputs.box_regression[image][inside][positive]
        pos_anchors = anchors[positive]
        if head_type == "retinanet":
            sums["cls"] += (focal(logits, one_hot) * weight[:, None]).sum()
            sums["box"] += (regression - encode_deltas(pos_anchors, gt)).abs().sum()
        elif head_type == "atss":
            sums["cls"] += (focal(logits, one_hot) * weight[:, None]).sum()
            centre = (pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2
            left_right = torch.stack([centre[:, 0] - gt[:, 0], gt[:, 2] - centre[:, 0]], 1)
            top_bottom = torch.stack([centre[:, 1] - gt[:, 1], gt[:, 3] - centre[:, 1]], 1)
            centerness = torch.sqrt(left_right.min(1).values / left_right.max(1).values
                                    * top_bottom.min(1).values / top_bottom.max(1).values)
            _, giou = iou_and_giou(decode_deltas(pos_anchors, regression, (0.1, 0.1, 0.2, 0.2)), gt)
            sums["box"] += ((1 - giou) * centerness).sum()
            sums["box_weight"] += centerness.sum()
            pred = outputs.centerness[image][inside][positive]
            sums["centerness"] += -(centerness * F.logsigmoid(pred) + (1 - centerness) * F.logsigmoid(-pred)).sum()
        else:
            centre = (pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2
            stride = strides[positive][:, None]
            distances = gfl_distances(regression) * stride
            pred = torch.cat([centre - distances[:, :2], centre + distances[:, 2:]], 1)
            iou, giou = iou_and_giou(pred, gt)
            soft = one_hot * 0
            soft[positive] = one_hot[positive] * iou.clamp(min=0)[:, None]
            sums["cls"] += (qfl(logits, soft) * weight[:, None]).sum()
            score = torch.sigmoid(logits[positive]).max(1).values
            sums["box"] += ((1 - giou) * score).sum()
            target = (torch.cat([centre - gt[:, :2], gt[:, 2:] - centre], 1) / stride).clamp(0, 16 - 0.1)
            log_probs = regression.reshape(-1, 4, 17).log_softmax(-1)
            left = target.floor().long()
            dfl = -((left + 1 - target) * log_probs.gather(-1, left[..., None])[..., 0]
                    + (target - left) * log_probs.gather(-1, (left + 1)[..., None])[..., 0])
            sums["dfl"] += (dfl.mean(1) * score).sum()
            sums["box_weight"] += score.sum()
    avg_factor = max(avg_factor, 1)
    if head_type == "retinanet":
        return {"loss_cls": sums["cls"] / avg_factor, "loss_box": sums["box"] / avg_factor}
    normaliser = max(float(sums["box_weight"]), 1.0)
    if head_type == "atss":
        return {"loss_cls": sums["cls"] / avg_factor, "loss_box": 2 * sums["box"] / normaliser,
                "loss_centerness": sums["centerness"] / avg_factor}
    return {"loss_cls": sums["cls"] / avg_factor, "loss_box": 2 * sums["box"] / normaliser,
            "loss_dfl": 0.25 * sums["dfl"] / normaliser}


def reference_detections(head_type, outputs, test_cfg):
    results = []
    for image in range(2):
        height, width = IMAGE_SIZES[image]
        boxes, scores, labels = [], [], []
        start = 0
        for count in outputs.num_per_level:
            level = slice(start, start + count)
            probabilities = torch.sigmoid(outputs.cls_logits[image, level]).reshape(-1)
            order = probabilities.argsort(descending=True, stable=True)
            order = order[probabilities[order] > test_cfg.score_thr][:test_cfg.nms_pre]
            anchor_index, label = order // NUM_CLASSES + start, order % NUM_CLASSES
            anchors, regression = outputs.anchors[anchor_index], outputs.box_regression[image, anchor_index]
            if head_type == "gfl":
                distances = gfl_distances(regression) * outputs.strides[anchor_index, None]
                centre = (anchors[:, :2] + anchors[:, 2:]) / 2
                decoded = torch.cat([centre - distances[:, :2], centre + distances[:, 2:]], 1)
            else:
                stds = (0.1, 0.1, 0.2, 0.2) if head_type == "atss" else (1.0, 1.0, 1.0, 1.0)
                decoded = decode_deltas(anchors, regression, stds)
            decoded[:, 0::2] = decoded[:, 0::2].clamp(0, width)
            decoded[:, 1::2] = decoded[:, 1::2].clamp(0, height)
            score = probabilities[order]
            if head_type == "atss":
                score = score * torch.sigmoid(outputs.centerness[image, anchor_index])
            boxes.append(decoded)
            scores.append(score)
            labels.append(label)
            start += count
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        scale_x, scale_y = SCALE_FACTORS[image]
        boxes = boxes * torch.tensor([1 / scale_x, 1 / scale_y] * 2, dtype=boxes.dtype)
        keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        kept = torch.cat([torch.nonzero(labels == c)[:, 0][nms(boxes[labels == c], scores[labels == c],
                                                               test_cfg.nms_iou)] for c in range(NUM_CLASSES)])
        kept = kept[scores[kept].argsort(descending=True, stable=True)][:test_cfg.max_per_img]
        results.append((boxes[kept], scores[kept], labels[kept]))
    return results


@pytest.mark.parametrize("second_image_has_gt", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("head_type", ["retinanet", "atss", "gfl"])
def test_losses_and_detections_of_a_padded_batch_equal_the_per_image_reference(head_type, dtype, second_image_has_gt):
    cfg, outputs, targets, per_location = scene(head_type, dtype, second_image_has_gt=second_image_has_gt)
    losses = build_criterion(cfg.model, NUM_CLASSES)(outputs, targets)
    expected = reference_losses(head_type, outputs, targets, per_location)
    tolerance = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}
    assert set(expected) == {key for key in losses if key.startswith("loss_")}
    for key, value in expected.items():
        assert losses[key].dtype == dtype, key                     # float64 passes through, never cast down
        torch.testing.assert_close(losses[key], torch.as_tensor(value, dtype=dtype), **tolerance, msg=key)
    # anchors of image 1 beyond its own 96 x 96 padded area take no loss: moving their logits changes nothing
    outside = ~valid_flags(PAD_SIZES[1], per_location)
    assert outside.sum() > 0
    moved = outputs.cls_logits.clone()
    moved[1, outside] += 5.0
    shifted = build_criterion(cfg.model, NUM_CLASSES)(
        HeadOutputs(moved, outputs.box_regression, outputs.centerness, outputs.anchors, outputs.strides,
                    outputs.num_per_level), targets)
    torch.testing.assert_close(shifted["loss_cls"], losses["loss_cls"], rtol=0, atol=0)

    detections = build_postprocessor(cfg.model)(outputs, targets["image_sizes"], targets["scale_factors"])
    for result, (boxes, scores, labels) in zip(detections, reference_detections(head_type, outputs, cfg.model.test)):
        assert len(scores) > 3 and result["boxes"].dtype == dtype
        torch.testing.assert_close(result["scores"], scores, **tolerance)
        torch.testing.assert_close(result["boxes"], boxes, **tolerance)
        assert result["labels"].tolist() == labels.tolist()
