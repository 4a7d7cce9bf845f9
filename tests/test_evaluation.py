"""COCO evaluation: ground truth scored as detections gives AP 1; no detections gives 0."""
import math

import pytest
from pycocotools.coco import COCO

from data.coco import CocoDetection
from data.evaluation import METRIC_NAMES, coco_evaluate, format_per_class_table, gt_as_detections


def _check_perfect(results, coco):
    for name in ("AP", "AP50", "AP75", "AR100"):  # AR10 < 1 where a class has > 10 boxes
        assert results[name] == pytest.approx(1.0), name
    for name in ("APs", "APm", "APl"):  # -1 where the split has no box of that size
        assert results[name] == pytest.approx(1.0) or results[name] == -1.0, name
    assert results["per_class"] and all(ap == pytest.approx(1.0) for ap in results["per_class"].values())


def test_ground_truth_gives_ap_one_on_shapes(shapes_small):
    coco = COCO(shapes_small["val_ann"])
    lines = []
    detections = gt_as_detections(coco)
    results = coco_evaluate(coco, detections, log=lines.append)
    _check_perfect(results, coco)
    assert set(results) == set(METRIC_NAMES) | {"per_class"}
    assert "segmentation" not in detections[0]  # caller's list left untouched
    assert "Average Precision" in lines[0] and "circle" in lines[1]


def test_ground_truth_gives_ap_one_on_the_demo_val_split(tmp_path):
    """The demo's 200 val images (a split depends only on seed and index, so no train images are drawn)."""
    from data.synthetic import ensure_shapes_dataset
    paths = ensure_shapes_dataset(str(tmp_path), num_train=0, num_val=200, seed=0)
    coco = COCO(paths["val_ann"])
    assert len(coco.getImgIds()) == 200 and len(coco.getAnnIds()) > 1000
    results = coco_evaluate(coco, gt_as_detections(coco), log=lambda text: None)
    _check_perfect(results, coco)
    assert min(results[name] for name in ("APs", "APm", "APl")) == pytest.approx(1.0)  # every size occurs


def test_ground_truth_gives_ap_one_on_coco128(shared_split):
    image_dir, ann_file = shared_split("coco128", "val")
    dataset = CocoDetection(image_dir, ann_file)
    results = coco_evaluate(dataset.coco, gt_as_detections(dataset.coco), dataset.class_names,
                            log=lambda text: None)
    _check_perfect(results, dataset.coco)
    assert len(results["per_class"]) == 57  # classes present in val; the 23 absent are omitted
    assert all(not math.isnan(ap) for ap in results["per_class"].values())


def test_no_detections_gives_zero(shapes_small):
    coco = COCO(shapes_small["val_ann"])
    results = coco_evaluate(coco, [], log=lambda text: None)
    assert all(results[name] == 0.0 for name in METRIC_NAMES)
    assert results["per_class"] and set(results["per_class"].values()) == {0.0}


def test_bad_detections_are_named(shapes_small):
    coco = COCO(shapes_small["val_ann"])
    detection = {"image_id": 1, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 0.5}
    with pytest.raises(ValueError, match="category id 0"):
        coco_evaluate(coco, [detection], log=lambda text: None)
    with pytest.raises(ValueError, match="image 999"):
        coco_evaluate(coco, [dict(detection, image_id=999, category_id=3)], log=lambda text: None)


def test_per_class_table_is_aligned():
    table = format_per_class_table({"a": 0.5, "longer name": 0.25, "c": 1.0, "d": 0.0})
    lines = table.splitlines()
    assert "longer name  25.00" in table and "100.00" in table
    assert len(lines[0]) == len(lines[2])
