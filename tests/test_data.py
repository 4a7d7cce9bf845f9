"""CocoDetection (mapping, validation, clipping), transforms, collate and samplers."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data.coco import CocoDetection, DatasetError
from data.collate import collate
from data.samplers import (
    GroupedBatchSampler,
    ShardSampler,
    aspect_group_ids,
    build_test_sampler,
    build_train_batch_sampler,
)
from data.transforms import PIXEL_MEAN, PIXEL_STD, Normalize, RandomHorizontalFlip, Resize, build_transforms


def _tiny_set(folder, mutate=None, write_images=True):
    """A 3-image COCO set in `folder` (sparse category ids 5 and 9); returns (image_dir, ann_file)."""
    content = {
        "images": [{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 11, "file_name": "b.png", "width": 30, "height": 40},
                   {"id": 12, "file_name": "gray.png", "width": 20, "height": 20}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 9, "bbox": [2.0, 3.0, 10.0, 8.0], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 5, "bbox": [30.0, 20.0, 20.0, 20.0], "iscrowd": 0},
            {"id": 3, "image_id": 11, "category_id": 5, "bbox": [0.0, 0.0, 30.0, 40.0], "iscrowd": 1},
            {"id": 4, "image_id": 11, "category_id": 9, "bbox": [29.5, 5.0, 3.0, 5.0], "iscrowd": 0},
            {"id": 5, "image_id": 12, "category_id": 9, "bbox": [5.0, 5.0, 0.5, 4.0], "iscrowd": 0}],
        "categories": [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],
    }
    if mutate is not None:
        mutate(content)
    os.makedirs(folder, exist_ok=True)
    if write_images:
        Image.new("RGB", (40, 30), (200, 10, 10)).save(os.path.join(folder, "a.png"))
        Image.new("RGBA", (30, 40), (10, 200, 10, 128)).save(os.path.join(folder, "b.png"))
        Image.new("L", (20, 20), 77).save(os.path.join(folder, "gray.png"))
    ann_file = os.path.join(folder, "instances.json")
    with open(ann_file, "w") as handle:
        json.dump(content, handle)
    return str(folder), ann_file


def test_category_mapping_crowd_and_grayscale(tmp_path, caplog):
    image_dir, ann_file = _tiny_set(tmp_path)
    with caplog.at_level(logging.INFO, logger="data.coco"):
        dataset = CocoDetection(image_dir, ann_file)
    assert dataset.cat_ids == [5, 9] and dataset.class_names == ["five", "nine"]
    assert dataset.num_classes == 2
    for cat_id, label in dataset.cat_id_to_label.items():
        assert dataset.cat_ids[label] == cat_id  # round trip
    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert target["labels"].tolist() == [1, 0] and target["image_id"] == 10
    # box 2 clipped from [30, 20, 50, 40] to the 40x30 image
    assert target["boxes"].tolist() == [[2, 3, 12, 11], [30, 20, 40, 30]]
    assert target["orig_size"] == (30, 40) and target["size"] == (30, 40) and target["scale_factor"] == (1.0, 1.0)
    image, target = dataset[1]  # RGBA -> RGB; crowd kept; box 4 clipped to 0.5 px wide -> dropped
    assert target["crowd"].tolist() == [True] and target["labels"].tolist() == [0]
    image, target = dataset[2]  # grayscale -> 3 channels, box under 1 px dropped
    expected = (77 - torch.tensor(PIXEL_MEAN)) / torch.tensor(PIXEL_STD)
    assert torch.allclose(image[:, 0, 0], expected) and len(target["boxes"]) == 0
    assert dataset.stats["boxes_clipped"] == 2 and dataset.stats["boxes_dropped_small"] == 2
    assert "2 clipped to the image, 2 dropped under 1 px, 1 crowd" in caplog.text
    assert dataset.aspect_ratios() == [40 / 30, 30 / 40, 1.0]


def test_remove_images_without_annotations_and_class_subset(tmp_path, caplog):
    image_dir, ann_file = _tiny_set(tmp_path)
    with caplog.at_level(logging.INFO, logger="data.coco"):
        dataset = CocoDetection(image_dir, ann_file, remove_images_without_annotations=True)
    # image 11 has only a crowd box left, image 12 nothing usable
    assert dataset.image_ids == [10] and dataset.stats["images_dropped_empty"] == 2
    assert "1 of 3 images kept (2 dropped" in caplog.text
    subset = CocoDetection(image_dir, ann_file, class_names=["nine"])
    assert subset.cat_ids == [9] and subset[0][1]["labels"].tolist() == [0]
    with pytest.raises(DatasetError, match="seven"):
        CocoDetection(image_dir, ann_file, class_names=["seven"])


def _set_field(section, index, key, value):
    def mutate(content):
        content[section][index][key] = value
    return mutate


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c["images"].append(dict(c["images"][0])), r"duplicate image id 10"),
    (_set_field("annotations", 1, "category_id", 77), r"annotation 2 \(image 10\).*category id 77"),
    (_set_field("annotations", 0, "image_id", 99), r"annotation 1 \(image 99\).*not in images"),
    (_set_field("annotations", 2, "bbox", [1.0, float("nan"), 3.0, 4.0]), r"annotation 3 \(image 11\).*non-finite"),
    (_set_field("annotations", 3, "bbox", [1.0, 2.0, -3.0, 4.0]), r"annotation 4 \(image 11\).*negative"),
    (lambda c: c.pop("categories"), r"lacks required key.*categories"),
])
def test_invalid_annotations_raise(tmp_path, mutate, expected):
    image_dir, ann_file = _tiny_set(tmp_path, mutate, write_images=False)
    with pytest.raises(DatasetError, match=expected) as error:
        CocoDetection(image_dir, ann_file)
    assert str(error.value).startswith(ann_file) and "\n" not in str(error.value)


def test_missing_and_malformed_annotation_file(tmp_path):
    missing = str(tmp_path / "nothing.json")
    with pytest.raises(DatasetError, match="annotation file not found") as error:
        CocoDetection(str(tmp_path), missing)
    assert missing in str(error.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DatasetError, match="malformed JSON") as error:
        CocoDetection(str(tmp_path), str(broken))
    assert str(broken) in str(error.value)


def test_missing_and_corrupt_image_files(tmp_path):
    image_dir, ann_file = _tiny_set(tmp_path)
    dataset = CocoDetection(image_dir, ann_file)
    os.remove(os.path.join(image_dir, "a.png"))
    with pytest.raises(DatasetError, match=r"a\.png: image file not found \(image 10\)"):
        dataset[0]
    with open(os.path.join(image_dir, "b.png"), "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match=r"b\.png: unreadable image \(image 11\)"):
        dataset[1]


@pytest.mark.parametrize("name", ["coco128", "raccoon"])
def test_shared_datasets_load(shared_split, name):
    for split in ("train", "val"):
        image_dir, ann_file = shared_split(name, split)
        dataset = CocoDetection(image_dir, ann_file, build_transforms(True, [320], 512),
                                remove_images_without_annotations=(split == "train"))
        assert len(dataset) > 0 and dataset.stats["boxes_dropped_small"] == 0
        indices = list(range(0, len(dataset), max(1, len(dataset) // 4)))
        if name == "coco128":  # the grayscale images and the image without boxes
            indices += [i for i in range(len(dataset))
                        if dataset.file_name(i) in ("000000000250.jpg", "000000000508.jpg")]
        for index in indices:
            image, target = dataset[index]
            assert image.shape[0] == 3 and (min(target["size"]) == 320 or max(target["size"]) == 512)
            assert (target["labels"] >= 0).all() and (target["labels"] < dataset.num_classes).all()


def _target(boxes, size):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.zeros(len(boxes), dtype=torch.long),
            "crowd": torch.zeros(len(boxes), dtype=torch.bool), "image_id": 1,
            "orig_size": size, "size": size, "scale_factor": (1.0, 1.0)}


def test_resize_keeps_ratio_and_scales_boxes():
    image = Image.new("RGB", (200, 100))
    resized, target = Resize([50], max_size=1000)(image, _target([[10, 20, 110, 60]], (100, 200)))
    assert resized.size == (100, 50) and target["size"] == (50, 100) and target["scale_factor"] == (0.5, 0.5)
    assert target["boxes"].tolist() == [[5, 10, 55, 30]]
    resized, target = Resize([80], max_size=120)(image, _target([[0, 0, 200, 100]], (100, 200)))
    assert resized.size == (120, 60) and target["scale_factor"] == pytest.approx((0.6, 0.6))
    assert target["boxes"].tolist() == [[0, 0, 120, 60]]
    # 301 x 100 at scale 0.5: width int(150.5 + 0.5) = 151 (mmcv's rounding; Python's round gives 150), height
    # 50; the axes get their own factors 151 / 301 and 0.5, and so do the boxes
    odd = Image.new("RGB", (301, 100))
    resized, target = Resize([50], max_size=1000)(odd, _target([[301, 100, 301, 100]], (100, 301)))
    assert resized.size == (151, 50) and target["scale_factor"] == (151 / 301, 0.5)
    assert target["boxes"].tolist() == [[151, 50, 151, 50]]
    sampler = Resize([40, 60], max_size=1000, mode="range")
    sides = {sampler(image, _target([], (100, 200)))[1]["size"][0] for _ in range(40)}
    assert sides <= set(range(40, 61)) and len(sides) > 3


def test_flip_mirrors_boxes():
    image = Image.new("RGB", (100, 50))
    image.putpixel((0, 0), (255, 255, 255))
    flipped, target = RandomHorizontalFlip(p=1.0)(image, _target([[10, 5, 30, 25]], (50, 100)))
    assert target["boxes"].tolist() == [[70, 5, 90, 25]] and flipped.getpixel((99, 0)) == (255, 255, 255)
    same, target = RandomHorizontalFlip(p=0.0)(image, _target([[10, 5, 30, 25]], (50, 100)))
    assert target["boxes"].tolist() == [[10, 5, 30, 25]]


def test_collate_pads_to_divisor_and_masks_padding():
    normalize = Normalize()
    first = normalize(Image.new("RGB", (70, 40)), _target([[1, 2, 3, 4], [5, 6, 7, 8]], (40, 70)))
    second = normalize(Image.new("RGB", (33, 65)), _target([], (65, 33)))
    images, targets = collate([first, second], size_divisor=32)
    assert images.shape == (2, 3, 96, 96)
    assert torch.equal(images[0, :, :40, :70], first[0]) and images[0, :, 40:].abs().sum() == 0
    assert images[1, :, :, 33:].abs().sum() == 0
    assert targets["boxes"].shape == (2, 2, 4) and targets["labels"][1].tolist() == [-1, -1]
    assert targets["valid"].tolist() == [[True, True], [False, False]]
    assert targets["image_sizes"].tolist() == [[40, 70], [65, 33]]
    assert targets["pad_sizes"].tolist() == [[64, 96], [96, 64]]           # each image's own size, rounded up
    assert targets["scale_factors"].dtype == torch.float64 and targets["scale_factors"].tolist() == [[1, 1], [1, 1]]
    _, empty = collate([second], size_divisor=32)
    assert empty["boxes"].shape == (1, 1, 4) and not empty["valid"].any()  # M >= 1


def test_grouped_batches_are_single_group_and_cover_everything():
    group_ids = [0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1]
    sampler = GroupedBatchSampler(group_ids, batch_size=3, shuffle=True, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(len({group_ids[i] for i in batch}) == 1 for batch in batches)
    assert sorted(i for batch in batches for i in batch) == list(range(len(group_ids)))
    sampler.set_epoch(1)
    assert list(sampler) != batches  # new permutation per epoch
    shards = [list(GroupedBatchSampler(group_ids, 3, seed=3, num_replicas=2, rank=rank))
              for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(GroupedBatchSampler(group_ids, 3, num_replicas=2))
    seen = [i for shard in shards for batch in shard for i in batch]
    assert set(seen) == set(range(len(group_ids)))  # padding repeats at most world - 1 batches


def test_samplers_on_a_dataset(shapes_small):
    from data.coco import CocoDetection
    dataset = CocoDetection(shapes_small["train_images"], shapes_small["train_ann"])
    groups = aspect_group_ids(dataset)
    assert set(groups) == {0, 1}
    batch_sampler = build_train_batch_sampler(dataset, batch_size=4, seed=0)
    assert all(len({groups[i] for i in batch}) == 1 for batch in batch_sampler)
    assert len(build_test_sampler(dataset)) == len(dataset)
    with pytest.raises(RuntimeError):
        build_test_sampler(dataset, distributed=True)


def test_test_shards_cover_every_index_once():
    for num_items in (0, 1, 7, 12):
        shards = [list(ShardSampler(num_items, num_replicas=2, rank=rank)) for rank in range(2)]
        assert sorted(shards[0] + shards[1]) == list(range(num_items))


def crop_target():
    boxes = torch.tensor([[10.0, 10, 30, 30], [45, 5, 70, 20], [80, 60, 95, 75]])
    return {"boxes": boxes, "labels": torch.tensor([0, 1, 2]), "crowd": torch.tensor([False, False, True]),
            "size": (80, 100), "scale_factor": (0.5, 0.5)}


def gradient_image(width=100, height=80):
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(width, dtype=np.uint8)[None, :]
    pixels[..., 1] = np.arange(height, dtype=np.uint8)[:, None]
    return Image.fromarray(pixels)


def test_random_crop_shifts_clips_and_drops_boxes(monkeypatch):
    from data.transforms import RandomCrop
    crop = RandomCrop(40, 50)
    monkeypatch.setattr(crop, "_window", lambda width, height: (20, 0, 50, 40))  # left 20, top 0, 50 x 40
    image, target = crop(gradient_image(), crop_target())
    assert image.size == (50, 40) and target["size"] == (40, 50) and target["scale_factor"] == (0.5, 0.5)
    pixels = np.asarray(image)
    assert pixels[0, 0, 0] == 20 and pixels[0, 49, 0] == 69 and pixels[39, 0, 1] == 39   # the window's pixels
    # [10,10,30,30] -> [-10,10,10,30] clipped to [0,10,10,30]; [45,5,70,20] -> [25,5,50,20];
    # [80,60,95,75] -> [60,60,75,75], outside the 50 x 40 window: dropped with its label and crowd flag
    assert target["boxes"].tolist() == [[0, 10, 10, 30], [25, 5, 50, 20]]
    assert target["labels"].tolist() == [0, 1] and target["crowd"].tolist() == [False, False]


def test_random_crop_redraws_a_window_without_objects(monkeypatch):
    from data.transforms import RandomCrop
    crop = RandomCrop(10, 10)
    windows = iter([(0, 60, 10, 10), (75, 55, 10, 10), (12, 12, 10, 10)])  # empty, crowd only, object
    monkeypatch.setattr(crop, "_window", lambda width, height: next(windows))
    image, target = crop(gradient_image(), crop_target())
    assert np.asarray(image)[0, 0, 0] == 12
    assert target["boxes"].tolist() == [[0, 0, 10, 10]] and target["labels"].tolist() == [0]


def test_random_crop_keeps_a_small_image_whole():
    from data.transforms import RandomCrop
    image, target = RandomCrop(200, 200)(gradient_image(), crop_target())
    assert image.size == (100, 80) and torch.equal(target["boxes"], crop_target()["boxes"])


def test_random_crop_windows_are_uniform_and_inside():
    from data.transforms import RandomCrop
    torch.manual_seed(0)
    crop = RandomCrop(40, 50)
    lefts = [crop._window(100, 80)[0] for _ in range(2000)]
    assert min(lefts) == 0 and max(lefts) == 50             # every corner from 0 to 100 - 50
    assert abs(np.mean(lefts) - 25) < 1.5


def test_a_resumed_epoch_skips_the_batches_already_trained():
    # 10 landscape items, batch 2, no shuffle: batches [0,1] [2,3] [4,5] [6,7] [8,9]
    sampler = GroupedBatchSampler([1] * 10, batch_size=2, shuffle=False)
    sampler.set_epoch(0, start_batch=3)
    assert list(sampler) == [[6, 7], [8, 9]] and len(sampler) == 5   # len: the full epoch (lr schedule)
    # rank 1 of 2 is dealt batches 1 and 3, then batch 0 again to even the ranks: [2,3] [6,7] [0,1]
    sampler = GroupedBatchSampler([1] * 10, batch_size=2, shuffle=False, num_replicas=2, rank=1)
    sampler.set_epoch(0, start_batch=1)
    assert list(sampler) == [[6, 7], [0, 1]]
    sampler.set_epoch(1)
    assert list(sampler) == [[2, 3], [6, 7], [0, 1]]
