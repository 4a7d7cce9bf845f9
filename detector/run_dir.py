"""The run directory (<work_dir>): checked before anything is written to it, and what a run records there.

    check_config(cfg)                       # registry names, loss names and combinations, weight paths
    checkpoint = check_resume(path, cfg)    # the file to resume from is a resumable checkpoint of this model
    check_run_dir(work_dir, cfg)            # refuse a directory that holds another config's run
    write_run_info(work_dir, info)          # run_info.json: precision and why, device, CPU, torch version

train.py calls the first three before it creates the directory or reads a dataset, so a typo in an
override or a missing file stops with one line and leaves an existing run directory byte-identical.
"""
import json
import os

import yaml

from .checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint
from .config import ConfigError, choose, config_from_dict, config_to_dict

# What makes two configs "the same run": the config name, the model (but the initial weights' source and the
# test-time thresholds) and the dataset (which set, which files). Everything else may change between a run
# and its resumption: more epochs, another lr, a smaller batch after running out of memory, the test size.
IDENTITY_KEYS = ("name", "model.", "data.dataset", "data.train_images", "data.train_ann", "data.val_images",
                 "data.val_ann", "data.shapes_")
IGNORED_KEYS = ("model.backbone.pretrained", "model.test.")


def check_config(cfg):
    """Everything about the model and optimisation in `cfg` that can be checked without building the model or
    reading data (data.build.check_data_config checks the data section); a problem is a one-line error."""
    from . import build_criterion
    from .engine import OPTIMIZERS

    build_criterion(cfg.model, num_classes=1)  # registry names, loss names, parameters, head/loss combination
    choose(OPTIMIZERS, cfg.optim.type, "optim.type")
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


def _identity(config_dict, prefix):
    flat = _flatten(config_dict)
    return {key: value for key, value in flat.items() if key.startswith(IDENTITY_KEYS) and key.startswith(prefix)
            and not key.startswith(IGNORED_KEYS)}


def first_difference(old_dict, new_dict, prefix=""):
    """'key: old -> new' for the first identity key (under `prefix`) that differs between two config dicts."""
    old, new = _identity(old_dict, prefix), _identity(new_dict, prefix)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
    return None


def _normalised(config_dict, path):
    """A saved config as today's code reads it (defaults filled in, types coerced), as a dict."""
    if not isinstance(config_dict, dict):
        raise ConfigError(f"{path}: holds no config mapping")
    try:
        return config_to_dict(config_from_dict(config_dict))
    except ConfigError as error:
        raise ConfigError(f"{path}: its config no longer loads ({error})") from None


def check_resume(path, cfg):
    """Load the checkpoint to resume from; a missing, weights-only or other-model file is a CheckpointError."""
    checkpoint = load_checkpoint(path, required=[key for key in RESUME_KEYS if key != "optimizer"])
    if checkpoint.get("optimizer") is None:
        raise CheckpointError(f"{path}: holds weights only (epoch checkpoints keep no optimizer state unless "
                              f"train.save_optimizer=all); resume from checkpoints/last.pth")
    difference = first_difference(_normalised(checkpoint["config"], path), config_to_dict(cfg), prefix="model.")
    if difference is not None:
        raise CheckpointError(f"{path}: trained with another model ({difference}); resume with its config")
    return checkpoint


def check_run_dir(work_dir, cfg):
    """Refuse `work_dir` if its config.yaml is another config's run (name, model or data differ)."""
    path = os.path.join(work_dir, "config.yaml")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            previous = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: unreadable ({str(error).splitlines()[0]}); delete {work_dir} or pass "
                          f"--work-dir DIR") from None
    difference = first_difference(_normalised(previous, path), config_to_dict(cfg))
    if difference is not None:
        raise ConfigError(f"{work_dir} holds a run of another config ({difference}); pass --work-dir DIR "
                          f"for a new run directory, or delete {work_dir}")


def write_run_info(work_dir, info):
    """<work_dir>/run_info.json: how this run was executed (precision, device, CPU); not part of checkpoints."""
    with open(os.path.join(work_dir, "run_info.json"), "w") as f:
        json.dump(info, f, indent=1)
