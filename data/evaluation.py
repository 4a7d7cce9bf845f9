"""Box evaluation: COCO with pycocotools' COCOeval, LVIS with the lvis package's LVISEval; per-class AP tables.

Detections are in the COCO results format: dicts with 'image_id', 'category_id' (the dataset's
category id, not the contiguous label), 'bbox' [x, y, w, h] in original image pixels, 'score'.
data.build.build_evaluator picks the function from the dataset's type.
"""
import contextlib
import io
import warnings

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


def _check_detections(image_ids, cat_ids, detections):
    image_ids, cat_ids = set(image_ids), set(cat_ids)
    for detection in detections:
        if detection["image_id"] not in image_ids:
            raise ValueError(f"detection on image {detection['image_id']}, not in the ground truth")
        if detection["category_id"] not in cat_ids:
            raise ValueError(f"detection with category id {detection['category_id']}, not in the "
                             "ground truth categories (pass dataset ids, not contiguous labels)")


def _fill_optional_keys(coco_gt):
    """COCOeval reads every ground-truth annotation's `iscrowd` and `area`, which some COCO-format files (LVIS-style
    exports, converters) leave out: a missing `iscrowd` means 0 and a missing `area` the box's w * h, as the
    dataset reads them (data/coco.py). Filled in the index's own annotation dicts (what COCOeval reads), so such a
    file is evaluated, not stopped by a KeyError."""
    for annotation in coco_gt.dataset["annotations"]:
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            annotation["area"] = annotation["bbox"][2] * annotation["bbox"][3]


def _cocoeval(backend):
    """(COCO index class, COCOeval class) of eval.backend: pycocotools (the reference) or faster-coco-eval (its
    C++ evaluate and accumulate; the same 12 numbers and precision array, tests/test_evaluation_backends.py)."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        return COCO, COCOeval
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise ImportError("eval.backend=faster needs faster-coco-eval: pip install faster-coco-eval "
                          "(or eval.backend=pycocotools)") from None
    return COCO, COCOeval_faster


def coco_evaluate(coco_gt, detections, class_names=None, log=print, backend="pycocotools"):
    """Run COCOeval (bbox) over all ground-truth images and return the 12 standard numbers.

    Args:
        coco_gt: pycocotools COCO of the evaluated split (e.g. CocoDetection.coco).
        detections: list of COCO results dicts (not modified).
        class_names: optional names in sorted-category-id order (CocoDetection.class_names);
            by default the names in coco_gt.
        log: callable taking one string; the pycocotools summary and the per-class table go here.
        backend: eval.backend, 'pycocotools' or 'faster' (faster-coco-eval), see _cocoeval.
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
    _check_detections(coco_gt.getImgIds(), coco_gt.getCatIds(), detections)
    _fill_optional_keys(coco_gt)
    detections = [dict(detection) for detection in detections]  # loadRes adds keys in place
    index_class, evaluator_class = _cocoeval(backend)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        ground_truth = coco_gt if backend == "pycocotools" else index_class(coco_gt.dataset)
        coco_dt = ground_truth.loadRes(detections)
        printing = {} if backend == "pycocotools" else {"print_function": print}   # its summary to stdout too
        evaluator = evaluator_class(ground_truth, coco_dt, "bbox", **printing)
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


