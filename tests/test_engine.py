"""detector/engine.py: build_optimizer's weight-decay groups, to_coco_results."""
import torch

from detector.config import OptimConfig
from detector.engine import build_optimizer


def test_norm_and_bias_parameters_can_go_without_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 2, 1))
    parameters = list(model.parameters())
    reference = build_optimizer(parameters, 0.1, OptimConfig(type="adamw", weight_decay=0.05))
    assert [group["weight_decay"] for group in reference.param_groups] == [0.05]
    split = build_optimizer(parameters, 0.1, OptimConfig(type="sgd", weight_decay=1e-4, decay_norm_and_bias=False))
    decayed, undecayed = split.param_groups
    assert decayed["weight_decay"] == 1e-4 and undecayed["weight_decay"] == 0.0
    # conv weights decay; conv biases and GroupNorm's weight and bias do not
    assert [tuple(p.shape) for p in decayed["params"]] == [(4, 3, 3, 3), (2, 4, 1, 1)]
    assert [tuple(p.shape) for p in undecayed["params"]] == [(4,), (4,), (4,), (2,)]
    assert all(group["lr"] == 0.1 for group in split.param_groups)


def test_coco_results_leave_the_detections_unchanged():
    from detector.engine import to_coco_results
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    detections = [{"boxes": boxes, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    results = to_coco_results(detections, [7], cat_ids=[3, 11])
    assert results == [{"image_id": 7, "category_id": 11, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.9}]
    assert boxes.tolist() == [[10.0, 20.0, 50.0, 80.0]]                     # still xyxy
