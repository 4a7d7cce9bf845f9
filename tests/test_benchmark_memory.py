"""scripts/benchmark.py's criterion phase: random head outputs of the model's shapes, and a row with the loss path's
peak memory over its inputs (the 1203-class figures of the README come from it)."""
import importlib.util
import os
import re
import subprocess
import sys

import torch
from tiny_detector import tiny_config

from detector import build_criterion, build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("benchmark", os.path.join(ROOT, "scripts", "benchmark.py"))
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_random_head_outputs_have_the_model_shapes_and_train_the_criterion():
    cfg = tiny_config("gfl")
    model = build_model(cfg.model, 7)
    outputs = benchmark.random_head_outputs(model, 2, 96, 128, 7, model.head.box_channels, torch.float32,
                                            torch.device("cpu"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        real = model.eval()(torch.zeros(2, 3, 96, 128))
    assert outputs.cls_logits.shape == real.cls_logits.shape
    assert outputs.box_regression.shape == real.box_regression.shape
    assert torch.equal(outputs.anchors, real.anchors) and outputs.num_per_level == real.num_per_level
    assert outputs.cls_logits.requires_grad and outputs.cls_logits.mean() < -3     # about the prior's logit
    _, targets = benchmark.random_batch(2, 96, 128, 7, 3, torch.Generator().manual_seed(1))
    losses = build_criterion(cfg.model, 7)(outputs, targets)
    sum(value for key, value in losses.items() if key.startswith("loss_")).backward()
    assert outputs.cls_logits.grad.abs().sum() > 0


def test_criterion_phase_prints_its_peak_over_its_inputs():
    result = subprocess.run([sys.executable, "scripts/benchmark.py", "--config", "shapes_gfl_r18.yaml",
                             "--height", "64", "--width", "96", "--batch-size", "2", "--warmup", "0", "--iters", "1",
                             "--num-classes", "30", "--phases", "criterion", "model.fpn.out_channels=32",
                             "model.head.feat_channels=32", "train.amp=off"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    row = re.search(r"^criterion\s+([\d.]+)\s+[\d.]+\s+(\d+)\s+.*\(\+(-?\d+) MiB over its inputs; cls_logits "
                    r"\[2, (\d+), 30\] float32", result.stdout, re.MULTILINE)
    assert row, result.stdout
    anchors = sum(-(-64 // stride) * -(-96 // stride) for stride in (8, 16, 32, 64, 128))  # one per location
    assert float(row.group(1)) > 0 and int(row.group(2)) > 0 and int(row.group(4)) == anchors
    assert not re.search(r"^(train|inference) ", result.stdout, re.MULTILINE)      # only the phases asked for
