"""A run killed with SIGKILL at a random mid-epoch iteration and resumed with --resume auto ends with the same
bits as the run that was never interrupted: weights, EMA, optimizer state (DataLoader workers, random flips,
gradient accumulation and an epoch boundary after the resume included)."""
import os
import random
import re
import signal
import subprocess
import sys

import torch
from cli_tools import ENV, REPOSITORY, TINY, check_ok, data_overrides, run_tool
from test_run_dir import wait_for

ITERATIONS = 8   # 23 training images in batches of 2, 2 batches a step: 6 steps an epoch, so the run crosses one


def tensors(state, prefix=""):
    """{dotted key: tensor} of every tensor in a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else []
    return {key: value for name, item in items for key, value in tensors(item, f"{prefix}.{name}").items()}


def test_a_killed_and_resumed_run_ends_bit_identical(shapes_small, tmp_path):
    args = ["train.py", "--config", "shapes_gfl_r18.yaml", *data_overrides(shapes_small), *TINY, "data.workers=1",
            "data.flip_prob=0.5", "train.accumulate=2", "train.ema=true", "train.ema_warmup=4",
            "train.checkpoint_every_iters=3", f"train.max_iters={ITERATIONS}"]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    uninterrupted = subprocess.Popen([sys.executable, *args, "--work-dir", whole], cwd=REPOSITORY, env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen([sys.executable, *args, "--work-dir", killed, "--resume", "auto"], cwd=REPOSITORY,
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_at = random.Random().randint(4, 5)   # an iteration of the first epoch after its checkpoint at 3
    lines = []
    try:
        wait_for(victim, rf"epoch 1 iter {kill_at}/{ITERATIONS} ", lines)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        output = uninterrupted.communicate(timeout=240)[0]
    finally:
        victim.kill()
        uninterrupted.kill()
    assert victim.returncode == -signal.SIGKILL
    assert uninterrupted.returncode == 0, output[-3000:]

    resumed = check_ok(run_tool([*args, "--work-dir", killed, "--resume", "auto"]))
    saved = re.search(r"resumed from \S+: epoch 0, iteration (\d+) \((\d+) steps into epoch 1\)", resumed.stdout)
    assert saved, resumed.stdout[-3000:]
    assert saved.group(1) == saved.group(2) == "3"   # the periodic checkpoint, mid-epoch
    assert f"epoch 2 iter {ITERATIONS}/{ITERATIONS}" in resumed.stdout

    expected = torch.load(os.path.join(whole, "checkpoints", "last.pth"), weights_only=True)
    actual = torch.load(os.path.join(killed, "checkpoints", "last.pth"), weights_only=True)
    assert (actual["epoch"], actual["epoch_step"], actual["iteration"]) == (1, 2, ITERATIONS)
    for part in ("model", "training_model", "optimizer"):   # (GFL's criterion holds no buffer; EFL's would be here)
        expected_tensors, actual_tensors = tensors(expected[part]), tensors(actual[part])
        assert expected_tensors.keys() == actual_tensors.keys() and expected_tensors, part
        different = [key for key in expected_tensors if not torch.equal(expected_tensors[key], actual_tensors[key])]
        assert not different, f"{part}: {len(different)} tensors differ, e.g. {different[:3]}"
    # the EMA is not the raw weights (it is what 'model' holds and evaluation uses)
    assert not all(torch.equal(actual["model"][k], actual["training_model"][k]) for k in actual["model"]
                   if actual["model"][k].is_floating_point())
