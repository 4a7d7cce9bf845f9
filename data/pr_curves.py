"""Per-class precision-recall curves from COCOeval's accumulated precision array, drawn as PNGs.

COCOeval.accumulate() fills eval['precision'] [T, R, K, A, M]: T IoU thresholds (.50:.05:.95), R = 101 recall
points (0:.01:1), K categories, A area ranges, M max-detection settings. Each entry is the interpolated
precision (the best precision at that recall or any higher one), 0 beyond the highest recall reached, and -1
for a category without ground truth. A category's AP is the mean of its curve; the COCO AP averages the T
curves, so the curves drawn here are exactly what the AP table summarises.
"""
import contextlib
import io
import os
import re

import numpy as np
from matplotlib.figure import Figure
from pycocotools.cocoeval import COCOeval


def precision_recall(coco_gt, detections):
    """COCOeval (bbox, every ground-truth image) accumulated over `detections`, area 'all', 100 detections.

    Args:
        coco_gt: pycocotools COCO of the annotated split (CocoDetection.coco).
        detections: COCO-results dicts (dataset category ids; not modified).
    Returns:
        precision: float [T, R, K] (-1 for a category without ground truth),
        recall_points: float [R], iou_thresholds: float [T], cat_ids: list of K category ids.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(detection) for detection in detections])
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    area_all = params.areaRngLbl.index("all")
    precision = evaluator.eval["precision"][:, :, :, area_all, len(params.maxDets) - 1]  # [T, R, K]
    return precision, np.asarray(params.recThrs), np.asarray(params.iouThrs), list(params.catIds)


def _file_name(cat_id, name):
    return f"pr_{cat_id}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"


def plot_class(precision, recall_points, iou_thresholds, title, path):
    """One PNG: the precision-recall curve at IoU .50 and .75 and the mean over all thresholds (COCO's AP).

    precision: [T, R] of one category (no -1 entries); the legend gives each curve's AP (its mean).
    """
    curves = [("IoU .50", precision[np.isclose(iou_thresholds, 0.5)][0]),
              ("IoU .75", precision[np.isclose(iou_thresholds, 0.75)][0]),
              ("mean over IoU .50:.95", precision.mean(axis=0))]
    figure = Figure(figsize=(4.5, 4), dpi=100)
    axes = figure.subplots()
    for label, curve in curves:
        axes.plot(recall_points, curve, label=f"{label}: AP {100 * curve.mean():.1f}")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def write_pr_curves(coco_gt, detections, out_dir, class_names=None):
    """Write <out_dir>/pr_<category id>_<name>.png for every category with ground truth.

    class_names: optional names in sorted-category-id order (CocoDetection.class_names); by default coco_gt's.
    Returns the paths written, in category order.
    """
    precision, recall_points, iou_thresholds, cat_ids = precision_recall(coco_gt, detections)
    names = class_names or [coco_gt.cats[cat_id]["name"] for cat_id in sorted(coco_gt.getCatIds())]
    name_of = dict(zip(sorted(coco_gt.getCatIds()), names))
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k, cat_id in enumerate(cat_ids):
        if (precision[:, :, k] < 0).any():  # no ground truth of this category in the split
            continue
        path = os.path.join(out_dir, _file_name(cat_id, name_of[cat_id]))
        plot_class(precision[:, :, k], recall_points, iou_thresholds, f"{name_of[cat_id]} (category {cat_id})", path)
        paths.append(path)
    return paths
