"""Checkpoints: written atomically (temp file + rename), loaded with weights_only=True.

A checkpoint is a dict: 'model', 'criterion' (EFL statistics), 'optimizer' (None in weights-only epoch
checkpoints), 'epoch' (completed), 'iteration', 'epoch_step' (steps done in the epoch after 'epoch'),
'config' (the resolved config as a dict) and 'classes' ({'cat_ids': [...], 'class_names': [...]},
label i <-> dataset category cat_ids[i]).
"""
import os

import torch

from .errors import UserError

REQUIRED_KEYS = ("model", "config")
RESUME_KEYS = ("model", "criterion", "optimizer", "epoch", "iteration", "config")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing or unusable; the message names the file."""


def save_checkpoint(path, model, criterion, optimizer, epoch, iteration, config_dict, classes, epoch_step=0):
    """Everything needed to resume and to evaluate: weights, criterion buffers, optimizer (None: weights
    only), position (epochs completed, global iteration, steps done in the next epoch), config, and the
    category ids / names the labels stand for."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    state = {"model": model.state_dict(), "criterion": criterion.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "epoch": epoch, "iteration": iteration, "epoch_step": epoch_step, "config": config_dict,
             "classes": classes}
    temporary = f"{path}.tmp.{os.getpid()}"
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path, required=REQUIRED_KEYS):
    """The checkpoint dict; a missing, unreadable or foreign file (lacking `required` keys) is a CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be loaded as a focaldet checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a focaldet checkpoint dict")
    missing = [key for key in required if checkpoint.get(key) is None]
    if missing:
        raise CheckpointError(f"{path}: not a focaldet checkpoint, or not one to resume from: lacks {missing} "
                              f"(has {sorted(checkpoint)[:8]})")
    return checkpoint


def load_state(module, state, path, what="model"):
    """module.load_state_dict(state) with a one-line CheckpointError when the architectures differ."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
        raise CheckpointError(f"{path}: {what} weights do not fit this config ({detail[:300]}); "
                              f"evaluate with the config the checkpoint was trained with") from None
