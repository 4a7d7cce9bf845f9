"""Helpers of the end-to-end tests: run train.py / eval.py as processes on a tiny shapes set."""
import json
import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**{k: v for k, v in os.environ.items() if k != "FOCALDET_DEBUG"}, "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}
# Tiny GFL: 128 px training, 32-channel FPN and head. Evaluation at 160 px: with 32 channels GroupNorm(32)
# has one channel per group, and a 1 x 1 P7 map (inputs up to 128 px) leaves it one value per group.
TINY = ["data.train_short_sides=[128]", "data.test_short_side=160", "data.max_size=224", "data.batch_size=2",
        "data.workers=0", "model.fpn.out_channels=32", "model.head.feat_channels=32", "model.head.stacked_convs=1",
        "model.test.score_thr=0.001", "train.log_interval=1"]   # the low threshold keeps detections after 4 steps


def data_overrides(paths):
    return ["data.dataset=coco", f"data.train_images={paths['train_images']}", f"data.train_ann={paths['train_ann']}",
            f"data.val_images={paths['val_images']}", f"data.val_ann={paths['val_ann']}"]


def run_tool(args, timeout=240):
    return subprocess.run([sys.executable] + args, cwd=REPOSITORY, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def check_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_json(path):
    with open(path) as f:
        return json.load(f)


def assert_one_error_line(returncode, stderr, named):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], stderr
