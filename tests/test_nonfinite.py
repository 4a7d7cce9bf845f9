"""A NaN in one image's box stops training at that iteration with the image's id and file (the last checkpoint
stays loadable), or skips the step under train.on_nonfinite=skip, at most train.max_nonfinite_skips in a row."""
import os
import re

import pytest
import torch
from cli_tools import TINY, data_overrides

import data.coco
from detector.checkpoint import load_checkpoint


@pytest.fixture
def poison(monkeypatch):
    """Items number `calls` (1-based, in loading order: data.workers=0) get a NaN in their first box; returns the
    list that the poisoned items' (image id, file name) are appended to."""
    poisoned, original, counter = [], data.coco.CocoDetection.__getitem__, {"calls": 0}

    def arm(*calls):
        def getitem(dataset, index):
            image, target = original(dataset, index)
            counter["calls"] += 1
            if counter["calls"] in calls and len(target["boxes"]):
                target["boxes"][0, 0] = float("nan")
                position = index[0] if isinstance(index, tuple) else index
                poisoned.append((target["image_id"], dataset.file_name(position)))
            return image, target
        monkeypatch.setattr(data.coco.CocoDetection, "__getitem__", getitem)
        return poisoned
    return arm


def test_a_nan_box_names_the_iteration_and_image_and_keeps_the_last_checkpoint(run_main_in_process, poison,
                                                                                 shapes_small, tmp_path):
    poisoned = poison(5)   # the first image of the third batch (batches of 2)
    work_dir = str(tmp_path / "run")
    returncode, stderr = run_main_in_process("train.py", [
        "--config", "shapes_gfl_r18.yaml", *data_overrides(shapes_small), *TINY, "train.checkpoint_every_iters=1",
        "train.max_iters=6", "--work-dir", work_dir])
    assert returncode == 2 and len(poisoned) == 1, stderr
    (image_id, file_name), = poisoned
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: non-finite loss or gradient at iteration 3: "), stderr
    assert f"non-finite ground-truth box in image {image_id} ({shapes_small['train_images']}/{file_name})" in lines[0]
    assert re.search(r"batch images \d+ \(\S+\.png\), \d+ \(\S+\.png\)", lines[0]) and str(image_id) in lines[0]
    # nothing was saved after iteration 2: last.pth is the last good checkpoint, whole and finite
    checkpoint = load_checkpoint(os.path.join(work_dir, "checkpoints", "last.pth"))
    assert checkpoint["iteration"] == 2
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())
    assert sorted(os.listdir(os.path.join(work_dir, "checkpoints"))) == ["iter_00000001.pth", "iter_00000002.pth",
                                                                         "last.pth"]


def test_skip_drops_the_step_and_stops_after_too_many_in_a_row(run_main_in_process, poison, shapes_small, tmp_path,
                                                                caplog):
    poisoned = poison(5, 7, 9)   # the first images of batches 3, 4 and 5: three bad steps in a row
    work_dir = str(tmp_path / "run")
    returncode, stderr = run_main_in_process("train.py", [
        "--config", "shapes_gfl_r18.yaml", *data_overrides(shapes_small), *TINY, "train.on_nonfinite=skip",
        "train.max_nonfinite_skips=2", "train.checkpoint_every_iters=1", "train.max_iters=8", "--work-dir", work_dir])
    assert len(poisoned) == 3 and returncode == 2, stderr
    assert "non-finite loss or gradient at iteration 5, after 2 steps skipped in a row" in stderr
    assert f"image {poisoned[2][0]}" in stderr
    with open(os.path.join(work_dir, "log.txt")) as f:
        log = f.read()
    assert "iteration 3 skipped (train.on_nonfinite=skip, 1 in a row): non-finite" in log
    assert "iteration 4 skipped (train.on_nonfinite=skip, 2 in a row)" in log
    # a skipped step moves nothing: the weights after step 4 are those after step 2, the position moved on
    before, after = (load_checkpoint(os.path.join(work_dir, "checkpoints", f"iter_{n:08d}.pth")) for n in (2, 4))
    assert after["iteration"] == 4 and after["nonfinite_skips"] == 2
    assert all(torch.equal(before["model"][key], after["model"][key]) for key in before["model"]
               if "running" not in key and "num_batches" not in key)   # BatchNorm statistics did see the batches
