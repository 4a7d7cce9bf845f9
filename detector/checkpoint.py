"""Checkpoint files: written atomically and durably, loaded with weights_only=True, the newest N kept.

    save_checkpoint(path, state)            # temp file in the same folder, fsync, rename over `path`, fsync folder
    checkpoint = load_checkpoint(path)      # one-line CheckpointError for a missing, truncated or foreign file
    directory = CheckpointDirectory(work_dir + "/checkpoints", keep=3)
    directory.save(state)                   # iter_<N>.pth, last.pth -> it, the oldest beyond `keep` removed

A checkpoint is a dict of tensors and plain Python data only (torch.load with weights_only=True refuses a pickle
that would build any other object, so a file cannot run code when loaded):
    'model'            the weights to evaluate and deploy: the EMA of the weights with train.ema, else the weights
    'training_model'   the weights the optimizer updates, only with train.ema (None otherwise)
    'criterion'        criterion buffers (EFL gradient statistics)
    'optimizer', 'grad_scaler'   their state dicts (None in the weights-only epoch_N.pth)
    'ema_updates'      EMA updates so far (its decay warm-up), None without EMA
    'epoch', 'epoch_step', 'iteration'   epochs completed, optimizer steps done in the next one, steps in all
    'nonfinite_skips'  steps skipped in a row for a non-finite loss or gradient (train.on_nonfinite=skip)
    'world_size', 'rng'   processes, and each rank's RNG states (detector/rng.py), rank order
    'config', 'classes'   the resolved config (a dict), {'cat_ids': [...], 'class_names': [...]}
The sampler position is (epoch, epoch_step x train.accumulate batches): its order is a function of the seed
and the epoch alone, and each image's augmentation of (seed, epoch, position) (data/sample_seeds.py).
"""
import os
import re

import torch

from .errors import UserError

REQUIRED_KEYS = ("model", "config")
RESUME_KEYS = ("model", "criterion", "optimizer", "epoch", "iteration", "config")
PERIODIC_NAME = re.compile(r"^iter_(\d+)\.pth$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing or unusable; the message names the file."""


def _fsync_directory(directory):
    """Make a rename in `directory` durable (a crash after it cannot bring the old name back)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) do not open folders: the rename is all they offer
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def save_checkpoint(path, state):
    """Write `state` to `path` atomically: a temporary file in the same folder, flushed and fsynced, then renamed
    over `path`. A crash or kill at any moment leaves either the previous file or the new one, never a mixture;
    an error while writing (disk full) removes the temporary file and leaves the previous `path` as it was."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp.{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def load_checkpoint(path, required=REQUIRED_KEYS):
    """The checkpoint dict; a missing, unreadable, truncated or foreign file (lacking `required` keys), or one
    holding pickled objects other than tensors and plain data, is a one-line CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        message = str(error)
        culprit = re.search(r"GLOBAL ([\w.]+)", message)
        if "Weights only load failed" in message and culprit:  # a pickle that names a class or function to call
            raise CheckpointError(f"{path}: refused: it holds pickled Python objects, not only tensors and plain "
                                  f"data ({culprit.group(1)}); loading it could run code") from None
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [line.strip() for line in message.splitlines() if line.strip() and not line.startswith(boilerplate)]
        raise CheckpointError(f"{path}: cannot be loaded as a focaldet checkpoint, truncated or not a torch file "
                              f"({type(error).__name__}: {lines[0][:200] if lines else ''})") from None
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


class CheckpointDirectory:
    """<work_dir>/checkpoints: resumable iter_<N>.pth files (the newest `keep`), last.pth (the newest of them, a
    hard link, so no second write) and weights-only epoch_<N>.pth files (never removed)."""

    def __init__(self, directory, keep):
        self.directory, self.keep = directory, int(keep)
        self.last = os.path.join(directory, "last.pth")

    def path(self, name):
        return os.path.join(self.directory, name)

    def remove_temporary_files(self):
        """Temporary files of a run that was killed while writing (never a complete checkpoint)."""
        if os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if ".pth.tmp." in name:
                    os.remove(self.path(name))

    def save(self, state):
        """Write the resumable `state` as iter_<iteration>.pth, point last.pth at it, remove the oldest iter files."""
        path = self.path(f"iter_{state['iteration']:08d}.pth")
        save_checkpoint(path, state)
        self._link_last(path)
        periodic = sorted(name for name in os.listdir(self.directory) if PERIODIC_NAME.match(name))
        for name in periodic[:-self.keep]:
            os.remove(self.path(name))
        return path

    def _link_last(self, path):
        temporary = f"{self.last}.tmp.{os.getpid()}"
        if os.path.lexists(temporary):
            os.remove(temporary)
        try:
            os.link(path, temporary)
        except OSError:  # a filesystem without hard links: a second, equally atomic, write
            save_checkpoint(self.last, torch.load(path, map_location="cpu", weights_only=True))
            return
        os.replace(temporary, self.last)
        _fsync_directory(self.directory)

    def latest(self):
        """The checkpoint --resume auto continues: last.pth, else the newest iter_<N>.pth, else None."""
        if os.path.isfile(self.last):
            return self.last
        periodic = sorted(name for name in os.listdir(self.directory) if PERIODIC_NAME.match(name)) \
            if os.path.isdir(self.directory) else []
        return self.path(periodic[-1]) if periodic else None
