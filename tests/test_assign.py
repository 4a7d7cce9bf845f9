"""Tests for detector/assign.py: batched assigners against per-image, per-GT reference loops."""
import itertools
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector import assign  # noqa: E402
from detector.assign import atss_assign, max_iou_assign  # noqa: E402

IMAGE_WIDTH, IMAGE_HEIGHT = 128, 96


# ----------------------------------------------------------------------------- scene building
def make_anchors(strides, shapes_per_stride):
    """Level-major anchors with centres at i * stride (offset 0).

    shapes_per_stride(stride) -> list of (width, height) per location.
    Returns ([A, 4] float64 anchors, list of anchors per level).
    """
    levels, counts = [], []
    for stride in strides:
        columns, rows = math.ceil(IMAGE_WIDTH / stride), math.ceil(IMAGE_HEIGHT / stride)
        y, x = torch.meshgrid(torch.arange(rows, dtype=torch.float64) * stride,
                              torch.arange(columns, dtype=torch.float64) * stride, indexing='ij')
        centres = torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)             # [locations, 2]
        sizes = torch.tensor(shapes_per_stride(stride), dtype=torch.float64)      # [shapes, 2]
        half = sizes[None] / 2
        boxes = torch.cat([centres[:, None] - half, centres[:, None] + half], dim=-1).reshape(-1, 4)
        levels.append(boxes)
        counts.append(boxes.shape[0])
    return torch.cat(levels), counts


def atss_anchors(anchors_per_location=1):
    ratios = [1.0, 0.5, 2.0][:anchors_per_location]
    return make_anchors([8, 16, 32, 64], lambda s: [(8 * s / math.sqrt(r), 8 * s * math.sqrt(r)) for r in ratios])


def retina_anchors(anchors_per_location):
    scales = [2 ** (k / 3) for k in range(3)]
    ratios = [0.5, 1.0, 2.0]
    shapes = [(scale, ratio) for scale in scales for ratio in ratios][:anchors_per_location]
    return make_anchors([8, 16, 32],
                        lambda s: [(4 * s * c / math.sqrt(r), 4 * s * c * math.sqrt(r)) for c, r in shapes])


def random_boxes(generator, count):
    centres = torch.rand(count, 2, generator=generator, dtype=torch.float64) * torch.tensor([IMAGE_WIDTH, IMAGE_HEIGHT])
    sizes = 6 + torch.rand(count, 2, generator=generator, dtype=torch.float64) * 80
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, IMAGE_WIDTH)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, IMAGE_HEIGHT)
    return boxes


def random_scene(seed, gt_counts=(5, 0, 3), max_gts=6, with_crowd=True):
    """B = len(gt_counts) images; padding rows hold garbage boxes that must be ignored."""
    generator = torch.Generator().manual_seed(seed)
    batch_size = len(gt_counts)
    gt_boxes = random_boxes(generator, batch_size * max_gts).view(batch_size, max_gts, 4)
    gt_valid = torch.zeros(batch_size, max_gts, dtype=torch.bool)
    gt_crowd = torch.zeros(batch_size, max_gts, dtype=torch.bool)
    for image, count in enumerate(gt_counts):
        gt_valid[image, :count] = True
        if with_crowd and count >= 2:
            gt_crowd[image, count - 1] = True
    return gt_boxes, gt_valid, gt_crowd


# ----------------------------------------------------------------------------- reference loops
def iou_one(box, anchors, eps=1e-6):
    """IoU of one box [4] with every anchor [A, 4] -> [A]."""
    area_box = (box[2] - box[0]) * (box[3] - box[1])
    area_anchors = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    width = (torch.minimum(anchors[:, 2], box[2]) - torch.maximum(anchors[:, 0], box[0])).clamp(min=0)
    height = (torch.minimum(anchors[:, 3], box[3]) - torch.maximum(anchors[:, 1], box[1])).clamp(min=0)
    overlap = width * height
    return overlap / (area_box + area_anchors - overlap).clamp(min=eps)


def reference_crowd(matched, anchors, boxes, valid, crowd, iof_thr):
    area_anchors = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).clamp(min=1e-6)
    for index in range(boxes.shape[0]):
        if not (valid[index] and crowd[index]):
            continue
        box = boxes[index]
        width = (torch.minimum(anchors[:, 2], box[2]) - torch.maximum(anchors[:, 0], box[0])).clamp(min=0)
        height = (torch.minimum(anchors[:, 3], box[3]) - torch.maximum(anchors[:, 1], box[1])).clamp(min=0)
        inside = width * height / area_anchors >= iof_thr
        matched[(matched < 0) & inside] = -2
    return matched


