"""scripts/sweep.py: grid x seeds expansion, skip / resume / interrupt with a stand-in trainer, the report."""
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "scripts", "sweep.py")
spec = importlib.util.spec_from_file_location("sweep", SWEEP)
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)

# Stands in for train.py (the sweep launches `python fake_train.py <ROOT>/train.py --config C --work-dir D ...`):
# AP from the seed and the loss name, so every number in the report is known; FAKE_MODE=wait: a giou run waits
# for SIGTERM the first time and then, as train.py, "saves" and exits 128 + 15; FAKE_MODE=fail exits 2.
FAKE_TRAIN = textwrap.dedent('''
    import json, os, signal, sys, time
    args = sys.argv[2:]
    work_dir = args[args.index("--work-dir") + 1]
    overrides = dict(arg.split("=", 1) for arg in args if "=" in arg)
    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(work_dir, "calls.txt"), "a") as f:
        f.write(" ".join(args) + "\\n")
    if os.environ.get("FAKE_MODE") == "fail":
        sys.exit(2)
    waits = os.environ.get("FAKE_MODE") == "wait" and work_dir.endswith("giou")
    if waits and not os.path.exists(os.path.join(work_dir, "last.pth")):
        signal.signal(signal.SIGTERM, lambda *a: (open(os.path.join(work_dir, "last.pth"), "w").close(),
                                                   sys.exit(128 + signal.SIGTERM)))
        open(os.path.join(work_dir, "started"), "w").close()
        time.sleep(60)
        sys.exit(1)
    loss = overrides.get("model.loss_box.type", "giou")
    ap = {"giou": 0.40, "eiou": 0.30}[loss] + 0.02 * int(overrides.get("train.seed", 0))
    final = {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.1, "APs": -1.0, "APm": ap, "APl": ap}
    with open(os.path.join(work_dir, "metrics.json"), "w") as f:
        json.dump({"final": final, "history": [{"iteration": 7, **final}]}, f)
    with open(os.path.join(work_dir, "detections.json"), "w") as f:
        json.dump([], f)
''')


@pytest.fixture
def fake_train(tmp_path):
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE_TRAIN)
    return f"{sys.executable} {path}"


def run_sweep(args, mode="", **kwargs):
    env = {**os.environ, "FAKE_MODE": mode}
    return subprocess.run([sys.executable, SWEEP, *args], capture_output=True, text=True, env=env, **kwargs)


def calls(work_dir):
    path = os.path.join(work_dir, "calls.txt")
    return open(path).read().splitlines() if os.path.exists(path) else []


def test_grid_expands_every_combination_and_seed():
    runs = list(sweep.runs(["configs/a.yaml", "b.yaml"], ["model.loss_box.type=giou,ciou", "optim.lr=0.1,0.2"]))
    assert len(runs) == 8
    assert runs[1] == ("a-loss_box=giou-lr=0.2", "a-loss_box=giou-lr=0.2", "configs/a.yaml",
                       ["model.loss_box.type=giou", "optim.lr=0.2"])
    runs = list(sweep.runs(["a.yaml"], ["model.loss_box.type=giou,ciou"], seeds=[0, 3]))
    assert [(name, row) for name, row, _, _ in runs] == [
        ("a-loss_box=giou-seed=0", "a-loss_box=giou"), ("a-loss_box=giou-seed=3", "a-loss_box=giou"),
        ("a-loss_box=ciou-seed=0", "a-loss_box=ciou"), ("a-loss_box=ciou-seed=3", "a-loss_box=ciou")]
    assert runs[1][3] == ["model.loss_box.type=giou", "train.seed=3"]


