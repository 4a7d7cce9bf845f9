"""Two gloo processes with batch b each train as one process with batch 2b on the same images (the all-reduced
normalisers of detector/criterion.py), for RetinaNet, ATSS and GFL, including steps where one rank's images have
no ground-truth box; gradient accumulation of two batches of b equals one batch of 2b; the sharded evaluation
counts every val image once when the val set does not divide by the number of ranks.

BatchNorm statistics are frozen (norm_eval): with trained statistics each rank would normalise with its own
batch's (SyncBatchNorm, GPUs only, makes them the whole batch's).

Every head starts from its reference 0.01 classification prior: GFL's first steps, where the sum of the positives'
scores is below 1, are where a rank mean clamped at 1 (mmdetection's avg_factor) would make 2 x b train at half the
box loss of 1 x 2b; criterion.box_normaliser clamps at 1 / world size instead.
"""
import pytest
import torch
import torch.distributed
import torch.multiprocessing
from tiny_detector import padded_targets, tiny_config
from torch.amp import GradScaler
from torch.nn.parallel import DistributedDataParallel

from data.collate import collate
from data.samplers import build_test_sampler
from detector import build_criterion, build_model, build_postprocessor, dist
from detector.engine import evaluate, train_steps
from detector.nonfinite import NonFiniteGuard
from detector.precision import Precision
from detector.train_state import TrainState

HEADS = ("retinanet", "atss", "gfl")
NUM_CLASSES = 3
WORLD_SIZE = 2
SIZE = (64, 96)   # (h, w) of every image: no padding differs between 1 and 2 processes
BOX_A = [[8.0, 10.0, 50.0, 60.0], [40.0, 20.0, 90.0, 62.0]]
BOX_B = [[30.0, 30.0, 64.0, 60.0]]
# Two steps of 4 images; rank r takes images 2r and 2r + 1. In step 2 rank 1's images have no box.
STEP_BOXES = [[BOX_A, BOX_B, BOX_B, BOX_A], [BOX_A, BOX_B, [], []]]
STEP_LABELS = [[[0, 2], [1], [2], [1, 0]], [[1, 1], [0], [], []]]
NUM_VAL_IMAGES = 5  # not a multiple of 2 ranks


def batches():
    """[(images [4, 3, H, W], targets of collate's layout for 4 images)] of the two steps."""
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, *SIZE, generator=generator), padded_targets(boxes, labels))
            for boxes, labels in zip(STEP_BOXES, STEP_LABELS)]


def shard(images, targets, rank, world_size):
    """Rank `rank`'s part of a batch: images.shape[0] / world_size of them, in order."""
    per_rank = images.shape[0] // world_size
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    return images[part], {key: value[part] for key, value in targets.items()}


def engine_steps(head, rank, world_size, steps, accumulate=1, *overrides):
    """Train a tiny detector with detector.engine.train_steps (SGD) on this rank's share of `steps`, each step's
    images split into `accumulate` batches: [{'losses': averaged over ranks, 'gradients': {name: tensor}}]."""
    cfg = tiny_config(head, "model.backbone.norm_eval=true", f"train.accumulate={accumulate}", "train.epochs=1",
                      "train.log_interval=1000", "optim.warmup_iters=0", *overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_CLASSES)
    trained = DistributedDataParallel(model, broadcast_buffers=False) if world_size > 1 else model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    state = TrainState(model, build_criterion(cfg.model, NUM_CLASSES), optimizer, GradScaler("cpu", enabled=False),
                       None, NonFiniteGuard(), {}, None, world_size)
    loader = [shard(*shard(images, targets, rank, world_size), part, accumulate)
              for images, targets in steps for part in range(accumulate)]
    record = []
    for _ in train_steps(trained, state, loader, 0.01, cfg, torch.device("cpu"), Precision("fp32", "test")):
        losses = {k: dist.reduce_mean(v).item() for k, v in state.last_losses.items() if k.startswith("loss_")}
        gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        record.append({"losses": losses, "gradients": gradients})
    return record


