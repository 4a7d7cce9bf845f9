"""Each training image's augmentation is drawn from a seed of (seed, epoch, position): the same whichever process
or worker loads it and whatever ran before, and a sampler resumed mid-epoch hands out the same seeds."""
import torch

from data.coco import CocoDetection
from data.sample_seeds import SeededBatchSampler, sample_seed
from data.samplers import GroupedBatchSampler
from data.transforms import build_transforms


def test_a_resumed_sampler_hands_out_the_rest_of_the_epoch_with_the_same_seeds():
    batches = GroupedBatchSampler([0, 1] * 10, batch_size=3, seed=4, num_replicas=2, rank=1)
    sampler = SeededBatchSampler(batches, seed=4)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start_batch=2)
    assert list(sampler) == whole[2:] and len(whole) == len(sampler) == 4
    # rank 1's k-th batch is the (2k + 1)-th dealt: its seeds are those of that global position
    assert whole[0][1][1] == sample_seed(4, 2, 1, 1) and whole[3][0][1] == sample_seed(4, 2, 7, 0)
    sampler.set_epoch(3)
    assert {seed for batch in list(sampler) for _, seed in batch}.isdisjoint(
        {seed for batch in whole for _, seed in batch})   # another epoch, other draws


def test_an_item_with_a_seed_ignores_the_process_generator(shapes_small):
    dataset = CocoDetection(shapes_small["train_images"], shapes_small["train_ann"],
                            build_transforms(True, [96, 128, 160], 224, flip_prob=0.5))
    torch.manual_seed(0)
    first = dataset[(3, 12345)]
    torch.manual_seed(99)            # another history of draws in this process
    before = torch.get_rng_state()
    second = dataset[(3, 12345)]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["boxes"], second[1]["boxes"])
    assert torch.equal(torch.get_rng_state(), before)   # the item drew nothing from the process's generator
    sizes = {dataset[(3, seed)][1]["size"] for seed in range(12)}
    assert len(sizes) > 1   # the seed does choose the draw (one of 3 short sides)
