"""eval.backend=faster (faster-coco-eval) gives pycocotools' 12 numbers and per-class APs to 1e-6, on the shapes val
split and on coco128's val split (sparse COCO ids), with detections that are neither perfect nor empty."""
import importlib.util
import math
import os

import pytest
from conftest import missing_shared_data

from data.build import build_dataset, build_evaluator
from data.coco import load_and_validate
from data.evaluation import METRIC_NAMES
from detector.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("benchmark_eval", os.path.join(ROOT, "scripts", "benchmark_eval.py"))
benchmark_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark_eval)


def assert_backends_agree(dataset, detections):
    results = {backend: build_evaluator(dataset, backend)(detections, log=lambda text: None)
               for backend in ("pycocotools", "faster")}
    reference, faster = results["pycocotools"], results["faster"]
    assert 0.05 < reference["AP"] < 0.95                  # a real ranking problem, not all-or-nothing
    for name in METRIC_NAMES:
        assert math.isclose(faster[name], reference[name], rel_tol=0, abs_tol=1e-6), name
    assert faster["per_class"].keys() == reference["per_class"].keys()
    for name, value in reference["per_class"].items():
        assert math.isclose(faster["per_class"][name], value, abs_tol=1e-6), name


def test_backends_agree_on_the_shapes_val_split(shapes_small):
    cfg = load_config("shapes_gfl_r18.yaml", ["data.dataset=coco", f"data.val_images={shapes_small['val_images']}",
                                              f"data.val_ann={shapes_small['val_ann']}"])
    dataset = build_dataset(cfg.data, train=False)
    assert_backends_agree(dataset, benchmark_eval.detections_for(load_and_validate(shapes_small["val_ann"])))


def test_backends_agree_on_coco128():
    root = os.path.join(ROOT, "..", "shared", "datasets", "coco128")
    if not os.path.isdir(root):
        missing_shared_data(f"{root} not found")
    cfg = load_config("gfl_r50.yaml", [f"data.val_images={root}/images",
                                       f"data.val_ann={root}/annotations/instances_val.json"])
    dataset = build_dataset(cfg.data, train=False)
    detections = benchmark_eval.detections_for(load_and_validate(cfg.data.val_ann), seed=3)
    assert_backends_agree(dataset, detections)


def test_missing_faster_coco_eval_is_a_one_line_hint(monkeypatch):
    import builtins

    from data import evaluation
    real_import = builtins.__import__

    def no_faster(name, *args, **kwargs):
        if name == "faster_coco_eval":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_faster)
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        evaluation._cocoeval("faster")