class RandomImages(torch.utils.data.Dataset):
    """NUM_VAL_IMAGES normalised random images with ids 101, 102, ... in collate's item layout."""

    def __len__(self):
        return NUM_VAL_IMAGES

    def __getitem__(self, index):
        image = torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(index))
        return image, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                       "crowd": torch.zeros(0, dtype=torch.bool), "image_id": 101 + index, "orig_size": SIZE,
                       "size": SIZE, "scale_factor": (1.0, 1.0)}


def sharded_detections(world_size):
    """COCO-format detections of a tiny GFL on RandomImages, evaluated over `world_size` ranks, gathered."""
    cfg = tiny_config("gfl", "model.test.score_thr=0.0", "model.test.max_per_img=5")
    torch.manual_seed(1)
    model = build_model(cfg.model, NUM_CLASSES)
    dataset = RandomImages()
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate,
                                         sampler=build_test_sampler(dataset, distributed=world_size > 1))
    _, detections = evaluate(model, build_postprocessor(cfg.model), loader, list(range(NUM_CLASSES)),
                             lambda results, log: {"AP": 0.0}, torch.device("cpu"))
    return detections


def worker(rank, init_file, out_file):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {head: engine_steps(head, rank, WORLD_SIZE, batches()) for head in HEADS}
        results["detections"] = sharded_detections(WORLD_SIZE)
        if rank == 0:
            torch.save(results, out_file)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    out_file = str(folder / "results.pt")
    # fork: the workers start with this process's imports (no CUDA here), which spawn would redo (seconds each)
    torch.multiprocessing.start_processes(worker, args=(str(folder / "init"), out_file), nprocs=WORLD_SIZE,
                                          join=True, start_method="fork")
    return torch.load(out_file, weights_only=True)


def assert_same_steps(actual, expected):
    for step, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
        assert mine["losses"].keys() == theirs["losses"].keys()
        for key in mine["losses"]:
            assert mine["losses"][key] == pytest.approx(theirs["losses"][key], rel=1e-5, abs=1e-5), (step, key)
        assert mine["gradients"].keys() == theirs["gradients"].keys() and len(mine["gradients"]) > 50
        for name in mine["gradients"]:
            torch.testing.assert_close(mine["gradients"][name], theirs["gradients"][name], rtol=1e-5, atol=1e-5,
                                       msg=lambda text, step=step, name=name: f"step {step + 1}, {name}: {text}")


@pytest.mark.parametrize("head", HEADS)
def test_two_ranks_of_b_images_equal_one_process_of_2b(two_processes, head):
    single = engine_steps(head, rank=0, world_size=1, steps=batches())
    # the steps where one rank had no box count: every loss term is positive in every step
    assert all(value > 0 for step in single for value in step["losses"].values())
    assert_same_steps(two_processes[head], single)


def test_gradient_accumulation_of_two_batches_equals_the_batch_of_both():
    """Two batches of 2 accumulated in one step (loss / 2 each, one optimizer step) give the step of the batch of 4
    when the halves have equal normalisers: each step's 4 images here are 2 images, twice. (Halves with other
    positive counts differ by their normalisers, as in mmdetection's GradientCumulativeOptimizerHook; so do halves
    whose GFL score sums are clamped at 1, hence a 0.1 prior here, where the sums are above 1.)"""
    twins = [(torch.cat([images[:2], images[:2]]), {k: torch.cat([v[:2], v[:2]]) for k, v in targets.items()})
             for images, targets in batches()]
    prior = "model.head.prior_prob=0.1"
    assert_same_steps(engine_steps("gfl", 0, 1, twins, 2, prior), engine_steps("gfl", 0, 1, twins, 1, prior))


def test_sharded_evaluation_counts_every_val_image_once(two_processes):
    sharded = two_processes["detections"]
    single = sharded_detections(world_size=1)
    key = lambda d: (d["image_id"], d["category_id"], d["score"], tuple(d["bbox"]))  # noqa: E731
    assert {d["image_id"] for d in single} == set(range(101, 101 + NUM_VAL_IMAGES))  # score_thr 0: every image
    assert sorted(sharded, key=key) == sorted(single, key=key)    # nothing missing, nothing twice