LVIS_METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]  # then AR@300, ARs@300, ...
FREQUENCY_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def lvis_evaluate(lvis_gt, detections, class_names=None, log=print, max_dets=300):
    """Run LVISEval (bbox) over all ground-truth images, with LVIS's federated rules and frequency groups.

    Args:
        lvis_gt: lvis.LVIS of the evaluated split (data.lvis.LvisDetection.lvis).
        detections: list of COCO results dicts (not modified); at most max_dets per image are kept, the
            highest-scoring (LVIS's rule: 300).
        class_names: optional names in sorted-category-id order; by default the names in lvis_gt.
        log: callable taking one string: the LVIS summary, then per-class AP tables by frequency group.
    Returns:
        dict of floats: 'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'APr', 'APc', 'APf', 'AR@300', 'ARs@300',
        'ARm@300', 'ARl@300' (-1 where nothing can be measured, as LVISEval reports it); 'per_class' {name: AP at
        IoU .50:.95, all areas}; 'per_frequency' {'rare' | 'common' | 'frequent': {name: AP}}. Categories
        without a ground-truth box in the split are omitted from the tables (LVISEval leaves them out of the
        means too). With no detections every metric is 0.
    """
    from data.lvis_compat import LVISEval, LVISResults  # on first use: the lvis package loads OpenCV, matplotlib

    sorted_cat_ids = sorted(lvis_gt.get_cat_ids())
    names = {cat_id: (class_names[i] if class_names is not None else lvis_gt.cats[cat_id]["name"])
             for i, cat_id in enumerate(sorted_cat_ids)}
    frequency = {cat_id: lvis_gt.cats[cat_id]["frequency"] for cat_id in sorted_cat_ids}
    with_gt = sorted({ann["category_id"] for ann in lvis_gt.dataset["annotations"]})
    if not detections:
        log("no detections: every metric is 0")
        results = {name: 0.0 for name in LVIS_METRIC_NAMES}
        per_class = {names[cat_id]: 0.0 for cat_id in with_gt}
    else:
        _check_detections(lvis_gt.get_img_ids(), sorted_cat_ids, detections)
        # LVISResults deep-copies its ground truth's dataset: give it the images and categories alone.
        frame = _lvis_frame(lvis_gt)
        output = io.StringIO()
        with contextlib.redirect_stdout(output), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # lvis 0.5.3 calls the deprecated Logger.warn
            evaluator = LVISEval(lvis_gt, LVISResults(frame, [dict(d) for d in detections], max_dets=max_dets),
                                 "bbox")
            evaluator.params.max_dets = max_dets
            evaluator.run()
            evaluator.print_results()
        log(output.getvalue().rstrip())
        results = {name: float(value) for name, value in evaluator.get_results().items()}
        # precision: [T iou thresholds, R recall points, K categories, A area ranges]; area 0 is 'all'
        precision = evaluator.eval["precision"]
        per_class = {}
        for k, cat_id in enumerate(evaluator.params.cat_ids):
            values = precision[:, :, k, 0]
            values = values[values > -1]
            if cat_id in with_gt and values.size:
                per_class[names[cat_id]] = float(np.mean(values))
    by_name = {names[cat_id]: frequency[cat_id] for cat_id in sorted_cat_ids}
    per_frequency = {label: {name: ap for name, ap in per_class.items() if by_name[name] == group}
                     for group, label in FREQUENCY_NAMES.items()}
    for label, table in per_frequency.items():
        log(f"per-class AP (IoU .50:.95, all areas), {label} categories ({len(table)} with ground truth):\n"
            + format_per_class_table(table))
    results["per_class"] = per_class
    results["per_frequency"] = per_frequency
    return results


def _lvis_frame(lvis_gt):
    """An lvis.LVIS with lvis_gt's images and categories and no annotations (cheap for LVISResults to copy)."""
    frame = type(lvis_gt).__new__(type(lvis_gt))
    frame.logger = lvis_gt.logger
    frame.dataset = {key: value for key, value in lvis_gt.dataset.items() if key != "annotations"}
    frame.dataset["annotations"] = []
    frame._create_index()
    return frame


def lvis_gt_as_detections(lvis_gt):
    """Every ground-truth box of an lvis.LVIS as a detection with score 1.0 (its AP must be 1)."""
    return [{"image_id": ann["image_id"], "category_id": ann["category_id"],
             "bbox": [float(v) for v in ann["bbox"]], "score": 1.0} for ann in lvis_gt.dataset["annotations"]]
