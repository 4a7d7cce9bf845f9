"""The run directory (<work_dir>): checked before anything is written to it, and what a run records there.

    check_config(cfg)                       # loss names and combinations, data / weight paths (no I/O of data)
    checkpoint = check_resume(path, cfg)    # the file to resume from is a resumable checkpoint of this model
    check_run_dir(work_dir, cfg)            # refuse a directory that holds another config's run
    write_run_info(work_dir, info)          # run_info.json: precision and why, device, CPU, torch version

train.py calls the first three before it creates the directory or reads a dataset, so a typo in an
override or a missing file stops with one line and leaves an existing run directory byte-identical.
"""
import json
import os

import yaml

from data.coco import DatasetError

from .checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint
from .config import ConfigError, config_to_dict

# Sections whose values define "the same run": a run directory whose config.yaml differs from the new
# config in one of these holds another config's run. optim.* and train.* may change on resume (more epochs,
# another lr); data.workers only changes speed.
IDENTITY_SECTIONS = ("name", "model", "data")
IGNORED_KEYS = ("data.workers", "model.backbone.pretrained")


def check_config(cfg):
    """Everything about `cfg` that can be checked without reading a dataset; a problem is a one-line error."""
    from . import build_criterion

    build_criterion(cfg.model, num_classes=1)  # loss names, their parameters and the head/loss combination
    if cfg.data.dataset == "coco":
        for key in ("train_ann", "val_ann"):
            path = getattr(cfg.data, key)
            if not os.path.isfile(path):
                raise DatasetError(f"{path}: annotation file not found (data.{key})")
        for key in ("train_images", "val_images"):
            path = getattr(cfg.data, key)
            if not os.path.isdir(path):
                raise DatasetError(f"{path}: image directory not found (data.{key})")
    pretrained = cfg.model.backbone.pretrained
    if pretrained not in (None, "torchvision") and not os.path.isfile(pretrained):
        raise ConfigError(f"model.backbone.pretrained: weights file not found: {pretrained} "
                          f"(use 'torchvision', null or a local .pth path)")


def _flatten(data, prefix=""):
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "params":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _identity(config_dict):
    flat = _flatten({key: config_dict.get(key) for key in IDENTITY_SECTIONS})
    return {key: value for key, value in flat.items() if key not in IGNORED_KEYS}


def first_difference(old_dict, new_dict):
    """'key: old -> new' for the first identity key that differs between two config dicts, else None."""
    old, new = _identity(old_dict), _identity(new_dict)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
    return None


def check_resume(path, cfg):
    """Load the checkpoint to resume from; a missing, weights-only or other-model file is a CheckpointError."""
    checkpoint = load_checkpoint(path, required=[key for key in RESUME_KEYS if key != "optimizer"])
    if checkpoint.get("optimizer") is None:
        raise CheckpointError(f"{path}: holds weights only (epoch checkpoints keep no optimizer state unless "
                              f"train.save_optimizer=all); resume from checkpoints/last.pth")
    difference = first_difference(checkpoint["config"], config_to_dict(cfg))
    if difference is not None and difference.split(":")[0].startswith("model."):
        raise CheckpointError(f"{path}: trained with another model ({difference}); resume with its config")
    return checkpoint


def check_run_dir(work_dir, cfg):
    """Refuse `work_dir` if its config.yaml is another config's run (name, model or data differ)."""
    path = os.path.join(work_dir, "config.yaml")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        previous = yaml.safe_load(f) or {}
    difference = first_difference(previous, config_to_dict(cfg))
    if difference is not None:
        raise ConfigError(f"{work_dir} holds a run of another config ({difference}); pass --work-dir DIR "
                          f"for a new run directory, or delete {work_dir}")


def write_run_info(work_dir, info):
    """<work_dir>/run_info.json: how this run was executed (precision, device, CPU); not part of checkpoints."""
    with open(os.path.join(work_dir, "run_info.json"), "w") as f:
        json.dump(info, f, indent=1)