def reference_max_iou(anchors, boxes, valid, crowd, variant, pos_thr=0.5, neg_thr=0.4, min_pos=0.0, iof_thr=0.5):
    """One image. mmdet MaxIoUAssigner / torchvision Matcher, one GT at a time."""
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.long)
    gts = [index for index in range(boxes.shape[0]) if valid[index] and not crowd[index]]
    if gts:
        ious = [iou_one(boxes[index], anchors) for index in gts]
        best_iou, best_position = ious[0].clone(), torch.zeros(anchors.shape[0], dtype=torch.long)
        for position in range(1, len(gts)):      # first GT wins on ties: replace only when strictly larger
            better = ious[position] > best_iou
            best_iou[better] = ious[position][better]
            best_position[better] = position
        best_gt = torch.tensor(gts)[best_position]
        matched[:] = -2
        matched[best_iou < neg_thr] = -1
        matched[best_iou >= pos_thr] = best_gt[best_iou >= pos_thr]
        some_gts_best = torch.zeros(anchors.shape[0], dtype=torch.bool)
        for position, index in enumerate(gts):
            gt_best = ious[position].max()
            if gt_best < min_pos:
                continue
            if variant == 'mmdet':
                matched[ious[position] == gt_best] = index
            else:
                some_gts_best |= ious[position] == gt_best
        if variant == 'torchvision':
            matched[some_gts_best] = best_gt[some_gts_best]
    return reference_crowd(matched, anchors, boxes, valid, crowd, iof_thr)


