"""LVIS: the embedded long-tailed LVIS-format set, the dataset and its checks, LVISEval through the NumPy shim (ground
truth scores AP 1, the federated rules hold), COCO-format files without iscrowd, and the evaluator choice."""
import collections
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data.build import build_dataset, build_evaluator
from data.coco import CocoDetection, DatasetError
from data.evaluation import lvis_evaluate, lvis_gt_as_detections
from data.lvis import LvisDetection
from data.synthetic_lvis import ensure_shapes_lvis_dataset
from detector.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def lvis_small(tmp_path_factory):
    """Paths dict of a 60-train / 24-val long-tailed LVIS-format set."""
    return ensure_shapes_lvis_dataset(str(tmp_path_factory.mktemp("shapes_lvis")), num_train=60, num_val=24)


@pytest.fixture(scope="module")
def lvis_val(lvis_small):
    return LvisDetection(lvis_small["val_images"], lvis_small["val_ann"])


def read(path):
    with open(path) as handle:
        return json.load(handle)


def test_the_numpy_shim_is_needed_and_changes_neither_numpy_nor_logging():
    """lvis 0.5.3 calls np.float (gone since NumPy 1.24); the shim gives lvis.eval alone the builtin float back,
    and removes the stderr handler that `import lvis` adds to the root logger (a fresh interpreter checks)."""
    script = ("import logging, numpy\n"
              "assert not hasattr(numpy, 'float')\n"
              "before = list(logging.getLogger().handlers)\n"
              "import data.lvis_compat, lvis.eval\n"
              "assert lvis.eval.np.float is float and lvis.eval.np.cumsum is numpy.cumsum\n"
              "assert not hasattr(numpy, 'float') and logging.getLogger().handlers == before\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_without_the_shim_lvis_eval_fails_on_this_numpy(lvis_val, monkeypatch):
    import lvis.eval

    from data.lvis_compat import LVISEval, LVISResults
    monkeypatch.setattr(lvis.eval, "np", np)
    evaluator = LVISEval(lvis_val.lvis, LVISResults(lvis_val.lvis, lvis_gt_as_detections(lvis_val.lvis)), "bbox")
    evaluator.evaluate()
    with pytest.raises(AttributeError, match="float"):
        evaluator.accumulate()


def test_ground_truth_as_detections_scores_ap_one_in_every_group(lvis_val):
    lines = []
    metrics = build_evaluator(lvis_val)(lvis_gt_as_detections(lvis_val.lvis), log=lines.append)
    groups = {category["frequency"] for category in lvis_val.lvis.dataset["categories"]}
    assert "r" in groups and "c" in groups
    for key in ["AP", "AP50", "AP75", "APs", "APm"] + [f"AP{group}" for group in sorted(groups)]:
        assert metrics[key] == pytest.approx(1.0), key
    assert set(metrics["per_frequency"]) == {"rare", "common", "frequent"}
    assert all(ap == pytest.approx(1.0) for ap in metrics["per_class"].values())
    assert len(metrics["per_class"]) == 30 == sum(len(table) for table in metrics["per_frequency"].values())
    text = "\n".join(lines)
    assert "catIds=  r] = 1.000" in text and "rare categories" in text


def _image_with(content, key):
    return next(image for image in content["images"] if image[key])


def _far_box(image):
    return [1.0, 1.0, 6.0, 6.0] if image["width"] > 20 else [0.0, 0.0, 2.0, 2.0]


def test_federated_rules(lvis_val):
    """A confident detection of a class verified absent (neg_category_ids) is a false positive; of a class not
    annotated either way, or an unmatched one of a not-exhaustive class, it is not evaluated."""
    content = lvis_val.lvis.dataset
    ground_truth = lvis_gt_as_detections(lvis_val.lvis)
    annotated = collections.defaultdict(set)
    for annotation in content["annotations"]:
        annotated[annotation["image_id"]].add(annotation["category_id"])

    def ap_of(category_id, image):
        detection = {"image_id": image["id"], "category_id": category_id, "bbox": _far_box(image), "score": 2.0}
        metrics = lvis_evaluate(lvis_val.lvis, ground_truth + [detection], log=lambda line: None)
        name = next(c["name"] for c in content["categories"] if c["id"] == category_id)
        return metrics["per_class"][name]

    negative_image = _image_with(content, "neg_category_ids")
    assert ap_of(negative_image["neg_category_ids"][0], negative_image) < 0.99
    unknown_image = next(image for image in content["images"]
                         if set(range(1, 31)) - annotated[image["id"]] - set(image["neg_category_ids"]))
    unknown = min(set(range(1, 31)) - annotated[unknown_image["id"]] - set(unknown_image["neg_category_ids"]))
    assert ap_of(unknown, unknown_image) == pytest.approx(1.0)
    not_exhaustive_image = _image_with(content, "not_exhaustive_category_ids")
    assert ap_of(not_exhaustive_image["not_exhaustive_category_ids"][0], not_exhaustive_image) == pytest.approx(1.0)


def test_no_detections_give_zero(lvis_val):
    metrics = lvis_evaluate(lvis_val.lvis, [], log=lambda line: None)
    assert metrics["AP"] == metrics["APr"] == 0.0 and set(metrics["per_class"].values()) == {0.0}


@pytest.mark.parametrize("mutate, named", [
    (lambda content: content["images"][0].pop("neg_category_ids"), "lacks the list 'neg_category_ids'"),
    (lambda content: content["categories"][3].pop("frequency"), "has frequency None"),
    (lambda content: content["images"][1]["not_exhaustive_category_ids"].append(999), r"unknown categories \[999\]"),
])
def test_lvis_format_problems_are_one_line_errors(lvis_small, tmp_path, mutate, named):
    content = read(lvis_small["val_ann"])
    mutate(content)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(content))
    dataset = LvisDetection(lvis_small["val_images"], str(path))
    with pytest.raises(DatasetError, match=named) as error:
        build_evaluator(dataset)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_coco_file_without_iscrowd_or_area_is_evaluated(shapes_small, tmp_path):
    content = read(shapes_small["val_ann"])
    for annotation in content["annotations"]:
        del annotation["iscrowd"], annotation["area"]
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(content))
    dataset = CocoDetection(shapes_small["val_images"], str(path))
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                  for a in content["annotations"]]
    metrics = build_evaluator(dataset)(detections, log=lambda line: None)
    assert metrics["AP"] == pytest.approx(1.0) and "APr" not in metrics


