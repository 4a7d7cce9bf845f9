"""Shared pytest fixtures: a small generated shapes dataset and the shared real datasets."""
import logging
import os
import sys

import pytest
import torch

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPOSITORY not in sys.path:  # so that a bare `pytest` finds the packages, not only `python -m`
    sys.path.insert(0, REPOSITORY)
if "OMP_NUM_THREADS" not in os.environ:
    # The tests use tiny tensors: one intra-op thread is as fast, and on a busy 2-core machine a second one
    # spins and thrashes (tests/test_criterion.py: 18 s with two threads, 3 s with one).
    torch.set_num_threads(1)


def missing_shared_data(message):
    """Skip a test whose ../shared data is absent; under CI (CI=true, where ../shared is always laid beside
    the clone) fail instead, so that a green CI run never hides unrun golden or real-data checks."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: ../shared must be there)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shapes_small(tmp_path_factory):
    """Paths dict of a 24-train / 12-val shapes dataset (see data.synthetic.ensure_shapes_dataset)."""
    from data.synthetic import ensure_shapes_dataset
    return ensure_shapes_dataset(str(tmp_path_factory.mktemp("shapes_small")), num_train=24,
                                 num_val=12, seed=0)


@pytest.fixture(scope="session")
def golden_dir():
    """Folder of the golden reference vectors and check_golden.py: $FOCALDET_GOLDEN or <repo>/../shared/golden."""
    root = os.environ.get("FOCALDET_GOLDEN", os.path.join(REPOSITORY, "..", "shared", "golden"))
    if not os.path.isfile(os.path.join(root, "check_golden.py")):
        missing_shared_data(f"golden vectors not found at {root} (set FOCALDET_GOLDEN)")
    return os.path.abspath(root)


@pytest.fixture(scope="session")
def shared_datasets():
    """Folder holding coco128/ and raccoon/: $FOCALDET_SHARED_DATASETS or <repo>/../shared/datasets."""
    root = os.environ.get("FOCALDET_SHARED_DATASETS",
                          os.path.join(REPOSITORY, "..", "shared", "datasets"))
    if not os.path.isdir(root):
        missing_shared_data(f"shared datasets not found at {root} (set FOCALDET_SHARED_DATASETS)")
    return os.path.abspath(root)


@pytest.fixture(scope="session")
def shared_split(shared_datasets):
    """Function (name, split) -> (image_dir, ann_file) of a shared dataset; skips when absent."""
    def locate(name, split):
        image_dir = os.path.join(shared_datasets, name, "images")
        ann_file = os.path.join(shared_datasets, name, "annotations", f"instances_{split}.json")
        if not os.path.isfile(ann_file):
            missing_shared_data(f"{ann_file} not found")
        return image_dir, ann_file
    return locate


@pytest.fixture(scope="session")
def trained(shapes_small, tmp_path_factory):
    """One 4-iteration training run: (work dir, overrides, completed process). Tests must not change it."""
    from cli_tools import TINY, check_ok, data_overrides, run_tool
    work_dir = str(tmp_path_factory.mktemp("run") / "gfl")
    overrides = data_overrides(shapes_small) + TINY
    result = check_ok(run_tool(["train.py", "--config", "shapes_gfl_r18.yaml", *overrides, "train.epochs=1",
                                "train.max_iters=4", "--work-dir", work_dir]))
    return work_dir, overrides, result


@pytest.fixture
def run_main_in_process(monkeypatch, capsys):
    """Run train.py's or eval.py's main under run_cli in this process (no torch import per case):
    returns (exit code, stderr). Logging handlers that train.py adds to the root logger are removed."""
    import eval as eval_tool
    import train as train_tool
    from detector.errors import run_cli
    monkeypatch.delenv("FOCALDET_DEBUG", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(script, args):
        monkeypatch.setattr(sys, "argv", [script] + args)
        capsys.readouterr()
        try:
            with pytest.raises(SystemExit) as exit_info:
                run_cli({"train.py": train_tool, "eval.py": eval_tool}[script].main)
        finally:
            for handler in set(root.handlers) - set(handlers):
                root.removeHandler(handler)
                handler.close()
            root.setLevel(level)
        return exit_info.value.code, capsys.readouterr().err
    return run