def reference_atss(anchors, counts, boxes, valid, crowd, topk=9, per_location=1, iof_thr=0.5):
    """One image. ATSS from the paper / mmdet description, one GT and one level at a time."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    best_iou = torch.full((anchors.shape[0],), -1.0, dtype=torch.float64)
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.long)
    thresholds = {}
    for index in range(boxes.shape[0]):
        if not valid[index] or crowd[index]:
            continue
        box = boxes[index]
        ious = iou_one(box, anchors)
        gt_centre = (box[:2] + box[2:]) / 2
        candidates, start = [], 0
        for count in counts:
            distance = ((centres[start:start + count] - gt_centre) ** 2).sum(1).sqrt()
            k = min(topk * per_location, count)
            # torch.topk as mmdetection calls it: equidistant anchors on the grid are common, and which of them
            # become candidates is topk's choice (the nearest k are the same set either way without ties)
            candidates += (distance.topk(k, largest=False).indices + start).tolist()
            start += count
        candidate_ious = ious[candidates]
        threshold = candidate_ious.mean() + candidate_ious.std()
        thresholds[index] = threshold
        for anchor in candidates:
            x, y = centres[anchor].tolist()
            margin = min(x - box[0].item(), y - box[1].item(), box[2].item() - x, box[3].item() - y)
            if ious[anchor] >= threshold and margin > 0.01 and ious[anchor] > best_iou[anchor]:
                best_iou[anchor] = ious[anchor]
                matched[anchor] = index
    return reference_crowd(matched, anchors, boxes, valid, crowd, iof_thr), thresholds


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize('seed', [0, 1, 2, 3])
@pytest.mark.parametrize('anchors_per_location', [1, 3])
@pytest.mark.parametrize('chunk_elements', [2 ** 23, 1])          # all GTs at once, or one GT per chunk
def test_atss_batched_equals_reference(seed, anchors_per_location, chunk_elements, monkeypatch):
    monkeypatch.setattr(assign, 'CHUNK_ELEMENTS', chunk_elements)
    anchors, counts = atss_anchors(anchors_per_location)
    assert min(counts) < 9 * anchors_per_location                 # one level smaller than k
    gt_boxes, gt_valid, gt_crowd = random_scene(seed)
    matched, thresholds = atss_assign(anchors, counts, gt_boxes, gt_valid, gt_crowd,
                                      anchors_per_location=anchors_per_location, crowd_iof_thr=0.5)
    assert matched.shape == (3, anchors.shape[0]) and matched.dtype == torch.long
    assert thresholds.shape == (3, gt_boxes.shape[1])
    for image in range(3):
        expected, expected_thresholds = reference_atss(anchors, counts, gt_boxes[image], gt_valid[image],
                                                       gt_crowd[image], per_location=anchors_per_location)
        assert torch.equal(matched[image], expected)
        for index, value in expected_thresholds.items():
            assert torch.allclose(thresholds[image, index], value, rtol=1e-12, atol=1e-12)
    assert (matched[1] == -1).all()                                # image without GT
    assert (matched >= 0).any()


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('variant', ['mmdet', 'torchvision'])
@pytest.mark.parametrize('anchors_per_location', [3, 9])
@pytest.mark.parametrize('chunk_elements', [2 ** 23, 3000])       # all GTs at once, or 1-2 GTs per chunk
def test_max_iou_batched_equals_reference(seed, variant, anchors_per_location, chunk_elements, monkeypatch):
    monkeypatch.setattr(assign, 'CHUNK_ELEMENTS', chunk_elements)
    anchors, _ = retina_anchors(anchors_per_location)
    gt_boxes, gt_valid, gt_crowd = random_scene(seed, gt_counts=(4, 0, 6))
    matched, max_iou = max_iou_assign(anchors, gt_boxes, gt_valid, gt_crowd, low_quality=variant, crowd_iof_thr=0.5)
    assert matched.shape == max_iou.shape == (3, anchors.shape[0])
    for image in range(3):
        expected = reference_max_iou(anchors, gt_boxes[image], gt_valid[image], gt_crowd[image], variant)
        assert torch.equal(matched[image], expected)
    assert (matched[1] == -1).all() and (max_iou[1] == 0).all()
    assert {-2, -1}.issubset(set(matched.unique().tolist())) and (matched >= 0).any()


def test_max_iou_without_low_quality_only_thresholds():
    anchors, _ = retina_anchors(9)
    gt_boxes, gt_valid, _ = random_scene(5, gt_counts=(3, 2))
    matched, max_iou = max_iou_assign(anchors, gt_boxes, gt_valid, low_quality='none')
    assert torch.equal(matched >= 0, max_iou >= 0.5)
    assert torch.equal(matched == -1, max_iou < 0.4)


def test_crowd_region_is_ignored_and_never_positive():
    anchors = torch.tensor([[8., 8., 24., 24.],       # inside the crowd box
                            [0., 0., 64., 64.],       # equal to the crowd box
                            [90., 60., 110., 80.],    # far from everything
                            [70., 0., 90., 20.]],     # the person's box
                           dtype=torch.float64)
    gt_boxes = torch.tensor([[[0., 0., 64., 64.], [70., 0., 90., 20.]]], dtype=torch.float64)
    gt_valid = torch.tensor([[True, True]])
    gt_crowd = torch.tensor([[True, False]])
    for low_quality in ('mmdet', 'torchvision', 'none'):
        matched, _ = max_iou_assign(anchors, gt_boxes, gt_valid, gt_crowd, low_quality=low_quality, crowd_iof_thr=0.5)
        assert matched.tolist() == [[-2, -2, -1, 1]]
        # mmdetection's default (ignore_iof_thr -1): the crowd box is only never positive
        matched, _ = max_iou_assign(anchors, gt_boxes, gt_valid, gt_crowd, low_quality=low_quality)
        assert matched.tolist() == [[-1, -1, -1, 1]]
    matched, thresholds = atss_assign(anchors, [4], gt_boxes, gt_valid, gt_crowd, topk=2, crowd_iof_thr=0.5)
    assert matched[0, :3].tolist() == [-2, -2, -1] and (matched != 0).all()
    assert thresholds[0, 0] == 0
    # An image with only a crowd box: the crowd rule still applies, nothing is positive.
    only_crowd = torch.tensor([[True, False]])
    matched, _ = max_iou_assign(anchors, gt_boxes, only_crowd, gt_crowd, crowd_iof_thr=0.5)
    assert matched.tolist() == [[-2, -2, -1, -1]]
    matched, _ = atss_assign(anchors, [4], gt_boxes, only_crowd, gt_crowd, topk=2, crowd_iof_thr=0.5)
    assert matched.tolist() == [[-2, -2, -1, -1]]


def inside_cells(counts, strides, per_location, pad_w, pad_h):
    """[A] bool, anchor by anchor in make_anchors' order: its cell (column, row) starts inside pad_w x pad_h."""
    flags = []
    for count, stride in zip(counts, strides):
        columns, rows = math.ceil(IMAGE_WIDTH / stride), math.ceil(IMAGE_HEIGHT / stride)
        assert count == columns * rows * per_location
        for row in range(rows):
            for column in range(columns):
                flags += [column * stride < pad_w and row * stride < pad_h] * per_location
    return torch.tensor(flags)


