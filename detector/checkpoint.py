"""Checkpoints: written atomically (temp file + rename), loaded with weights_only=True."""
import os

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or unusable; the message names the file."""


def save_checkpoint(path, model, criterion, optimizer, epoch, iteration, config_dict):
    """Everything needed to resume: weights, criterion buffers (EFL statistics), optimizer, position, config."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    state = {"model": model.state_dict(), "criterion": criterion.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "epoch": epoch, "iteration": iteration, "config": config_dict}
    temporary = f"{path}.tmp.{os.getpid()}"
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_checkpoint(path):
    """The checkpoint dict; a missing or unreadable file is a one-line CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be loaded as a focaldet checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from None
