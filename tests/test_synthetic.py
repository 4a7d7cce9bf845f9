"""The embedded shapes dataset: determinism, COCO validity, and the promised statistics."""
import json
import os
import threading
from collections import Counter

import numpy as np
from pycocotools.coco import COCO

from data.synthetic import CATEGORIES, EMPTY_EVERY, EMPTY_OFFSET, ensure_shapes_dataset, generate_image


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_generation_is_deterministic(shapes_small, tmp_path):
    again = ensure_shapes_dataset(str(tmp_path / "again"), num_train=24, num_val=12, seed=0)
    for key in ("train_ann", "val_ann"):
        assert _read(shapes_small[key]) == _read(again[key])
    for name in ("000000.png", "000007.png"):
        assert _read(os.path.join(shapes_small["train_images"], name)) == \
            _read(os.path.join(again["train_images"], name))
    other_seed = generate_image(1, "train", 0)[0]
    assert not np.array_equal(other_seed, generate_image(0, "train", 0)[0])


def test_json_is_coco_and_complete(shapes_small):
    coco = COCO(shapes_small["train_ann"])
    content = coco.dataset
    assert len(content["images"]) == 24
    assert sorted(image["id"] for image in content["images"]) == list(range(1, 25))
    assert [a["id"] for a in content["annotations"]] == list(range(1, len(content["annotations"]) + 1))
    for image in content["images"]:
        assert os.path.isfile(os.path.join(shapes_small["train_images"], image["file_name"]))
        assert (image["width"], image["height"]) in [(256, 256), (320, 240), (240, 320)]
    sizes = {image["id"]: (image["width"], image["height"]) for image in content["images"]}
    for annotation in content["annotations"]:
        x, y, w, h = annotation["bbox"]
        assert all(isinstance(v, float) for v in annotation["bbox"])
        assert annotation["iscrowd"] == 0 and annotation["area"] == w * h
        width, height = sizes[annotation["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w >= 1 and h >= 1
    ids = [category["id"] for category in CATEGORIES]
    assert len(ids) >= 4 and ids != list(range(1, len(ids) + 1))  # non-contiguous on purpose
    assert sorted(coco.getCatIds()) == sorted(ids)


def test_counts_and_empty_images(shapes_small):
    with open(shapes_small["train_ann"]) as handle:
        content = json.load(handle)
    counts = Counter(annotation["image_id"] for annotation in content["annotations"])
    per_image = [counts.get(image["id"], 0) for image in content["images"]]
    assert per_image[EMPTY_OFFSET] == 0  # the deterministic empty image (index 16)
    assert all(1 <= count <= 15 for index, count in enumerate(per_image) if index != EMPTY_OFFSET)


def test_statistics_over_200_images():
    """Without writing files: object counts, empty images and COCO size buckets on 200 images."""
    counts, areas, shapes = [], [], set()
    for index in range(200):
        pixels, objects = generate_image(0, "val", index)
        shapes.add(pixels.shape)
        counts.append(len(objects))
        areas.extend(box[2] * box[3] for _, box in objects)
        if index % EMPTY_EVERY != EMPTY_OFFSET:
            assert 1 <= len(objects) <= 15
    areas = np.asarray(areas)
    assert counts.count(0) == len(range(EMPTY_OFFSET, 200, EMPTY_EVERY))  # ~3% empty
    assert max(counts) >= 14 and np.mean(counts) > 5
    small, large = (areas < 32 ** 2).mean(), (areas > 96 ** 2).mean()
    medium = 1 - small - large
    assert small > 0.2 and medium > 0.2 and large > 0.03, (small, medium, large)
    assert shapes == {(256, 256, 3), (240, 320, 3), (320, 240, 3)}


def test_concurrent_callers_share_one_dataset(tmp_path):
    root, results = str(tmp_path / "shared"), []
    threads = [threading.Thread(target=lambda: results.append(
        ensure_shapes_dataset(root, num_train=3, num_val=2, seed=5))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert len(COCO(results[0]["val_ann"]).getImgIds()) == 2
    assert not [name for name in os.listdir(root) if name.startswith(".generating")]
    # different parameters replace the dataset
    ensure_shapes_dataset(root, num_train=2, num_val=1, seed=5)
    assert sorted(os.listdir(os.path.join(root, "train"))) == ["000000.png", "000001.png"]
