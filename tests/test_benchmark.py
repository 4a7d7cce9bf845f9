"""scripts/benchmark.py: random batches are valid ground truth, and the script prints one row per phase."""
import importlib.util
import os
import re
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("benchmark", os.path.join(ROOT, "scripts", "benchmark.py"))
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_random_batch_boxes_lie_inside_the_image():
    images, targets = benchmark.random_batch(3, 96, 160, num_classes=5, boxes_per_image=50,
                                             generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 96, 160)
    boxes = targets["boxes"]
    assert boxes.shape == (3, 50, 4)
    sides = boxes[..., 2:] - boxes[..., :2]
    assert sides.min() >= 10 and sides.max() <= 48
    assert boxes[..., 0::2].min() >= 0 and boxes[..., 0::2].max() <= 160
    assert boxes[..., 1::2].min() >= 0 and boxes[..., 1::2].max() <= 96
    assert targets["labels"].min() >= 0 and targets["labels"].max() < 5
    assert targets["valid"].all() and not targets["crowd"].any()


def test_benchmark_prints_train_and_inference_rows():
    result = subprocess.run([sys.executable, "scripts/benchmark.py", "--config", "shapes_gfl_r18.yaml",
                             "--height", "64", "--width", "96", "--batch-size", "2", "--warmup", "0", "--iters", "1",
                             "--num-classes", "4", "model.fpn.out_channels=32", "model.head.feat_channels=32"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "batch 2 x 64x96" in result.stdout and "channels_last True" in result.stdout
    capability = torch.backends.cpu.get_cpu_capability()  # this process has the subprocess's environment
    expected_precision = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    for phase in ("train", "inference"):
        # every figure comes with the machine it came from: precision, ISA capability, matmul probe, CPU model
        row = re.search(rf"^{phase}\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\w+)\s+(\w+)\s+(\d+)\s+(.+)$", result.stdout,
                        re.MULTILINE)
        assert row, result.stdout
        milliseconds, images_per_second = float(row.group(1)), float(row.group(2))
        assert milliseconds > 0 and abs(images_per_second - 2 / (milliseconds / 1000)) < 0.1 * images_per_second
        assert (row.group(4), row.group(5)) == (expected_precision, capability)
        assert float(row.group(6)) > 0 and row.group(7).strip()
