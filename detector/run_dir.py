"""The run directory (<work_dir>): checked before anything is written to it, and what a run records there.

    check_config(cfg)                       # registry names, loss names and combinations, weight paths
    check_run_dir(work_dir, cfg)            # refuse a directory that holds another config's run
    write_run_info(work_dir, info)          # run_info.json: precision and why, device, CPU, torch version

train.py calls the first two (and detector/resume.py's check_resume) before it creates the directory or reads a
dataset, so a typo in an override or a missing file stops with one line and leaves an existing run directory
byte-identical.
"""
import json
import os

import yaml

from .config import ConfigError, choose, config_from_dict, config_to_dict

# What makes two configs "the same run": the config name, the model (but the initial weights' source and the
# test-time thresholds) and the dataset (which set, which files). Everything else may differ between runs in one
# directory (another lr, batch or schedule started afresh); resuming a checkpoint is stricter: detector/resume.py.
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


def flatten(data, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1} ('params' mappings stay values)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "params":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _identity(config_dict, prefix):
    flat = flatten(config_dict)
    return {key: value for key, value in flat.items() if key.startswith(IDENTITY_KEYS) and key.startswith(prefix)
            and not key.startswith(IGNORED_KEYS)}


def first_difference(old_dict, new_dict, prefix=""):
    """'key: old -> new' for the first identity key (under `prefix`) that differs between two config dicts."""
    old, new = _identity(old_dict, prefix), _identity(new_dict, prefix)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
    return None


def normalised(config_dict, path):
    """A saved config as today's code reads it (defaults filled in, types coerced), as a dict."""
    if not isinstance(config_dict, dict):
        raise ConfigError(f"{path}: holds no config mapping")
    try:
        return config_to_dict(config_from_dict(config_dict))
    except ConfigError as error:
        raise ConfigError(f"{path}: its config no longer loads ({error})") from None


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
    difference = first_difference(normalised(previous, path), config_to_dict(cfg))
    if difference is not None:
        raise ConfigError(f"{work_dir} holds a run of another config ({difference}); pass --work-dir DIR "
                          f"for a new run directory, or delete {work_dir}")


def write_run_info(work_dir, info):
    """<work_dir>/run_info.json: how this run was executed (precision, device, CPU); not part of checkpoints."""
    with open(os.path.join(work_dir, "run_info.json"), "w") as f:
        json.dump(info, f, indent=1)
