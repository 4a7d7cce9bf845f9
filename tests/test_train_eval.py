"""End to end on the CPU: train.py on a tiny shapes set, eval.py reproducing its metrics, --resume auto,
a two-process gloo run, and the one-line errors of the command-line tools."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from cli_tools import ENV, REPOSITORY, TINY, assert_one_error_line, check_ok, data_overrides, read_json, run_tool

from detector.config import load_config
from detector.engine import learning_rate


def test_training_writes_the_run_directory(trained, shapes_small):
    work_dir, _, _ = trained
    for name in ("config.yaml", "log.txt", "metrics.json", "detections.json", "checkpoints/last.pth"):
        assert os.path.isfile(os.path.join(work_dir, name)), name
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(work_dir, "tb")))
    assert not any(".tmp" in name for name in os.listdir(os.path.join(work_dir, "checkpoints")))  # atomic saves

    saved = load_config(os.path.join(work_dir, "config.yaml"))
    assert saved.model.head.feat_channels == 32 and saved.data.train_short_sides == [128]
    assert saved.train.max_iters == 4 and saved.data.train_ann == shapes_small["train_ann"]
    checkpoint = torch.load(os.path.join(work_dir, "checkpoints", "last.pth"), weights_only=True)
    # train.max_iters=4 ended the run 4 steps into its first 12-iteration epoch: 0 epochs completed
    assert (checkpoint["epoch"], checkpoint["iteration"], checkpoint["epoch_step"]) == (0, 4, 4)
    assert checkpoint["classes"] == {"cat_ids": [3, 7, 11, 42], "class_names": ["circle", "square", "triangle", "star"]}
    with open(os.path.join(work_dir, "log.txt")) as f:
        log = f.read()
    assert "epoch 1 iter 4/4" in log and "epoch 1 iter 5" not in log and "final bbox AP" in log

    metrics = read_json(os.path.join(work_dir, "metrics.json"))
    final = metrics["final"]
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "per_class"} <= set(final)
    assert 0 < final["AP"] <= 1   # the detections below match some ground truth
    assert metrics["history"][-1]["epoch"] == 1 and metrics["history"][-1]["AP"] == final["AP"]
    assert set(final["per_class"]) == {"circle", "square", "triangle", "star"}

    # detections.json: COCO results, dataset category ids (3, 7, 11, 42 in the JSON), xywh in original pixels
    val = read_json(shapes_small["val_ann"])
    sizes = {image["id"]: (image["width"], image["height"]) for image in val["images"]}
    detections = read_json(os.path.join(work_dir, "detections.json"))
    assert len(detections) > 100
    assert {d["image_id"] for d in detections} == set(sizes)
    category_ids = {d["category_id"] for d in detections}
    assert category_ids <= {c["id"] for c in val["categories"]} and category_ids & {7, 11, 42}
    for detection in detections:
        x, y, w, h = detection["bbox"]
        width, height = sizes[detection["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
        assert 0.001 < detection["score"] <= 1


def test_eval_reproduces_the_training_metrics(trained):
    work_dir, _, _ = trained
    check_ok(run_tool(["eval.py", "--checkpoint", os.path.join(work_dir, "checkpoints", "last.pth")]))
    evaluated = read_json(os.path.join(work_dir, "eval", "metrics.json"))
    assert evaluated.pop("checkpoint").endswith("last.pth")
    assert evaluated == read_json(os.path.join(work_dir, "metrics.json"))["final"]
    assert read_json(os.path.join(work_dir, "eval", "detections.json")) == read_json(
        os.path.join(work_dir, "detections.json"))


def test_eval_compiled_for_inference_gives_the_same_metrics(trained, tmp_path):
    """eval.compile=true (inductor, frozen weights) end to end: the same COCO numbers as the eager evaluation."""
    work_dir, _, _ = trained
    result = check_ok(run_tool(["eval.py", "--checkpoint", os.path.join(work_dir, "checkpoints", "last.pth"),
                                "--out-dir", str(tmp_path), "eval.compile=true"]))
    assert "model compiled for inference (backend inductor, frozen weights)" in result.stdout
    evaluated = read_json(str(tmp_path / "metrics.json"))
    expected = read_json(os.path.join(work_dir, "metrics.json"))["final"]
    assert expected["AP"] > 0
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert evaluated[key] == pytest.approx(expected[key], abs=1e-3), key


def test_resume_auto_continues_from_the_checkpoint(trained, tmp_path):
    work_dir, overrides, _ = trained
    resumed_dir = str(tmp_path / "resumed")
    shutil.copytree(work_dir, resumed_dir)
    result = check_ok(run_tool(["train.py", "--config", "shapes_gfl_r18.yaml", *overrides, "train.epochs=2",
                                "train.max_iters=6", "--resume", "auto", "--work-dir", resumed_dir]))
    # train.max_iters=4 stopped the first run 4 steps into its 12-iteration epoch: the resumed run goes on there
    assert f"resumed from {resumed_dir}/checkpoints/last.pth: epoch 0, iteration 4 (4 steps into epoch 1)" \
        in result.stdout
    steps = re.findall(r"epoch (\d+) iter (\d+)/6 lr (\S+)", result.stdout)
    assert [(epoch, step) for epoch, step, _ in steps] == [("1", "5"), ("1", "6")]
    # the schedule continues where it stopped: lr at iteration 4 of the warmup, scaled to batch 2
    cfg = load_config("shapes_gfl_r18.yaml")
    expected_lr = learning_rate(4, cfg.optim.lr * 2 / cfg.optim.base_batch_size, cfg.optim, iters_per_epoch=12,
                                epochs=2)
    assert float(steps[0][2]) == pytest.approx(expected_lr, rel=1e-3)
    checkpoint = torch.load(os.path.join(resumed_dir, "checkpoints", "last.pth"), weights_only=True)
    assert (checkpoint["epoch"], checkpoint["iteration"], checkpoint["epoch_step"]) == (0, 6, 6)
    history = read_json(os.path.join(resumed_dir, "metrics.json"))["history"]
    assert [(entry["epoch"], entry["iteration"]) for entry in history] == [(1, 4), (1, 6)]  # the first kept


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_run_matches_single_process_evaluation(shapes_small, tmp_path):
    work_dir = str(tmp_path / "ddp")
    check_ok(run_tool(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                       "train.py", "--config", "shapes_gfl_r18.yaml", *data_overrides(shapes_small), *TINY,
                       "train.epochs=1", "train.max_iters=2", "--work-dir", work_dir]))
    with open(os.path.join(work_dir, "log.txt")) as f:
        log = f.read()
    assert "2 process(es)" in log and "total batch 4" in log and "epoch 1 iter 2/2" in log
    final = read_json(os.path.join(work_dir, "metrics.json"))["final"]
    detections = read_json(os.path.join(work_dir, "detections.json"))
    val_ids = {image["id"] for image in read_json(shapes_small["val_ann"])["images"]}
    assert {d["image_id"] for d in detections} == val_ids       # both ranks' shards were gathered
    # sharded evaluation on two ranks == evaluation of the same checkpoint in one process
    check_ok(run_tool(["eval.py", "--checkpoint", os.path.join(work_dir, "checkpoints", "last.pth"),
                       "--out-dir", str(tmp_path / "single")]))
    single = read_json(str(tmp_path / "single" / "metrics.json"))
    single.pop("checkpoint")
    assert single == final


@pytest.fixture(scope="module")
def cli_subprocess_errors(tmp_path_factory):
    """The two entry points as real processes, started at once: {case: (returncode, stderr)}."""
    folder = tmp_path_factory.mktemp("cli_errors")
    cases = {"config typo": ["train.py", "--config", "shapes_gfl_r18.yaml", "optim.lrr=1"],
             "missing checkpoint": ["eval.py", "--checkpoint", str(folder / "missing.pth")]}
    processes = {name: subprocess.Popen([sys.executable] + args, cwd=REPOSITORY, env=ENV, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for name, args in cases.items()}
    return {name: (process.wait(timeout=120), process.communicate()[1]) for name, process in processes.items()}


def test_cli_processes_print_one_error_line(cli_subprocess_errors):
    returncode, stderr = cli_subprocess_errors["config typo"]
    assert_one_error_line(returncode, stderr, "unknown config key 'optim.lrr'; did you mean optim.lr?")
    returncode, stderr = cli_subprocess_errors["missing checkpoint"]
    assert_one_error_line(returncode, stderr, "checkpoint not found:")


def test_bad_input_is_one_error_line(run_main_in_process, shapes_small, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    data = data_overrides(shapes_small)
    cases = [
        ("train.py", ["--config", "shapes_gfl_r18.yaml", "train.epochs=1.5"], "config key 'train.epochs' expects int"),
        ("train.py", ["--config", "no_such_config.yaml"], "config file not found: no_such_config.yaml"),
        ("eval.py", ["--checkpoint", str(garbage)], "garbage.pth: cannot be loaded as a focaldet checkpoint"),
        ("train.py", ["--config", "shapes_gfl_r18.yaml", *data, f"data.train_ann={tmp_path / 'missing.json'}",
                      "--work-dir", str(tmp_path / "run1")], "missing.json: annotation file not found"),
        ("train.py", ["--config", "shapes_gfl_r18.yaml", *data, f"model.backbone.pretrained={garbage}",
                      "--work-dir", str(tmp_path / "run2")], "garbage.pth: cannot be loaded as a state dict"),
    ]
    for script, args, named in cases:
        assert_one_error_line(*run_main_in_process(script, args), named)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)
    return str(path)


def test_inconsistent_data_and_checkpoints_are_one_error_line(run_main_in_process, trained, shapes_small, tmp_path):
    work_dir, overrides, _ = trained
    last = os.path.join(work_dir, "checkpoints", "last.pth")
    val = read_json(shapes_small["val_ann"])
    # val split without category 42: its labels would mean other classes than the model's
    fewer = dict(val, categories=[c for c in val["categories"] if c["id"] != 42],
                 annotations=[a for a in val["annotations"] if a["category_id"] != 42])
    fewer_ann = write_json(tmp_path / "val_fewer.json", fewer)
    empty_train = write_json(tmp_path / "train_empty.json", dict(val, annotations=[]))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    run = ["--config", "shapes_gfl_r18.yaml", *overrides, "train.max_iters=1"]
    cases = [
        ("train.py", run + [f"data.val_ann={fewer_ann}", "--work-dir", str(tmp_path / "r1")],
         "val_fewer.json: category ids [3, 7, 11] differ from the train split"),
        ("eval.py", ["--checkpoint", last, f"data.val_ann={fewer_ann}"],
         "val_fewer.json: category ids [3, 7, 11] differ from checkpoint"),
        ("train.py", run + [f"data.train_ann={empty_train}", "--work-dir", str(tmp_path / "r2")],
         "train_empty.json: no images to train on (12 in the file, 12 dropped without a usable box)"),
        ("eval.py", ["--checkpoint", str(foreign)], "foreign.pth: not a focaldet checkpoint"),
        ("eval.py", ["--checkpoint", last, "model.head.feat_channels=64"],
         "last.pth: model weights do not fit this config (size mismatch"),
        ("train.py", run + ["optim.lr=1e30", "train.max_iters=3", "--work-dir", str(tmp_path / "r3")],
         "non-finite loss or gradient at iteration"),
        ("train.py", ["--config", "shapes_gfl_r18.yaml", "data.dataset=foo"],
         "config key 'data.dataset' must be one of ['coco', 'lvis', 'shapes', 'shapes_lvis'], got 'foo'"),
        ("train.py", ["--config", "shapes_gfl_r18.yaml", "data.batch_size=0"],
         "config key 'data.batch_size' must be >= 1, got 0"),
    ]
    for script, args, named in cases:
        assert_one_error_line(*run_main_in_process(script, args), named)


def test_error_in_a_dataloader_worker_is_one_error_line(run_main_in_process, shapes_small, tmp_path):
    """An unreadable image found by a worker process: the worker's traceback is reduced to its message."""
    images = tmp_path / "images"
    images.mkdir()
    for image in read_json(shapes_small["train_ann"])["images"]:
        (images / image["file_name"]).write_bytes(b"not a png")
    args = ["--config", "shapes_gfl_r18.yaml", *data_overrides(shapes_small), *TINY, f"data.train_images={images}",
            "data.workers=1", "--work-dir", str(tmp_path / "run")]
    returncode, stderr = run_main_in_process("train.py", args)
    assert_one_error_line(returncode, stderr, f"{images}/")
    assert re.search(r"\.png: unreadable image \(image \d+\): cannot identify image file", stderr), stderr
