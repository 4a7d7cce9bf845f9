"""COCO box evaluation with pycocotools, plus a per-class AP table.

Detections are in the COCO results format: dicts with 'image_id', 'category_id' (the dataset's
category id, not the contiguous label), 'bbox' [x, y, w, h] in original image pixels, 'score'.
"""
import contextlib
import io

import numpy as np
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]  # the order of COCOeval.stats


def gt_as_detections(coco_gt):
    """Every non-crowd ground-truth box as a detection with score 1.0 (its AP must be 1)."""
    return [{"image_id": ann["image_id"], "category_id": ann["category_id"],
             "bbox": [float(v) for v in ann["bbox"]], "score": 1.0}
            for ann in coco_gt.dataset["annotations"] if not ann.get("iscrowd", 0)]


def _category_name(coco_gt, cat_id, class_names, sorted_cat_ids):
    if class_names is not None and cat_id in sorted_cat_ids:
        return class_names[sorted_cat_ids.index(cat_id)]
    return coco_gt.cats[cat_id]["name"]


def _categories_with_gt(coco_gt):
    return sorted({ann["category_id"] for ann in coco_gt.dataset["annotations"]
                   if not ann.get("iscrowd", 0)})


def format_per_class_table(per_class, columns=3):
    """Aligned text table of {name: AP} in `columns` (name, AP) column pairs."""
    if not per_class:
        return "(no category with ground truth)"
    items = list(per_class.items())
    name_width = max(8, max(len(name) for name, _ in items))
    cell = lambda name, ap: f"{name:<{name_width}} {100 * ap:6.2f}"  # noqa: E731
    header = " | ".join(f"{'category':<{name_width}} {'AP':>6}" for _ in range(min(columns, len(items))))
    lines = [header, "-" * len(header)]
    for start in range(0, len(items), columns):
        lines.append(" | ".join(cell(name, ap) for name, ap in items[start:start + columns]))
    return "\n".join(lines)


def _check_detections(coco_gt, detections):
    image_ids, cat_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for detection in detections:
        if detection["image_id"] not in image_ids:
            raise ValueError(f"detection on image {detection['image_id']}, not in the ground truth")
        if detection["category_id"] not in cat_ids:
            raise ValueError(f"detection with category id {detection['category_id']}, not in the "
                             "ground truth categories (pass dataset ids, not contiguous labels)")


def coco_evaluate(coco_gt, detections, class_names=None, log=print):
    """Run COCOeval (bbox) over all ground-truth images and return the 12 standard numbers.

    Args:
        coco_gt: pycocotools COCO of the evaluated split (e.g. CocoDetection.coco).
        detections: list of COCO results dicts (not modified).
        class_names: optional names in sorted-category-id order (CocoDetection.class_names);
            by default the names in coco_gt.
        log: callable taking one string; the pycocotools summary and the per-class table go here.
    Returns:
        dict of floats in 0..1: 'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10',
        'AR100', 'ARs', 'ARm', 'ARl' (a metric whose area range has no ground truth is -1, as
        pycocotools reports it), and 'per_class' {name: AP at IoU .50:.95, all areas, 100 dets}.
        Categories without any ground-truth box in the split are omitted from 'per_class'
        (pycocotools leaves them out of the mean too). With no detections every metric is 0.
    """
    sorted_cat_ids = sorted(coco_gt.getCatIds())
    with_gt = _categories_with_gt(coco_gt)
    if not detections:
        log("no detections: every metric is 0")
        results = {name: 0.0 for name in METRIC_NAMES}
        results["per_class"] = {_category_name(coco_gt, cat_id, class_names, sorted_cat_ids): 0.0
                                for cat_id in with_gt}
        return results
    _check_detections(coco_gt, detections)
    detections = [dict(detection) for detection in detections]  # loadRes adds keys in place
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(coco_gt.getImgIds())
        evaluator.evaluate()
        evaluator.accumulate()
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        evaluator.summarize()
    log(output.getvalue().rstrip())
    results = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats)}

    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M max dets]
    precision = evaluator.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        if cat_id in with_gt and values.size:
            per_class[_category_name(coco_gt, cat_id, class_names, sorted_cat_ids)] = float(np.mean(values))
    omitted = len(sorted_cat_ids) - len(per_class)
    log("per-class AP (IoU .50:.95, all areas)" +
        (f"; {omitted} categories without ground truth omitted" if omitted else "") + "\n" +
        format_per_class_table(per_class))
    results["per_class"] = per_class
    return results
