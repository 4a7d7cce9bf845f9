"""The run directory: checked before anything is written, another config's run refused, Ctrl-C / SIGTERM
saving a checkpoint at the current iteration with the resume command, --resume auto saying what it did,
and epoch checkpoints without optimizer state."""
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_tools import ENV, REPOSITORY, TINY, assert_one_error_line, check_ok, data_overrides, run_tool


def snapshot(folder):
    """{relative path: (bytes, mtime_ns)} of every file under `folder`."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return files


def test_bad_config_leaves_an_existing_run_directory_byte_identical(run_main_in_process, trained, tmp_path,
                                                                     monkeypatch):
    work_dir, overrides, _ = trained
    before = snapshot(work_dir)
    import train as train_tool

    def no_dataset(*args, **kwargs):
        raise AssertionError("a dataset was read before the config was checked")
    monkeypatch.setattr(train_tool, "build_dataset", no_dataset)
    weights_only = tmp_path / "epoch_1.pth"  # as an epoch checkpoint is saved: no optimizer state
    torch.save(dict(torch.load(os.path.join(work_dir, "checkpoints", "last.pth"), weights_only=True),
                    optimizer=None), weights_only)
    run = ["--config", "shapes_gfl_r18.yaml", *overrides, "--work-dir", work_dir]
    cases = [
        (run + ["model.loss_box.type=gio"], "model.loss_box.type: unknown loss 'gio'"),
        (run + ["model.loss_cls.type=giou"], "'giou' is a box loss; expected a classification loss"),
        (run + ["model.loss_cls.params.gama=2"], "not a parameter of 'quality_focal'"),
        (run + ["--resume", str(tmp_path / "missing.pth")], "checkpoint not found:"),
        (run + ["data.val_images=" + str(tmp_path / "nowhere")],
         "nowhere: image directory not found (data.val_images)"),
        (run + [f"model.backbone.pretrained={tmp_path / 'r18.pth'}"], "r18.pth (use 'torchvision', null"),
        (run + ["--resume", str(weights_only)], "epoch_1.pth: holds weights only"),
    ]
    for args, named in cases:
        assert_one_error_line(*run_main_in_process("train.py", args), named)
    assert snapshot(work_dir) == before


def test_a_run_directory_of_another_config_is_refused(run_main_in_process, trained, monkeypatch):
    work_dir, overrides, _ = trained
    before = snapshot(work_dir)
    # same data, another detector: the ATSS config's name and head differ from the GFL run in work_dir
    returncode, stderr = run_main_in_process("train.py", ["--config", "shapes_atss_r18.yaml", *overrides,
                                                          "--work-dir", work_dir])
    assert_one_error_line(returncode, stderr, f"{work_dir} holds a run of another config (model.")
    assert "pass --work-dir DIR for a new run directory" in stderr
    # the same config on other data (the README's raccoon command without --work-dir): here the embedded set
    returncode, stderr = run_main_in_process("train.py", ["--config", "shapes_gfl_r18.yaml", *TINY,
                                                          "--work-dir", work_dir])
    assert_one_error_line(returncode, stderr, "(data.dataset: 'coco' -> 'shapes')")
    assert snapshot(work_dir) == before
    # what may change when a run is resumed is no other config: epochs, lr, batch size, test size, workers
    from detector.config import load_config
    from detector.run_dir import check_run_dir
    check_run_dir(work_dir, load_config("shapes_gfl_r18.yaml", overrides + [
        "train.epochs=24", "optim.lr=0.002", "data.batch_size=1", "data.test_short_side=128", "data.workers=2",
        "model.test.score_thr=0.3"]))


def test_epoch_checkpoints_hold_weights_and_last_holds_the_optimizer(shapes_small, tmp_path):
    work_dir = str(tmp_path / "run")
    # 24 train images in batches of 6: one epoch is 4 iterations
    check_ok(run_tool(["train.py", "--config", "shapes_gfl_r18.yaml", *data_overrides(shapes_small), *TINY,
                       "data.batch_size=6", "train.epochs=1", "--work-dir", work_dir]))
    last = torch.load(os.path.join(work_dir, "checkpoints", "last.pth"), weights_only=True)
    epoch = torch.load(os.path.join(work_dir, "checkpoints", "epoch_1.pth"), weights_only=True)
    assert last["optimizer"]["state"] and epoch["optimizer"] is None
    assert epoch["model"].keys() == last["model"].keys()
    assert all(torch.equal(epoch["model"][key], last["model"][key]) for key in last["model"])
    assert (epoch["epoch"], epoch["iteration"], epoch["epoch_step"]) == (1, 4, 0)
    assert (last["epoch"], last["iteration"], last["epoch_step"]) == (1, 4, 0)
    last_size = os.path.getsize(os.path.join(work_dir, "checkpoints", "last.pth"))
    epoch_size = os.path.getsize(os.path.join(work_dir, "checkpoints", "epoch_1.pth"))
    assert epoch_size < 0.5 * last_size  # AdamW keeps two moments per weight: weights alone are about a third


def test_run_info_records_the_precision_outside_the_checkpoint(trained):
    import json
    work_dir, _, result = trained
    with open(os.path.join(work_dir, "run_info.json")) as f:
        info = json.load(f)
    assert info["precision"] in ("fp32", "bf16") and info["device"] == "cpu"
    assert f"precision {info['precision']}: {info['reason']}" in result.stdout
    last = torch.load(os.path.join(work_dir, "checkpoints", "last.pth"), weights_only=True)
    assert set(last) == {"model", "training_model", "criterion", "optimizer", "grad_scaler", "ema_updates", "epoch",
                         "iteration", "epoch_step", "nonfinite_skips", "world_size", "rng", "config", "classes"}
    assert last["config"]["train"]["amp"] == "auto"   # the setting, not what this machine resolved it to


def wait_for(process, pattern, lines, timeout=120):
    """Read process stdout lines into `lines` until one matches `pattern`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"{pattern!r} never appeared:\n" + "".join(lines[-30:]))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_current_iteration_and_prints_the_resume_command(shapes_small, tmp_path, signum):
    work_dir = str(tmp_path / "run")
    # 12 iterations per epoch (24 images, batch 2), 20 epochs: far longer than the test waits
    args = ["train.py", "--config", "shapes_gfl_r18.yaml", *data_overrides(shapes_small), *TINY, "train.epochs=20",
            "--work-dir", work_dir, "--resume", "auto"]
    process = subprocess.Popen([sys.executable, *args], cwd=REPOSITORY, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        wait_for(process, r"--resume auto: no .*last.pth, starting fresh", lines)
        wait_for(process, r"epoch 1 iter 3/240", lines)
        process.send_signal(signum)
        output = "".join(lines) + process.communicate(timeout=120)[0]
    finally:
        process.kill()
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, output
    assert "Traceback" not in output
    saved = re.search(rf"{name}: saved (\S+) at iteration (\d+); resume with: (.+)", output)
    assert saved, output
    stopped_at = int(saved.group(2))
    assert 3 <= stopped_at < 12   # the step in flight finished, then it stopped within the first epoch
    checkpoint = torch.load(saved.group(1), weights_only=True)
    assert (checkpoint["epoch"], checkpoint["iteration"], checkpoint["epoch_step"]) == (0, stopped_at, stopped_at)
    assert checkpoint["optimizer"]["state"]
    # the printed command resumes it: same config and work dir, the next iteration, in the same epoch
    command = shlex.split(saved.group(3))
    assert command[1:5] == ["train.py", "--config", "shapes_gfl_r18.yaml", "--work-dir"] and "auto" in command
    resumed = check_ok(run_tool(command[1:] + [f"train.max_iters={stopped_at + 2}"]))
    assert f"--resume auto: found {work_dir}/checkpoints/last.pth" in resumed.stdout
    assert (f"resumed from {work_dir}/checkpoints/last.pth: epoch 0, iteration {stopped_at} ({stopped_at} steps "
            f"into epoch 1)") in resumed.stdout
    steps = re.findall(r"epoch (\d+) iter (\d+)/", resumed.stdout)
    assert steps[0] == ("1", str(stopped_at + 1))
