"""The learning-rate schedule (detector/engine.py: learning_rate) against values worked out by hand."""
import pytest

from detector.config import load_config
from detector.engine import learning_rate


def optim(*overrides):
    return load_config(None, [f"optim.{item}" for item in overrides]).optim


def test_step_schedule_with_warmup():
    cfg = optim("warmup_iters=4", "warmup_ratio=0.001", "milestones=[1]", "gamma=0.1")
    assert learning_rate(0, 1.0, cfg, iters_per_epoch=10, epochs=2) == pytest.approx(0.001)
    assert learning_rate(2, 1.0, cfg, iters_per_epoch=10, epochs=2) == pytest.approx(0.5005)  # halfway up
    assert learning_rate(9, 1.0, cfg, iters_per_epoch=10, epochs=2) == pytest.approx(1.0)
    assert learning_rate(10, 1.0, cfg, iters_per_epoch=10, epochs=2) == pytest.approx(0.1)   # epoch 1 starts


def test_cosine_schedule_falls_to_min_lr_ratio():
    cfg = optim("schedule=cosine", "warmup_iters=0", "min_lr_ratio=0.01")
    # lr = 0.01 + 0.99 (1 + cos(pi t / 20)) / 2 over 2 epochs of 10 iterations
    expected = {0: 1.0, 5: 0.01 + 0.99 * 0.8535534, 10: 0.505, 15: 0.01 + 0.99 * 0.1464466, 20: 0.01}
    for iteration, value in expected.items():
        assert learning_rate(iteration, 1.0, cfg, iters_per_epoch=10, epochs=2) == pytest.approx(value, rel=1e-6)


def test_cosine_schedule_warms_up_first():
    cfg = optim("schedule=cosine", "warmup_iters=10", "warmup_ratio=0.1", "min_lr_ratio=0.0")
    # t = 5: cosine factor (1 + cos(pi / 4)) / 2 = 0.8535534, warmup factor 0.1 + 0.9 x 0.5 = 0.55
    assert learning_rate(5, 2.0, cfg, iters_per_epoch=10, epochs=2) == pytest.approx(2.0 * 0.8535534 * 0.55)
