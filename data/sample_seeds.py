"""Augmentation draws that are a function of (seed, epoch, position), not of which worker ran when.

DataLoader seeds each worker once from the main process and the worker's generator then runs on from image to
image, so an image's flip and scale depend on how many images that worker happened to draw before it: a run
resumed mid-epoch (fresh workers) would draw other augmentations than the run it continues. Here the batch
sampler hands every dataset index out with its own seed,

    seed(i) = SeedSequence([seed, epoch, global batch number, slot in the batch])

(global batch number = position in this rank's batches x world size + rank, the order they are dealt in), and the
dataset seeds torch's generator with it for that image alone (CocoDetection.__getitem__ takes (index, seed)).
Which worker, how many workers, and whether the run was resumed, then change nothing.
"""
import numpy as np
import torch


def sample_seed(seed, epoch, global_batch, slot):
    """A 63-bit seed for one image: NumPy's SeedSequence mixes the four numbers (no collisions in practice)."""
    return int(np.random.SeedSequence([seed, epoch, global_batch, slot]).generate_state(2, np.uint64)[0] >> 1)


class SeededBatchSampler(torch.utils.data.Sampler):
    """Wrap a batch sampler with set_epoch(epoch, start_batch), num_replicas and rank (data/samplers.py): its
    batches of indices become batches of (index, seed) pairs, seeds from sample_seed()."""

    def __init__(self, batch_sampler, seed):
        self.batch_sampler, self.seed = batch_sampler, int(seed)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch, start_batch=0):
        self.batch_sampler.set_epoch(epoch, start_batch=start_batch)
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self):
        world, rank = self.batch_sampler.num_replicas, self.batch_sampler.rank
        for position, batch in enumerate(self.batch_sampler, start=self.start_batch):
            global_batch = position * world + rank
            yield [(index, sample_seed(self.seed, self.epoch, global_batch, slot)) for slot, index in enumerate(batch)]

    def __len__(self):
        return len(self.batch_sampler)

    def __getattr__(self, name):  # num_replicas, rank, batch_size, ... of the wrapped sampler
        if name == "batch_sampler":
            raise AttributeError(name)
        return getattr(self.batch_sampler, name)