@pytest.mark.parametrize('seed', [0, 1])
def test_anchors_outside_an_images_padded_area_are_ignored_and_never_candidates(seed):
    """mmdetection assigns only the anchors inside each image's own padded area (valid_flags), with the ATSS
    k counting those, and gives the others no loss. Reference: the per-image loop run on that subset alone."""
    strides = [8, 16, 32, 64]
    anchors, counts = atss_anchors(1)
    gt_boxes, gt_valid, gt_crowd = random_scene(seed, gt_counts=(4, 3, 0), with_crowd=False)
    pads = [(128, 96), (64, 64), (96, 32)]                                  # (w, h) of each image's own area
    valid = torch.stack([inside_cells(counts, strides, 1, w, h) for w, h in pads])   # [B, A]
    gt_boxes[1, :, 0::2] = gt_boxes[1, :, 0::2].clamp(max=64)              # image 1's GTs lie inside it
    gt_boxes[1, :, 1::2] = gt_boxes[1, :, 1::2].clamp(max=64)
    gt_valid[1] &= (gt_boxes[1, :, 2] - gt_boxes[1, :, 0] > 2) & (gt_boxes[1, :, 3] - gt_boxes[1, :, 1] > 2)
    matched, _ = atss_assign(anchors, counts, gt_boxes, gt_valid, gt_crowd, anchors_valid=valid)
    for image in range(3):
        inside = valid[image]
        starts = [0] + list(itertools.accumulate(counts))
        inside_counts = [int(inside[a:b].sum()) for a, b in zip(starts[:-1], starts[1:])]
        expected = torch.full((anchors.shape[0],), -2, dtype=torch.long)
        expected[inside], _ = reference_atss(anchors[inside], inside_counts, gt_boxes[image], gt_valid[image],
                                             gt_crowd[image])
        assert torch.equal(matched[image], expected)
    assert (matched[1][~valid[1]] == -2).all() and (matched[1] >= 0).any() and (~valid[1]).sum() > 0
    retina, retina_counts = retina_anchors(3)
    valid = torch.stack([inside_cells(retina_counts, [8, 16, 32], 3, w, h) for w, h in pads])
    for variant in ('mmdet', 'torchvision'):
        matched, _ = max_iou_assign(retina, gt_boxes, gt_valid, gt_crowd, low_quality=variant, anchors_valid=valid)
        for image in range(3):
            expected = torch.full((retina.shape[0],), -2, dtype=torch.long)
            expected[valid[image]] = reference_max_iou(retina[valid[image]], gt_boxes[image], gt_valid[image],
                                                       gt_crowd[image], variant)
            assert torch.equal(matched[image], expected)


def test_no_gt_gives_all_background():
    anchors, counts = atss_anchors()
    for max_gts in (0, 3):
        gt_boxes = torch.rand(2, max_gts, 4, dtype=torch.float64) * 50
        gt_valid = torch.zeros(2, max_gts, dtype=torch.bool)
        matched, max_iou = max_iou_assign(anchors, gt_boxes, gt_valid)
        assert matched.shape == (2, anchors.shape[0]) and (matched == -1).all() and (max_iou == 0).all()
        matched, thresholds = atss_assign(anchors, counts, gt_boxes, gt_valid)
        assert matched.shape == (2, anchors.shape[0]) and (matched == -1).all()
        assert thresholds.shape == (2, max_gts)


def test_float32_and_half_inputs_agree_with_float64():
    anchors, counts = atss_anchors()
    gt_boxes, gt_valid, gt_crowd = random_scene(7)
    reference, _ = atss_assign(anchors, counts, gt_boxes, gt_valid, gt_crowd)
    matched, thresholds = atss_assign(anchors.float(), counts, gt_boxes.float(), gt_valid, gt_crowd)
    assert torch.equal(matched, reference) and thresholds.dtype == torch.float32
    matched, max_iou = max_iou_assign(anchors.half(), gt_boxes.half(), gt_valid, gt_crowd)
    assert matched.dtype == torch.long and max_iou.dtype == torch.float32


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_atss_threshold_ties_and_centre_margin(dtype):
    """Two anchors with exactly equal IoU: std 0, threshold == IoU, so only '>=' keeps them.
    The anchor centres lie 1/32 (> 0.01) or 1/128 (< 0.01) inside the GT's left/right sides."""
    anchors = torch.tensor([[0., 0., 16., 16.], [16., 0., 32., 16.]], dtype=dtype)
    for margin, expected in ((2 ** -5, [0, 0]), (2 ** -7, [-1, -1])):
        gt_boxes = torch.tensor([[[8 - margin, 0., 24 + margin, 16.]]], dtype=dtype)
        matched, thresholds = atss_assign(anchors, [2], gt_boxes, torch.tensor([[True]]))
        assert thresholds[0, 0] == iou_one(gt_boxes[0, 0], anchors)[0]
        assert matched.tolist() == [expected]


def test_max_iou_low_quality_tie_order():
    """Two identical GTs share their best anchor (IoU 0.25): mmdet gives it to the last GT,
    torchvision to the anchor's own argmax (the first GT)."""
    anchors = torch.tensor([[0., 0., 32., 32.], [64., 0., 96., 32.]])
    gt_boxes = torch.tensor([[[4., 4., 20., 20.], [4., 4., 20., 20.]]])
    gt_valid = torch.tensor([[True, True]])
    expected = {'mmdet': [[1, -1]], 'torchvision': [[0, -1]], 'none': [[-1, -1]]}
    for low_quality, result in expected.items():
        matched, max_iou = max_iou_assign(anchors, gt_boxes, gt_valid, low_quality=low_quality)
        assert matched.tolist() == result
        assert max_iou.tolist() == [[0.25, 0.0]]
