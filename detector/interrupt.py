"""Ctrl-C and SIGTERM during training: finish the current step, save a checkpoint, say how to resume.

    with StopOnSignal(device) as stop:
        ... train_one_epoch(..., stop=stop.requested) ...
        if stop.signal_name: save last.pth, print the resume command, exit 128 + signal number

The first SIGINT / SIGTERM only sets a flag (one log line); training checks it after every step. Under
torchrun every rank gets the signal, but not necessarily before the same step, so with several
processes the flag is combined over ranks (an all-reduce of one number per step) and all of them stop
after the same iteration; rank 0 saves and the others wait for it at a barrier before anyone exits
(torchrun stops every rank as soon as one exits). A second Ctrl-C (a second after the first) exits at
once, without a checkpoint; repeated SIGTERMs are ignored (torchrun forwards the cluster's).
"""
import logging
import os
import signal
import time

import torch
import torch.distributed

from . import dist

logger = logging.getLogger("focaldet")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    def __init__(self, device):
        self.device = device
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None:
            # A second Ctrl-C is the user insisting. Repeated SIGTERMs are not: a cluster (Slurm's scancel)
            # signals every process and torchrun forwards its own copy a moment later.
            if signum == signal.SIGINT and time.monotonic() - self.first_signal_time > 1.0:
                logger.warning("SIGINT again: exiting without a checkpoint")
                os._exit(128 + signum)
            return
        self.signum = signum
        self.first_signal_time = time.monotonic()
        if dist.is_main_process():
            logger.warning(f"{signal.Signals(signum).name}: stopping after this iteration and saving a checkpoint "
                           f"(press Ctrl-C again to quit at once)")

    @property
    def signal_name(self):
        return signal.Signals(self.signum).name if self.signum is not None else None

    def requested(self):
        """True once any rank has been signalled (the same answer on every rank)."""
        if not dist.is_dist():
            return self.signum is not None
        flag = torch.tensor([0 if self.signum is None else self.signum], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())
