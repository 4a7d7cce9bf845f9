"""Repeat-factor sampling: factors by hand, stochastic rounding per epoch inside the aspect-grouped, rank-sharded
batch sampler (deterministic under a seed, fixed epoch length, resumable), and the statistics logged at start."""
import logging
import math

import numpy as np
import pytest

from data.repeat_factors import frequency_group, image_class_sets, repeat_factors
from data.samplers import GroupedBatchSampler


def test_repeat_factors_by_hand():
    # 4 images: class 0 in two (f = 1/2), classes 1 and 2 in one each (f = 1/4), one image without a class
    class_sets = [np.array([0]), np.array([0, 1]), np.array([2]), np.array([], dtype=np.int64)]
    assert repeat_factors(class_sets, 3, 0.5) == [1.0, math.sqrt(2), math.sqrt(2), 1.0]
    # t = 1/8: every f_c >= t, so nothing repeats; t = 1: r = max over classes of sqrt(1 / f_c)
    assert repeat_factors(class_sets, 3, 0.125) == [1.0, 1.0, 1.0, 1.0]
    assert repeat_factors(class_sets, 3, 1.0) == [math.sqrt(2), 2.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="repeat threshold"):
        repeat_factors(class_sets, 3, 0.0)


def test_frequency_groups_follow_lvis():
    assert [frequency_group(n) for n in (0, 1, 10, 11, 100, 101)] == ["r", "r", "r", "c", "c", "f"]


class AnnotatedItems:
    """The dataset interface image_class_sets reads: annotations(index) -> (boxes, labels, crowd)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def annotations(self, index):
        labels, crowd = self.items[index]
        return np.zeros((len(labels), 4), np.float32), np.array(labels, np.int64), np.array(crowd, bool)


def test_image_class_sets_skip_crowd_boxes_and_duplicates():
    dataset = AnnotatedItems([([2, 0, 2], [False, False, False]), ([1, 3], [True, False]), ([], [])])
    assert [list(classes) for classes in image_class_sets(dataset)] == [[0, 2], [3], []]


FACTORS = [1.0, 1.0, 2.5, 1.0, 1.5, 3.0, 1.0, 1.0, 1.2, 1.0, 1.0, 4.0]
GROUPS = [0, 1] * 6


def test_stochastic_rounding_repeats_each_image_r_times_on_average():
    sampler = GroupedBatchSampler(GROUPS, 2, seed=3, repeat_factors=FACTORS)
    epochs = 400
    counts = np.zeros(len(FACTORS))
    lengths = set()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        lengths.add(len(batches))
        for batch in batches:
            assert len({GROUPS[index] for index in batch}) == 1        # one aspect group per batch
            for index in batch:
                counts[index] += 1
    assert lengths == {len(sampler)}                                   # a fixed epoch length
    # expected items: group 0 holds 1 + 2.5 + 3 + 1 + 1.2 + 1 = 9.7 -> 10, group 1 holds 1 + 1 + 1.5 + 1 + 1 + 4 =
    # 9.5 -> 10 (round half to even); 5 + 5 batches of 2
    assert len(sampler) == 10
    np.testing.assert_allclose(counts / epochs, FACTORS, atol=0.12)


def test_repeat_factor_epochs_are_deterministic_per_seed_and_differ_per_epoch():
    first = GroupedBatchSampler(GROUPS, 2, seed=7, repeat_factors=FACTORS)
    second = GroupedBatchSampler(GROUPS, 2, seed=7, repeat_factors=FACTORS)
    other_seed = GroupedBatchSampler(GROUPS, 2, seed=8, repeat_factors=FACTORS)
    epochs = []
    for epoch in range(3):
        for sampler in (first, second, other_seed):
            sampler.set_epoch(epoch)
        assert list(first) == list(second)
        epochs.append(list(first))
    assert epochs[0] != epochs[1] != epochs[2]
    other_seed.set_epoch(0)
    assert list(other_seed) != epochs[0]


def test_repeat_factor_epochs_shard_over_ranks_and_resume_mid_epoch():
    ranks = [GroupedBatchSampler(GROUPS, 2, seed=5, num_replicas=2, rank=rank, repeat_factors=FACTORS)
             for rank in range(2)]
    single = GroupedBatchSampler(GROUPS, 2, seed=5, repeat_factors=FACTORS)
    for sampler in ranks + [single]:
        sampler.set_epoch(4)
    shards = [list(sampler) for sampler in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == 5
    everything = single.all_batches()                                  # the epoch's batches, all ranks together
    assert [batch for pair in zip(*shards) for batch in pair] == (everything + everything)[:10]
    ranks[1].set_epoch(4, start_batch=3)
    assert list(ranks[1]) == shards[1][3:]


def test_repeat_factors_need_shuffle_and_one_factor_per_item():
    with pytest.raises(ValueError, match="shuffle"):
        GroupedBatchSampler(GROUPS, 2, shuffle=False, repeat_factors=FACTORS)
    with pytest.raises(ValueError, match="one factor"):
        GroupedBatchSampler(GROUPS, 2, repeat_factors=FACTORS[:-1])


def test_train_loader_logs_class_statistics_and_the_epoch_length(caplog):
    from types import SimpleNamespace

    from data.build import train_repeat_factors
    labels = [[0], [0], [0], [0], [1], [0, 2]]                         # class 0 in 5 of 6 images, 1 and 2 in one
    dataset = AnnotatedItems([(item, [False] * len(item)) for item in labels])
    dataset.num_classes, dataset.class_names = 3, ["often", "once", "also_once"]
    dataset.aspect_ratios = lambda: [1.0] * 6
    config = SimpleNamespace(repeat_threshold=0.5, batch_size=2)
    with caplog.at_level(logging.INFO, logger="data"):
        factors = train_repeat_factors(dataset, config)
    assert factors == pytest.approx([1, 1, 1, 1, math.sqrt(3), math.sqrt(3)])
    text = caplog.text
    assert "rare 3 (images per class 1-5" in text and "rarest classes: once (1), also_once (1), often (5)" in text
    # 4 + 2 sqrt(3) = 7.46 expected images -> 7 -> 4 batches of 2 (without: 6 images, 3 batches)
    assert "repeat-factor sampling (t = 0.5): 2 of 6 images repeated" in text
    assert "an epoch is 7 images = 4 batches over all ranks (without it: 6 images = 3)" in text
    config.repeat_threshold = None
    assert train_repeat_factors(dataset, config) is None
