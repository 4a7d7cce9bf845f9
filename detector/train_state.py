"""Everything a training run is made of besides its config and data, in one object that saves and restores it.

    state = TrainState(model, criterion, optimizer, scaler, ema, guard, config_dict, classes, world_size)
    state.restore(checkpoint, path, rank, position)  # weights, optimizer, scaler, EMA, position, this rank's RNG
    state.save(directory)                            # every rank calls it: RNG states gather on rank 0, which writes
    state.save_weights(path)                         # epoch_N.pth: the evaluated weights, no optimizer

The position is (epoch: epochs completed, epoch_step: optimizer steps done in the next epoch, iteration: steps in
all); detector/checkpoint.py lists the keys of a checkpoint.
"""
from . import dist
from .checkpoint import CheckpointError, load_state, save_checkpoint
from .rng import rng_state, set_rng_state


class TrainState:
    def __init__(self, model, criterion, optimizer, scaler, ema, guard, config_dict, classes, world_size):
        self.model = model                # the bare module (never the DDP wrapper): its state_dict has no prefix
        self.criterion, self.optimizer, self.scaler, self.ema, self.guard = criterion, optimizer, scaler, ema, guard
        self.config_dict, self.classes, self.world_size = config_dict, classes, world_size
        self.epoch = self.epoch_step = self.iteration = 0
        self.saved_iteration = None       # iteration of the newest resumable checkpoint this process wrote
        self.last_losses = {}             # this rank's criterion outputs of the last step (engine.train_steps)

    def evaluated_model(self):
        """The weights that are evaluated, saved as 'model' and deployed: the EMA with train.ema."""
        return self.ema.model if self.ema is not None else self.model

    def weights(self):
        """The part of a checkpoint that evaluation needs."""
        return {"model": self.evaluated_model().state_dict(), "epoch": self.epoch, "iteration": self.iteration,
                "epoch_step": self.epoch_step, "config": self.config_dict, "classes": self.classes}

    def resumable(self, rng_states):
        """The whole checkpoint: weights, optimizer, scaler, EMA, criterion buffers, position, every rank's RNG."""
        return {**self.weights(), "training_model": self.model.state_dict() if self.ema is not None else None,
                "criterion": self.criterion.state_dict(), "optimizer": self.optimizer.state_dict(),
                "grad_scaler": self.scaler.state_dict(), "ema_updates": self.ema.updates if self.ema else None,
                "nonfinite_skips": self.guard.skipped_in_a_row, "world_size": self.world_size, "rng": rng_states}

    def save(self, directory):
        """Collective: every rank's RNG states reach rank 0, which writes iter_<N>.pth and last.pth (once per
        iteration: a save at an epoch's end right after the periodic one is not written twice)."""
        if self.saved_iteration == self.iteration:
            return
        rng_states = dist.all_gather_objects(rng_state())
        if dist.is_main_process():
            directory.save(self.resumable(rng_states))
        self.saved_iteration = self.iteration

    def save_weights(self, path, with_optimizer=False):
        """epoch_N.pth (rank 0): the evaluated weights; with_optimizer (train.save_optimizer=all) a resumable
        checkpoint without RNG states."""
        save_checkpoint(path, self.resumable([]) if with_optimizer else
                        {**self.weights(), "optimizer": None, "criterion": self.criterion.state_dict()})

    def restore(self, checkpoint, path, rank, position):
        """Load a resumable checkpoint (detector/resume.py has checked it) and continue at `position`
        (epoch, epoch_step, iteration: detector.resume.continued_position)."""
        with_ema = checkpoint.get("training_model") is not None
        if with_ema != (self.ema is not None):
            raise CheckpointError(f"{path}: saved with train.ema={str(with_ema).lower()}; resume with the same "
                                  f"(or start a new run from its weights)")
        load_state(self.model, checkpoint["training_model"] if with_ema else checkpoint["model"], path)
        if self.ema is not None:
            load_state(self.ema.model, checkpoint["model"], path, "EMA")
            self.ema.updates = checkpoint["ema_updates"]
        load_state(self.criterion, checkpoint["criterion"], path, "criterion")
        load_state(self.optimizer, checkpoint["optimizer"], path, "optimizer")
        if checkpoint.get("grad_scaler"):
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
        self.guard.skipped_in_a_row = checkpoint.get("nonfinite_skips") or 0
        self.epoch, self.epoch_step, self.iteration = position
        self.saved_iteration = self.iteration
        rng_states = checkpoint.get("rng") or []
        if rank < len(rng_states):  # this rank's own streams (a rank the saved run did not have starts from its seed)
            set_rng_state(rng_states[rank])
