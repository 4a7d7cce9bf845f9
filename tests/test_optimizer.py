"""build_optimizer: weight decay on every parameter (reference), or none on the 1-d ones when asked."""
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
