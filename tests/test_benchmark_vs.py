"""scripts/benchmark.py --vs torchvision: the counterpart by head type, interleaved timings and their ratios,
the criterion's share and both peaks, printed and written as JSON."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("config, counterpart", [("gfl_r50.yaml", "FCOS"), ("retinanet_r50.yaml", "RetinaNet")])
def test_versus_torchvision_writes_its_figures(config, counterpart, tmp_path):
    out = tmp_path / "vs.json"
    command = [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--config", config, "--vs",
               "torchvision", "--height", "96", "--width", "128", "--batch-size", "2", "--gts", "3", "--classes", "5",
               "--iters", "2", "--warmup", "0", "--json", str(out), "model.backbone.depth=18",
               "model.fpn.out_channels=32", "model.head.feat_channels=32", "model.head.stacked_convs=1",
               "train.amp=off"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["torchvision"] == f"torchvision {counterpart} R18"
    assert (figures["batch"], figures["height"], figures["width"], figures["gts"], figures["classes"]) == \
        (2, 96, 128, 3, 5)
    for phase in ("train", "inference"):
        row = figures["phases"][phase]
        assert row["ratio_median"] == pytest.approx(row["ours_median_s"] / row["theirs_median_s"])
        assert row["ours_min_s"] <= row["ours_median_s"] and row["theirs_images_per_s"] == pytest.approx(
            2 / row["theirs_median_s"])
    assert 0 < figures["criterion_s"] < figures["phases"]["train"]["ours_median_s"]
    assert figures["peak_mib"]["ours"] > 100 and figures["peak_mib"]["theirs"] > 100
    assert f"vs torchvision {counterpart} R18" in result.stdout and "criterion alone" in result.stdout
    assert figures["ours_compiled"] == {"train": False, "inference": False, "backend": "inductor"}


def test_versus_torchvision_inference_only_with_both_models_compiled(tmp_path):
    """--phases inference with train.compile, eval.compile and --compile-theirs (aot_eager: traced, no code
    generation): only the inference row, timed on the compiled modules, and torchvision's name says so."""
    out = tmp_path / "vs.json"
    command = [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--config", "gfl_r50.yaml", "--vs",
               "torchvision", "--height", "96", "--width", "128", "--batch-size", "2", "--gts", "3", "--classes", "5",
               "--iters", "2", "--warmup", "1", "--phases", "inference", "--compile-theirs", "--json", str(out),
               "model.backbone.depth=18", "model.fpn.out_channels=32", "model.head.feat_channels=32",
               "model.head.stacked_convs=1", "train.amp=off", "train.compile=true", "train.compile_backend=aot_eager",
               "eval.compile=true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["torchvision"] == "torchvision FCOS R18 (compiled for inference)"
    assert figures["ours_compiled"] == {"train": True, "inference": True, "backend": "aot_eager"}
    assert list(figures["phases"]) == ["inference"] and "criterion_s" not in figures and "peak_mib" not in figures
    row = figures["phases"]["inference"]
    assert row["ratio_median"] == pytest.approx(row["ours_median_s"] / row["theirs_median_s"])
    assert figures["probe_gflops"] > 0


def test_compile_theirs_needs_eval_compile():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--config", "gfl_r50.yaml",
                             "--vs", "torchvision", "--compile-theirs"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--compile-theirs goes with --vs torchvision and eval.compile=true" in result.stderr
