"""Checkpoint files: atomic under a kill, refused when truncated, foreign or holding code, the newest N kept; the
resume checks (trajectory, --resume-override) and the EMA's decay."""
import math
import os
import subprocess
import sys

import pytest
import torch
from cli_tools import ENV, REPOSITORY, assert_one_error_line

from detector.checkpoint import CheckpointDirectory, CheckpointError, load_checkpoint, save_checkpoint
from detector.config import config_to_dict, load_config
from detector.ema import ModelEMA
from detector.resume import check_resume, continued_position


def state(value, iteration=1):
    return {"model": {"weight": torch.full((4,), float(value))}, "config": {"name": "x"}, "iteration": iteration}


KILLED_WRITER = """
import io, sys, time, torch
import detector.checkpoint as checkpoint
real_save = torch.save
def half_then_hang(obj, handle):      # the kill lands after half the bytes are written, before the rename
    buffer = io.BytesIO(); real_save(obj, buffer)
    handle.write(buffer.getvalue()[:len(buffer.getvalue()) // 2]); handle.flush()
    print("half written", flush=True); time.sleep(120)
torch.save = half_then_hang
checkpoint.save_checkpoint(sys.argv[1], {"model": {"weight": torch.full((4,), 2.0)}, "config": {"name": "x"}})
"""


def test_a_kill_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, state(1.0))
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, path], cwd=REPOSITORY, env=ENV,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "half written"
    finally:
        process.kill()
        process.wait()
    assert load_checkpoint(path)["model"]["weight"].tolist() == [1.0] * 4     # the previous one, whole
    leftovers = [name for name in os.listdir(tmp_path) if name != "last.pth"]
    assert leftovers == [f"last.pth.tmp.{process.pid}"]
    with pytest.raises(CheckpointError, match=r"cannot be loaded as a focaldet checkpoint, truncated"):
        load_checkpoint(str(tmp_path / leftovers[0]))                        # the half-written bytes: one line
    directory = CheckpointDirectory(str(tmp_path), keep=2)
    assert directory.latest() == path
    directory.remove_temporary_files()
    assert os.listdir(tmp_path) == ["last.pth"]


def test_an_error_while_writing_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, state(1.0))

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, state(2.0))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.pth"] and load_checkpoint(path)["model"]["weight"][0] == 1.0


