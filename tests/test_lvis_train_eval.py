"""End to end on the embedded LVIS-format set: train.py with EFL and repeat-factor sampling logs the class statistics
and saves the EFL statistics; eval.py on the checkpoint prints LVISEval's APr / APc / APf and writes metrics.json."""
import os

import pytest
import torch
from cli_tools import TINY, check_ok, read_json, run_tool

from data.synthetic_lvis import ensure_shapes_lvis_dataset


@pytest.fixture(scope="module")
def lvis_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes_lvis"))
    ensure_shapes_lvis_dataset(root, num_train=40, num_val=12)
    overrides = [f"data.shapes_lvis_root={root}", "data.shapes_num_train=40", "data.shapes_num_val=12", *TINY,
                 "model.test.score_thr=0.0001", "data.repeat_threshold=0.3"]
    work_dir = str(tmp_path_factory.mktemp("run") / "efl")
    result = check_ok(run_tool(["train.py", "--config", "shapes_lvis_retinanet_r18.yaml", *overrides,
                                "train.epochs=1", "train.max_iters=3", "--work-dir", work_dir]))
    return work_dir, overrides, result


def test_training_logs_class_statistics_and_keeps_the_efl_statistics(lvis_run):
    work_dir, _, result = lvis_run
    assert "train classes by images containing them" in result.stdout
    assert "repeat-factor sampling (t = 0.3)" in result.stdout and "batches over all ranks" in result.stdout
    checkpoint = torch.load(os.path.join(work_dir, "checkpoints", "last.pth"), map_location="cpu", weights_only=True)
    statistics = checkpoint["criterion"]
    assert statistics["efl_pos_grad"].shape == (30,) and statistics["efl_neg_grad"].sum() > 0
    assert (statistics["efl_pos_neg"] < 1).any()          # three steps moved g_j away from its start at 1
    metrics = read_json(os.path.join(work_dir, "metrics.json"))["final"]
    assert {"APr", "APc", "APf", "per_frequency"} <= set(metrics)


def test_eval_prints_apr_apc_apf_and_writes_metrics(lvis_run, tmp_path):
    work_dir, overrides, _ = lvis_run
    result = check_ok(run_tool(["eval.py", "--checkpoint", os.path.join(work_dir, "checkpoints", "last.pth"),
                                "--out-dir", str(tmp_path), *overrides]))
    for group in ("r", "c", "f"):
        assert f"catIds=  {group}]" in result.stdout            # LVISEval's APr, APc, APf lines
    assert "rare categories" in result.stdout
    metrics = read_json(os.path.join(tmp_path, "metrics.json"))
    assert {"AP", "APr", "APc", "APf", "per_class"} <= set(metrics)
    assert os.path.isfile(os.path.join(tmp_path, "detections.json"))
