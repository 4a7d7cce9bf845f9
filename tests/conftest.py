"""Shared pytest fixtures: a small generated shapes dataset and the shared real datasets."""
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
