"""Post-processing on hand-built HeadOutputs whose detections are known: threshold, per-level top-k,
class-wise and per-image NMS, max_per_img, rescale and clip, GFL and ATSS decoding and scores."""
import math

import torch

from detector.config import HeadConfig
from detector.config import TestConfig as InferenceConfig  # aliased: pytest would collect Test*
from detector.detector import HeadOutputs
from detector.families import ATSSFamily, GFLFamily, RetinaNetFamily
from detector.postprocess import PostProcessor

FAMILIES = {"retinanet": RetinaNetFamily, "atss": ATSSFamily, "gfl": GFLFamily}


def logit(p):
    p = torch.as_tensor(p, dtype=torch.float32)
    return torch.log(p / (1 - p))


def make_outputs(probs, anchors, deltas=None, num_per_level=None, centerness=None, strides=None):
    """probs [B, A, C] class scores; deltas default 0 (boxes = anchors)."""
    probs, anchors = torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(anchors, dtype=torch.float32)
    batch, count, _ = probs.shape
    deltas = torch.zeros(batch, count, 4) if deltas is None else torch.as_tensor(deltas, dtype=torch.float32)
    strides = torch.full((count,), 8.0) if strides is None else strides
    return HeadOutputs(logit(probs), deltas, centerness, anchors, strides, num_per_level or [count])


def run(outputs, head_type="retinanet", image_size=(200, 200), scale=(1.0, 1.0), **test_cfg):
    """Post-process with the head type's family; image_size (h, w) after resize, scale (w, h) factors."""
    batch = outputs.cls_logits.shape[0]
    postprocessor = PostProcessor(FAMILIES[head_type](HeadConfig(reg_max=16)),
                                  InferenceConfig(**{"nms_iou": 0.5, **test_cfg}))
    return postprocessor(outputs, torch.tensor([image_size] * batch), torch.tensor([scale] * batch,
                                                                                  dtype=torch.float64))


def as_rows(result):
    """[(x1, y1, x2, y2, score, label)] rounded, in the output order."""
    return [tuple(round(v, 4) for v in box) + (round(score, 4), label) for box, score, label in
            zip(result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist())]


FAR_APART = [[0, 0, 40, 40], [100, 100, 140, 140]]


def test_score_threshold_keeps_only_scores_above_it():
    outputs = make_outputs([[[0.9, 0.02], [0.04, 0.06]]], FAR_APART)
    (result,) = run(outputs, score_thr=0.05)
    assert as_rows(result) == [(0, 0, 40, 40, 0.9, 0), (100, 100, 140, 140, 0.06, 1)]
    (result,) = run(outputs, score_thr=0.5)
    assert as_rows(result) == [(0, 0, 40, 40, 0.9, 0)]


def test_nms_is_class_wise():
    overlapping = [[0, 0, 40, 40], [4, 0, 44, 40]]                   # IoU 0.818
    (result,) = run(make_outputs([[[0.9, 0.0], [0.0, 0.8]]], overlapping))
    assert as_rows(result) == [(0, 0, 40, 40, 0.9, 0), (4, 0, 44, 40, 0.8, 1)]   # different classes: both kept
    (result,) = run(make_outputs([[[0.9, 0.0], [0.8, 0.0]]], overlapping))
    assert as_rows(result) == [(0, 0, 40, 40, 0.9, 0)]                          # same class: suppressed
    (result,) = run(make_outputs([[[0.9, 0.0], [0.8, 0.0]]], overlapping), nms_iou=0.85)
    assert len(result["scores"]) == 2                                           # IoU 0.818 below 0.85
    half = [[0, 0, 40, 40], [20, 0, 60, 40]]                                    # IoU 1/3 < 0.5
    (result,) = run(make_outputs([[[0.9, 0.0], [0.8, 0.0]]], half))
    assert len(result["scores"]) == 2


def test_images_are_independent():
    overlapping = [[0, 0, 40, 40], [4, 0, 44, 40]]
    probs = [[[0.9, 0.0], [0.8, 0.0]], [[0.0, 0.0], [0.7, 0.0]]]
    first, second = run(make_outputs(probs, overlapping))
    assert as_rows(first) == [(0, 0, 40, 40, 0.9, 0)]
    assert as_rows(second) == [(4, 0, 44, 40, 0.7, 0)]   # not suppressed by image 0's 0.9 box
    same = [[[0.9, 0.3]], [[0.9, 0.3]]]
    first, second = run(make_outputs(same, [[0, 0, 40, 40]]))
    assert as_rows(first) == as_rows(second) == [(0, 0, 40, 40, 0.9, 0), (0, 0, 40, 40, 0.3, 1)]


