"""Batch samplers: aspect-ratio grouped training batches sharded over ranks, and test shards.

Training (GroupedBatchSampler): each epoch, every rank draws the same permutation (seed + epoch),
walks it and fills one buffer per aspect group (0: portrait w < h, 1: landscape or square w >= h),
emitting a batch whenever a buffer holds batch_size indices, then the incomplete leftovers of each
group (smaller batches: nothing is dropped). The list of batches is then dealt to the ranks
round-robin (batch k goes to rank k % world_size). This is the aspect grouping of mmdetection and
detectron2 over a distributed sampler, but sharded by batch rather than by image, so that every rank
gets exactly the same number of batches (a rank with one extra step would hang DDP). When the batch
count is not a multiple of world_size, the first batches are dealt again to fill the last round
(at most world_size - 1 repeated batches per epoch), as DistributedSampler pads with repeats.

Repeat-factor sampling (data/repeat_factors.py): with repeat factors r_i, each epoch first draws how often every
item appears, floor(r_i) + 1 with probability r_i - floor(r_i) (stochastic rounding, from the same seed + epoch
generator on every rank, so deterministic under the seed), then permutes that multiset and groups it as above.
The epoch length stays fixed at its expected value (sum over each aspect group of ceil(round(sum of r_i) /
batch_size) batches), so the schedule and a mid-epoch resume see the same length every epoch: an epoch whose
rounding drew more batches drops the last of its random order, one that drew fewer deals its first again.
"""
import math

import torch
import torch.distributed as dist


def _world(distributed):
    """(num_replicas, rank) from torch.distributed when asked and initialised, else (1, 0)."""
    if not distributed:
        return 1, 0
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True but torch.distributed is not initialised")
    return dist.get_world_size(), dist.get_rank()


def aspect_group_ids(dataset):
    """Group id per item: 1 if width >= height else 0, from dataset.aspect_ratios() (w / h)."""
    return [1 if ratio >= 1.0 else 0 for ratio in dataset.aspect_ratios()]


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Yield this rank's batches (lists of dataset indices), each from a single aspect group.

    Args:
        group_ids: group id of every dataset item (list of ints).
        batch_size: images per batch on one rank.
        shuffle: new permutation every epoch (call set_epoch(epoch) before each epoch).
        seed: base seed; must be the same on every rank.
        num_replicas, rank: world size and this rank (default: single process).
        repeat_factors: optional repeat factor (>= 1) of every item: repeat-factor sampling (needs shuffle).
    """

    def __init__(self, group_ids, batch_size, shuffle=True, seed=0, num_replicas=1, rank=0, repeat_factors=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.group_ids = [int(group) for group in group_ids]
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.start_batch = 0
        self.repeat_factors = None
        if repeat_factors is not None:
            if len(repeat_factors) != len(self.group_ids) or min(repeat_factors, default=1.0) < 1:
                raise ValueError("repeat_factors needs one factor >= 1 per item")
            if not shuffle:
                raise ValueError("repeat-factor sampling draws each epoch at random: it needs shuffle=True")
            self.repeat_factors = torch.tensor(repeat_factors, dtype=torch.float64)
        group_sizes = {}  # expected items per group in an epoch
        for index, group in enumerate(self.group_ids):
            copies = 1.0 if repeat_factors is None else float(repeat_factors[index])
            group_sizes[group] = group_sizes.get(group, 0.0) + copies
        self.total_batches = sum(math.ceil(round(size) / self.batch_size) for size in group_sizes.values())

    def set_epoch(self, epoch, start_batch=0):
        """Choose the epoch whose permutation the next iteration uses, and skip this rank's first
        `start_batch` batches of it (resuming a checkpoint saved mid-epoch)."""
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def all_batches(self):
        """Every batch of this epoch over all ranks, in dealing order (before sharding/padding)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            items = torch.arange(len(self.group_ids))
            if self.repeat_factors is not None:  # stochastic rounding: floor(r) + Bernoulli(r - floor(r)) copies
                whole = self.repeat_factors.floor()
                extra = torch.rand(len(self.group_ids), generator=generator, dtype=torch.float64)
                copies = whole + (extra < self.repeat_factors - whole).to(whole.dtype)
                items = torch.repeat_interleave(items, copies.long())
            order = items[torch.randperm(len(items), generator=generator)].tolist()
        else:
            order = list(range(len(self.group_ids)))
        batches, buffers = [], {}
        for index in order:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                batches.append(list(buffer))
                buffer.clear()
        batches.extend(buffers[group] for group in sorted(buffers) if buffers[group])
        if self.repeat_factors is not None:  # the fixed epoch length (the rounding drew a few more or fewer)
            batches = batches[:self.total_batches]
        return batches

    def __iter__(self):
        batches = self.all_batches()
        padding = len(self) * self.num_replicas - len(batches)
        batches = batches + (batches * (1 + padding // max(len(batches), 1)))[:padding]
        return iter(batches[self.rank::self.num_replicas][self.start_batch:])

    def __len__(self):
        """Batches per rank per full epoch (the same on every rank and every epoch, whatever start_batch)."""
        return math.ceil(self.total_batches / self.num_replicas)


def build_train_batch_sampler(dataset, batch_size, shuffle=True, seed=0, distributed=False, repeat_factors=None):
    """GroupedBatchSampler over `dataset` (needs dataset.aspect_ratios()); world from torch.distributed;
    repeat_factors: one per item for repeat-factor sampling (data/repeat_factors.py), or None."""
    num_replicas, rank = _world(distributed)
    return GroupedBatchSampler(aspect_group_ids(dataset), batch_size, shuffle=shuffle, seed=seed,
                               num_replicas=num_replicas, rank=rank, repeat_factors=repeat_factors)


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, rank + 2 world, ... of range(num_items): no padding, so every
    item is visited exactly once across ranks (shards may differ in length by one)."""

    def __init__(self, num_items, num_replicas=1, rank=0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.num_items, self.num_replicas, self.rank = int(num_items), int(num_replicas), int(rank)

    def __iter__(self):
        return iter(range(self.rank, self.num_items, self.num_replicas))

    def __len__(self):
        return len(range(self.rank, self.num_items, self.num_replicas))


def build_test_sampler(dataset, distributed=False):
    """ShardSampler over len(dataset) for this rank (results must be gathered across ranks)."""
    num_replicas, rank = _world(distributed)
    return ShardSampler(len(dataset), num_replicas, rank)
