"""scripts/tower_activations.py against the scale each tower layer must have at initialisation, derived by hand."""
import importlib.util
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("tower_activations",
                                              os.path.join(ROOT, "scripts", "tower_activations.py"))
tower_activations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tower_activations)


def test_tower_without_norm_shrinks_by_the_init_gain_and_with_gn_keeps_unit_scale():
    _, plain, plain_logits = tower_activations.tower_stats("retinanet_r18_scratch.yaml", height=256, width=256)
    _, gn, gn_logits = tower_activations.tower_stats("retinanet_r18_scratch_gn.yaml", height=256, width=256)
    assert len(plain) == len(gn) == 4
    # conv (std 0.01, 9 x 256 inputs) on a ReLU output: out std = 0.01 sqrt(2304 E[x^2]), E[x^2] = std_pre^2 / 2
    # for the zero-mean Gaussian before the ReLU, so each layer keeps 0.01 sqrt(2304 / 2) = 0.339 of the previous
    # (zero padding at the 32 x 32 map's border takes a little more).
    gain = 0.01 * math.sqrt(9 * 256 / 2)
    for before, after in zip(plain, plain[1:]):
        assert after / before == pytest.approx(gain, rel=0.1)
    # GroupNorm: unit variance before each ReLU, so std(relu(z)) = sqrt(1/2 - 1/(2 pi)) = 0.584 after every layer.
    for value in gn:
        assert value == pytest.approx(math.sqrt(0.5 - 0.5 / math.pi), rel=0.05)
    assert gn_logits > 10 * plain_logits