def test_rescale_by_the_per_axis_factors_after_clipping_to_the_resized_image():
    anchors = [[10, 10, 30, 40], [50, 30, 70, 45]]                   # the second crosses the right edge
    outputs = make_outputs([[[0.9, 0.0], [0.0, 0.8]]], anchors)
    # 120 x 100 resized by 0.5 and rounded to 61 x 50: factors 61 / 120 and 0.5; clipped at x = 61 first
    (result,) = run(outputs, image_size=(50, 61), scale=(61 / 120, 0.5))
    expected = [(10 * 120 / 61, 20, 30 * 120 / 61, 80, 0.9, 0), (50 * 120 / 61, 60, 120, 90, 0.8, 1)]
    assert as_rows(result) == [tuple(round(v, 4) for v in row[:4]) + row[4:] for row in expected]
    # negative coordinates are clipped at 0
    (result,) = run(make_outputs([[[0.9, 0.0]]], [[-10, -5, 20, 20]]), image_size=(50, 60), scale=(2.0, 2.0))
    assert as_rows(result) == [(0, 0, 10, 10, 0.9, 0)]


def test_boxes_without_width_or_height_after_clipping_are_dropped_before_nms():
    """mmdetection's min_bbox_size 0: a box left of the image clips to zero width and must not take a slot or
    suppress anything; here it would otherwise be the top-scoring box."""
    anchors = [[-50, 10, -10, 40], [10, 10, 50, 40], [20, 60, 60, 90]]
    outputs = make_outputs([[[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]]], anchors)
    (result,) = run(outputs, image_size=(100, 100), max_per_img=2)
    assert as_rows(result) == [(10, 10, 50, 40, 0.8, 0), (20, 60, 60, 90, 0.7, 0)]


def test_max_per_image_keeps_the_best():
    anchors = [[i * 50, 0, i * 50 + 40, 40] for i in range(5)]
    probs = [[[0.5, 0.0], [0.9, 0.0], [0.6, 0.0], [0.8, 0.0], [0.7, 0.0]]]
    (result,) = run(make_outputs(probs, anchors), image_size=(100, 300), max_per_img=3)
    assert [round(s, 4) for s in result["scores"].tolist()] == [0.9, 0.8, 0.7]
    assert result["boxes"][:, 0].tolist() == [50, 150, 200]


def test_nms_pre_is_per_level():
    anchors = [[i * 50, 0, i * 50 + 40, 40] for i in range(6)]
    probs = [[[0.5, 0.0], [0.9, 0.0], [0.6, 0.0], [0.3, 0.0], [0.2, 0.4], [0.1, 0.0]]]
    outputs = make_outputs(probs, anchors, num_per_level=[3, 3])
    (result,) = run(outputs, image_size=(100, 300), nms_pre=1)
    assert as_rows(result) == [(50, 0, 90, 40, 0.9, 0), (200, 0, 240, 40, 0.4, 1)]


def test_retinanet_decodes_deltas():
    deltas = [[[0.5, 0.0, math.log(2), 0.0]]]                        # centre + 0.5 w, width x 2
    (result,) = run(make_outputs([[[0.9, 0.0]]], [[20, 20, 60, 40]], deltas=deltas))
    assert as_rows(result) == [(20, 20, 100, 40, 0.9, 0)]


def test_gfl_decodes_a_one_hot_distribution():
    reg_max = 16
    regression = torch.full((1, 1, 4, reg_max + 1), -1e4)
    for side, bin_index in enumerate([1, 2, 3, 4]):                  # l, t, r, b in bins
        regression[0, 0, side, bin_index] = 0.0
    outputs = make_outputs([[[0.0, 0.7]]], [[16, 16, 48, 48]], deltas=regression.reshape(1, 1, -1),
                           strides=torch.tensor([8.0]))
    (result,) = run(outputs, head_type="gfl")
    # centre (32, 32); l, t, r, b = 8, 16, 24, 32 px; the GFL score is the class score itself
    assert as_rows(result) == [(24, 16, 56, 64, 0.7, 1)]


def test_atss_score_is_class_times_sigmoid_centerness_and_deltas_use_the_stds():
    centerness = torch.tensor([[0.0, -3.0]])
    deltas = [[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]          # dx 1 x std 0.1 x width 40 = 4 px
    outputs = make_outputs([[[0.8, 0.0], [0.0, 0.6]]], FAR_APART, deltas=deltas, centerness=centerness)
    (result,) = run(outputs, head_type="atss")
    low = 0.6 / (1 + math.exp(3.0))                                  # 0.0285: below score_thr after the product,
    assert as_rows(result) == [(4, 0, 44, 40, 0.4, 0),             # kept: the threshold acts on the class score
                               (100, 100, 140, 140, round(low, 4), 1)]


def test_no_candidate_gives_empty_results_per_image():
    results = run(make_outputs([[[0.01, 0.02]], [[0.03, 0.0]]], [[0, 0, 40, 40]]))
    assert len(results) == 2
    for result in results:
        assert result["boxes"].shape == (0, 4) and result["scores"].shape == (0,) and result["labels"].shape == (0,)