class RunsCode:
    """Unpickling this calls os.mkdir(marker): what a malicious checkpoint does with os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, run_main_in_process):
    marker = str(tmp_path / "code_ran")
    path = str(tmp_path / "evil.pth")
    torch.save({"model": {"weight": torch.zeros(1)}, "config": {"name": "x"}, "extra": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: it holds pickled Python objects.*posix\.mkdir"):
        load_checkpoint(path)
    assert not os.path.exists(marker)
    returncode, stderr = run_main_in_process("train.py", ["--config", "shapes_gfl_r18.yaml", "--resume", path,
                                                          "--work-dir", str(tmp_path / "run")])
    assert_one_error_line(returncode, stderr, "refused: it holds pickled Python objects")
    assert not os.path.exists(marker)


def test_foreign_and_truncated_files_are_one_line_errors(tmp_path):
    foreign = str(tmp_path / "foreign.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pth: not a focaldet checkpoint"):
        load_checkpoint(foreign)
    whole = str(tmp_path / "whole.pth")
    save_checkpoint(whole, state(1.0))
    with open(whole, "rb") as f:
        data = f.read()
    truncated = str(tmp_path / "truncated.pth")
    with open(truncated, "wb") as f:
        f.write(data[:len(data) - 100])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: cannot be loaded .* truncated or not a torch file"):
        load_checkpoint(truncated)


def test_the_newest_checkpoints_are_kept_and_last_is_the_newest(tmp_path):
    directory = CheckpointDirectory(str(tmp_path), keep=2)
    save_checkpoint(directory.path("epoch_1.pth"), state(0.5))
    for iteration in (10, 20, 30, 40):
        directory.save(state(iteration, iteration))
    assert sorted(os.listdir(tmp_path)) == ["epoch_1.pth", "iter_00000030.pth", "iter_00000040.pth", "last.pth"]
    assert load_checkpoint(directory.last)["iteration"] == 40 and directory.latest() == directory.last
    os.remove(directory.last)
    assert directory.latest() == directory.path("iter_00000040.pth")


def resumable(cfg, world_size=1, **position):
    return {"model": {}, "criterion": {}, "optimizer": {"state": {}}, "config": config_to_dict(cfg),
            "world_size": world_size, "epoch": 1, "epoch_step": 6, "iteration": 18, **position}


def test_a_resume_that_changes_the_trajectory_needs_the_override(tmp_path):
    cfg = load_config("shapes_gfl_r18.yaml", ["data.batch_size=2"])
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, resumable(cfg, world_size=2))
    # what the saved run would do again: the same config on two processes
    checkpoint, changes = check_resume(path, cfg, world_size=2)
    assert changes == [] and continued_position(checkpoint, config_to_dict(cfg), 2, iters_per_epoch=12) == (1, 6, 18)
    cases = [(cfg, 1, "processes (world size): 2 -> 1"),
             (load_config("shapes_gfl_r18.yaml", ["data.batch_size=4"]), 2, "data.batch_size: 2 -> 4"),
             (load_config("shapes_gfl_r18.yaml", ["data.batch_size=2", "optim.milestones=[2]"]), 2,
              "optim.milestones: [4] -> [2]"),
             (load_config("shapes_gfl_r18.yaml", ["data.batch_size=2", "train.accumulate=2"]), 2,
              "train.accumulate: 1 -> 2")]
    for new_cfg, world_size, named in cases:
        with pytest.raises(CheckpointError, match=r"last\.pth: resuming with .*pass --resume-override"):
            check_resume(path, new_cfg, world_size)
        _, changes = check_resume(path, new_cfg, world_size, override=True)
        assert named in changes
    with pytest.raises(CheckpointError, match=r"trained with another model \(model\.head\.feat_channels: 64 -> 32\)"):
        check_resume(path, load_config("shapes_gfl_r18.yaml", ["data.batch_size=2", "model.head.feat_channels=32"]),
                     2)
    # more epochs of the step schedule, a later max_iters, other workers: the trajectory so far is the same
    check_resume(path, load_config("shapes_gfl_r18.yaml", ["data.batch_size=2", "train.epochs=8",
                                                           "train.max_iters=99", "data.workers=0"]), 2)
    # --resume-override of the batch: 6 steps of 2 x 2 images = 24 images into epoch 2 -> 3 steps of 8 images
    overridden = config_to_dict(load_config("shapes_gfl_r18.yaml", ["data.batch_size=4"]))
    assert continued_position(checkpoint, overridden, 2, iters_per_epoch=6) == (1, 3, 1 * 6 + 3)


def test_ema_follows_the_decay_and_its_warmup():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, warmup=2)
    weights = [3.0, 5.0, -1.0]
    expected = 1.0
    for t, weight in enumerate(weights, start=1):
        with torch.no_grad():
            model.weight.fill_(weight)
        ema.update(model)
        decay = 0.9 * (1 - math.exp(-t / 2))          # d_t of YOLOX / mmdetection ExpMomentumEMA
        expected = decay * expected + (1 - decay) * weight
        assert ema.model.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.updates == 3 and not ema.model.weight.requires_grad
    constant = ModelEMA(model, decay=0.5, warmup=0)   # no warm-up: the decay from the first update
    with torch.no_grad():
        model.weight.fill_(3.0)
    constant.update(model)
    assert constant.model.weight.item() == pytest.approx(0.5 * -1.0 + 0.5 * 3.0)


def test_the_cli_accepts_resume_override(tmp_path, run_main_in_process):
    """--resume-override is an option of train.py (not a config override) and reaches check_resume."""
    cfg = load_config("shapes_gfl_r18.yaml")
    path = str(tmp_path / "last.pth")
    save_checkpoint(path, resumable(cfg, world_size=2))
    returncode, stderr = run_main_in_process("train.py", ["--config", "shapes_gfl_r18.yaml", "--resume", path,
                                                          "--work-dir", str(tmp_path / "run")])
    assert_one_error_line(returncode, stderr, "resuming with processes (world size): 2 -> 1")


def test_a_truncated_last_checkpoint_names_the_earlier_ones(tmp_path):
    directory = CheckpointDirectory(str(tmp_path), keep=3)
    for iteration in (10, 20):
        directory.save({**resumable(load_config("shapes_gfl_r18.yaml")), "iteration": iteration})
    with open(directory.last, "r+b") as handle:   # last.pth and iter_00000020.pth are one file
        handle.truncate(1000)
    with pytest.raises(CheckpointError, match=r"last\.pth: cannot be loaded .*; earlier checkpoints there: "
                                              r"iter_00000010\.pth \(pass one to --resume\)$"):
        check_resume(directory.last, load_config("shapes_gfl_r18.yaml"), 1)