def test_sweep_with_seeds_writes_table_csv_and_chart(fake_train, tmp_path):
    out = tmp_path / "sweep"
    args = ["--configs", "shapes_gfl_r18.yaml", "--grid", "model.loss_box.type=giou,eiou", "--seeds", "0,1",
            "--out-dir", str(out), "--launcher", fake_train, "--", "train.max_iters=7"]
    result = run_sweep(args)
    assert result.returncode == 0, result.stderr
    assert "# 4 runs: 0 finished, 4 to run" in result.stdout
    giou = out / "shapes_gfl_r18-loss_box=giou-seed=1"
    assert calls(giou) == [f"--config shapes_gfl_r18.yaml --work-dir {giou} --resume auto "
                           "model.loss_box.type=giou train.seed=1 train.max_iters=7"]
    # giou: AP 40 and 42 -> 41.0 +- 1.4 (sample std sqrt(2)); eiou: 30, 32 -> 31.0 +- 1.4; APs -1 everywhere: "-"
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| run | AP | AP50 | AP75 | APs | APm | APl | seeds | iterations | minutes | parameters |"
    assert table[2].startswith("| shapes_gfl_r18-loss_box=giou | **41.0 ± 1.4** | **61.0 ± 1.4** | **31.0 ± 1.4** "
                               "| - | **41.0 ± 1.4** | **41.0 ± 1.4** | 2 | 7 | ")
    assert table[3].startswith("| shapes_gfl_r18-loss_box=eiou | 31.0 ± 1.4 | 51.0 ± 1.4 | 21.0 ± 1.4 | - |")
    assert table[2].endswith(" | - |")  # no checkpoint, no parameter count
    assert 0 <= float(table[2].split(" | ")[-2]) < 1  # timed by the sweep (a stand-in trainer: well under 0.05)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["row"] for row in rows] == ["shapes_gfl_r18-loss_box=giou", "shapes_gfl_r18-loss_box=eiou"]
    assert float(rows[1]["AP"]) == pytest.approx(0.31) and float(rows[1]["AP_std"]) == pytest.approx(2 ** 0.5 / 100)
    with open(out / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    with Image.open(out / "results.png") as image:
        assert image.format == "PNG"

    again = run_sweep(args)  # everything finished: nothing is trained again
    assert "# 4 runs: 4 finished, 0 to run" in again.stdout and "$ " not in again.stdout
    assert len(calls(giou)) == 1
    assert (out / "results.md").read_text().splitlines()[2] == table[2]


def test_interrupted_sweep_resumes_and_skips_finished_runs(fake_train, tmp_path):
    out = tmp_path / "sweep"
    args = ["--configs", "shapes_gfl_r18.yaml", "--grid", "model.loss_box.type=giou,eiou", "--out-dir", str(out),
            "--launcher", fake_train]
    first = out / "shapes_gfl_r18-loss_box=giou"
    process = subprocess.Popen([sys.executable, SWEEP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "FAKE_MODE": "wait"})
    deadline = time.time() + 60
    while not (first / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # to the sweep only: it passes SIGTERM on to the running trainer
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert (first / "last.pth").exists()  # the trainer got the SIGTERM and "saved"
    assert "stopped at shapes_gfl_r18-loss_box=giou" in stderr
    assert not (out / "shapes_gfl_r18-loss_box=eiou").exists()  # no run started after the signal
    attempts = json.loads((first / "sweep_time.json").read_text())["attempts"]
    assert len(attempts) == 1 and attempts[0]["returncode"] == 128 + signal.SIGTERM and attempts[0]["seconds"] > 0

    dry = run_sweep(args + ["--dry-run"])
    assert dry.stdout.splitlines()[0] == "# 2 runs: 0 finished, 2 to run"
    assert len(dry.stdout.splitlines()) == 3 and all("--resume auto" in line for line in dry.stdout.splitlines()[1:])
    assert len(calls(first)) == 1  # a dry run launches nothing

    result = run_sweep(args, mode="wait")  # resumes the first run (its last.pth exists), then trains the second
    assert result.returncode == 0, result.stderr
    assert len(calls(first)) == 2 and len(calls(out / "shapes_gfl_r18-loss_box=eiou")) == 1
    assert len(json.loads((first / "sweep_time.json").read_text())["attempts"]) == 2
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| run | AP | AP50 | AP75 | APs | APm | APl | iterations | minutes | parameters |"
    assert table[2].startswith("| shapes_gfl_r18-loss_box=giou | **40.0** | **60.0** | **30.0** | - | **40.0** |")


def test_a_failed_run_stops_the_sweep(fake_train, tmp_path):
    result = run_sweep(["--configs", "a.yaml", "b.yaml", "--out-dir", str(tmp_path), "--launcher", fake_train],
                       mode="fail")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: run a failed (exit status 2); see {tmp_path}/a/log.txt"
    assert not (tmp_path / "b").exists()


def test_dry_run_commands_under_torchrun(tmp_path):
    result = run_sweep(["--configs", "gfl_r50.yaml", "--grid", "optim.lr=0.01,0.02", "--grid", "train.epochs=1,2",
                        "--nproc", "8", "--dry-run", "--out-dir", str(tmp_path)])
    lines = result.stdout.splitlines()
    assert lines[0] == "# 4 runs: 0 finished, 4 to run" and len(lines) == 5
    assert "--standalone --nproc_per_node=8" in lines[1] and lines[1].endswith(
        f"train.py --config gfl_r50.yaml --work-dir {tmp_path}/gfl_r50-lr=0.01-epochs=1 --resume auto optim.lr=0.01 "
        "train.epochs=1")
    assert not os.listdir(tmp_path)


def test_parameter_count_from_the_run_config(tmp_path):
    import torch

    from detector import build_model
    from detector.config import dump_config, load_config
    cfg = load_config("shapes_gfl_r18.yaml", ["model.backbone.depth=18", "model.fpn.out_channels=16",
                                               "model.head.feat_channels=16", "model.head.stacked_convs=1"])
    dump_config(cfg, str(tmp_path / "config.yaml"))
    (tmp_path / "checkpoints").mkdir()
    torch.save({"classes": {"cat_ids": [3, 7], "class_names": ["a", "b"]}}, tmp_path / "checkpoints" / "last.pth")
    model = build_model(cfg.model, 2)
    assert sweep.count_parameters(str(tmp_path)) == sum(parameter.numel() for parameter in model.parameters())
