"""What a run resumes, whether it may, and where it continues.

    path, note = find_resume(args.resume, directory)       # 'auto': last.pth, else the newest iter_N.pth, else None
    checkpoint, changes = check_resume(path, cfg, world_size, override=args.resume_override)

train.py runs both on rank 0 alone (its filesystem holds the run; other nodes may not share it) and broadcasts
the answer, the checkpoint with it (dist.run_on_main_process).

A resumed run continues the one it resumes exactly (same batches, augmentation draws, learning rates and
updates) only if nothing that decides them changed: the trajectory keys below and the number of processes. A
change is a one-line CheckpointError naming the first one, unless --resume-override says it is meant (more
epochs of a cosine schedule, a smaller batch after running out of memory): then the run continues from the same
weights, optimizer state and epoch, at the same share of the epoch's images, and says what changed.
"""
import os

from .checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint
from .config import config_to_dict
from .run_dir import IGNORED_KEYS, flatten, normalised

# Config keys that decide the trajectory: the model and losses, the training data and its augmentation, the
# batch, the optimizer and its schedule, the seed (image order, augmentation), accumulation, EMA and SyncBN.
TRAJECTORY_KEYS = ("model.", "data.dataset", "data.train_", "data.shapes_", "data.short_side_mode", "data.max_size",
                   "data.flip_prob", "data.remove_images_without_annotations", "data.batch_size", "data.size_divisor",
                   "optim.", "train.seed", "train.accumulate", "train.ema", "train.sync_bn")


def trajectory(config_dict, world_size):
    """{key: value} of what decides the trajectory; train.epochs too under a cosine schedule (its length)."""
    flat = flatten(config_dict)
    keys = {key: value for key, value in flat.items() if key.startswith(TRAJECTORY_KEYS)
            and not key.startswith(IGNORED_KEYS)}
    if flat.get("optim.schedule") == "cosine":
        keys["train.epochs"] = flat.get("train.epochs")
    keys["processes (world size)"] = world_size
    return keys


def trajectory_changes(saved_config, saved_world_size, config_dict, world_size):
    """['key: old -> new', ...] for every trajectory key that differs."""
    old, new = trajectory(saved_config, saved_world_size), trajectory(config_dict, world_size)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def images_per_step(config_dict, world_size):
    """Images per optimizer step: batch size x processes x accumulation."""
    return config_dict["data"]["batch_size"] * world_size * config_dict["train"].get("accumulate", 1)


def find_resume(resume, directory):
    """(path or None, log note): `resume` as given, or for 'auto' the newest checkpoint in `directory`."""
    if resume != "auto":
        return resume, None
    path = directory.latest()
    if path is None:
        return None, f"--resume auto: no {directory.last}, starting fresh"
    return path, f"--resume auto: found {path}"


def check_resume(path, cfg, world_size, override=False):
    """Load the checkpoint to resume from: (checkpoint, trajectory changes accepted by `override`).

    A missing, truncated, foreign, weights-only or other-model file, or a changed trajectory without `override`,
    is a CheckpointError naming the file.
    """
    try:
        checkpoint = load_checkpoint(path, required=[key for key in RESUME_KEYS if key != "optimizer"])
    except CheckpointError as error:
        folder = os.path.dirname(path) or "."
        others = sorted(name for name in os.listdir(folder) if name.startswith("iter_")  # not last.pth's own file
                        and not os.path.samefile(os.path.join(folder, name), path)) if os.path.isfile(path) else []
        hint = f"; earlier checkpoints there: {', '.join(others[-3:])} (pass one to --resume)" if others else ""
        raise CheckpointError(f"{error}{hint}") from None
    if checkpoint.get("optimizer") is None:
        raise CheckpointError(f"{path}: holds weights only (epoch checkpoints keep no optimizer state unless "
                              f"train.save_optimizer=all); resume from checkpoints/last.pth")
    saved = normalised(checkpoint["config"], path)
    changes = trajectory_changes(saved, checkpoint.get("world_size", 1), config_to_dict(cfg), world_size)
    if changes and not override:
        model_changes = [change for change in changes if change.startswith("model.")]
        if model_changes:
            raise CheckpointError(f"{path}: trained with another model ({model_changes[0]}); resume with its config")
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise CheckpointError(f"{path}: resuming with {changes[0]}{more} would not continue the run it saved (batches, "
                              f"learning rates or updates change); resume with its config, or pass --resume-override "
                              f"if the change is meant")
    return checkpoint, changes


def continued_position(checkpoint, config_dict, world_size, iters_per_epoch):
    """(epoch, epoch_step, iteration) where the resumed run starts.

    The saved position when the images per step are unchanged; otherwise (--resume-override of the batch size,
    processes or accumulation) the same epoch, at the step that has seen the same share of its images.
    """
    epoch, epoch_step, iteration = checkpoint["epoch"], checkpoint.get("epoch_step", 0), checkpoint["iteration"]
    saved = images_per_step(checkpoint["config"], checkpoint.get("world_size", 1))
    now = images_per_step(config_dict, world_size)
    if saved == now:
        return epoch, epoch_step, iteration
    epoch_step = min(epoch_step * saved // now, iters_per_epoch)
    return epoch, epoch_step, epoch * iters_per_epoch + epoch_step