def test_the_embedded_set_is_long_tailed_lvis_format(lvis_small):
    train, val = read(lvis_small["train_ann"]), read(lvis_small["val_ann"])
    assert val["categories"] == train["categories"] and len(train["categories"]) == 30
    images_of = collections.defaultdict(set)
    for annotation in train["annotations"]:
        assert "iscrowd" not in annotation and annotation["area"] == annotation["bbox"][2] * annotation["bbox"][3]
        images_of[annotation["category_id"]].add(annotation["image_id"])
    for category in train["categories"]:   # LVIS groups, counted here: rare 1-10 images, common 11-100, frequent
        count = len(images_of[category["id"]])
        assert category["image_count"] == count
        assert category["frequency"] == ("r" if count <= 10 else "c" if count <= 100 else "f")
    counts = sorted((len(images) for images in images_of.values()), reverse=True)
    assert counts[0] >= 20 and counts[-1] <= 2 and sum(count <= 10 for count in counts) >= 10   # a long tail
    val_images_of = collections.defaultdict(set)
    for annotation in val["annotations"]:
        val_images_of[annotation["category_id"]].add(annotation["image_id"])
    assert len(val_images_of) == 30 and min(len(images) for images in val_images_of.values()) >= 5
    annotated = collections.defaultdict(set)
    for annotation in train["annotations"] + val["annotations"]:
        annotated[annotation["image_id"]].add(annotation["category_id"])
    for image in train["images"] + val["images"]:
        assert "file_name" not in image
        relative = image["coco_url"].split("images.cocodataset.org/")[1]
        assert os.path.isfile(os.path.join(lvis_small["train_images"], relative))
        assert not set(image["neg_category_ids"]) & annotated[image["id"]]
        assert set(image["not_exhaustive_category_ids"]) <= annotated[image["id"]]
    assert sum(bool(image["not_exhaustive_category_ids"]) for image in val["images"]) >= 1


def test_config_builds_lvis_datasets_and_the_lvis_evaluator(lvis_small, tmp_path):
    root = lvis_small["train_images"]  # the set's root: both image folders are under it
    cfg = load_config("shapes_lvis_gfl_r18.yaml", [f"data.shapes_lvis_root={root}", "data.shapes_num_train=60",
                                                   "data.shapes_num_val=24"])
    train, val = build_dataset(cfg.data, train=True), build_dataset(cfg.data, train=False)
    assert isinstance(train, LvisDetection) and isinstance(val, LvisDetection)
    assert len(train) == 60 and len(val) == 24 and train.num_classes == 30
    image, target = train[0]
    assert image.shape[0] == 3 and len(target["boxes"]) > 0 and not target["crowd"].any()
    evaluator = build_evaluator(val)
    assert "APr" in evaluator(lvis_gt_as_detections(copy.deepcopy(val.lvis)), log=lambda line: None)
