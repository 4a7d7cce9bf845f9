"""Embedded long-tailed detection set in LVIS v1 format: the whole LVIS path (federated evaluation, frequency
groups, repeat-factor sampling, EFL) on a laptop, from the same drawing helpers as the shapes set (data/synthetic.py).

* 30 classes, each a colour and a shape (5 colours x circle, square, triangle, star, hexagon, cross), ids 1..30;
  a class's objects share its colour (small jitter) over desaturated textured backgrounds, so the colour matters.
* Zipfian frequencies: the class of frequency rank k (ranks shuffled over the ids by the seed) is in about
  num_train / 2 x (7 / (k + 6))^3 train images (at least 1): with 800 train images, 400 images for the first, 10-11
  around rank 17, 3 for the last. Categories carry LVIS's 'frequency' from the train images that contain them:
  rare (1-10 images; about a dozen classes seen in 3-10 images at 800), common (11-100), frequent (> 100).
* Every train image holds at least one object (images that drew no class get a frequent one); 1-2 instances per
  class per image, 10-110 px, random rotation, partial occlusion, unannotated clutter as in the shapes set.
* Images of 160 x 160, 176 x 144 or 144 x 176 px. Val spreads the classes the same way, but every class is
  in at least 6 val images so that APr measures something.
* Federated annotation, as LVIS: each image lists as `neg_category_ids` about half of the classes it does not
  contain (verified absent), and when a class's second instance was left unannotated (a quarter of the pairs),
  that class is in `not_exhaustive_category_ids`. Annotations have `bbox`, `area` (box area) and no `iscrowd`;
  images have `coco_url` ('http://images.cocodataset.org/train2017/000000000001.png': the file is
  <root>/train2017/000000000001.png) and no `file_name`, as in LVIS v1.

Usage: `python -m data.synthetic_lvis --root datasets/shapes_lvis [--num-train 800 --num-val 240 --seed 0]`.
"""
import argparse
import json
import math
import os
import time

import numpy as np
from PIL import Image

from data.repeat_factors import frequency_group
from data.synthetic import MIN_VISIBLE_FRACTION, _background, _draw_clutter, _rasterise, _shape_points, ensure_generated

GENERATOR_VERSION = 1
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS = {"red": (215, 45, 45), "green": (45, 170, 70), "blue": (45, 85, 215), "yellow": (225, 205, 40),
           "purple": (160, 60, 200)}
CATEGORIES = [{"id": index + 1, "name": f"{colour}_{shape}", "synset": f"{colour}_{shape}.n.01",
               "def": f"a {colour} {shape}", "colour": COLOURS[colour], "shape": shape}
              for index, (shape, colour) in enumerate((s, c) for s in SHAPES for c in COLOURS)]
IMAGE_SIZES = [(160, 160), (176, 144), (144, 176)]  # (width, height): small, for CPU minutes
MIN_SIDE, MAX_SIDE = 10.0, 110.0
MIN_VAL_IMAGES = 6
SECOND_INSTANCE, UNANNOTATED_SECOND = 0.3, 0.25  # P(a class has 2 instances in an image), P(the 2nd is not annotated)
_SPLIT_CODES = {"train": 11, "val": 12}


def zipf_image_counts(num_images, num_classes=30):
    """Train images per frequency rank k = 1..C: max(1, round(num_images / 2 x (7 / (k + 6))^3))."""
    return [max(1, round(num_images / 2 * (7 / (rank + 6)) ** 3)) for rank in range(1, num_classes + 1)]


def _plan(rng, num_images, counts):
    """Per image, the (category index, instances, annotated instances) to draw: class i in counts[i] images."""
    classes_of = [[] for _ in range(num_images)]
    for category, count in enumerate(counts):
        for image in rng.choice(num_images, size=min(count, num_images), replace=False):
            classes_of[image].append(category)
    frequent = np.argsort(counts)[::-1][:5]
    weights = np.asarray(counts, dtype=np.float64)[frequent]
    plans = []
    for classes in classes_of:
        if not classes:  # every image holds an object, as every LVIS image does
            classes = [int(rng.choice(frequent, p=weights / weights.sum()))]
        plan = []
        for category in classes:
            instances = 2 if rng.random() < SECOND_INSTANCE else 1
            annotated = 1 if instances == 2 and rng.random() < UNANNOTATED_SECOND else instances
            plan.append((category, instances, annotated))
        plans.append(plan)
    return plans


def draw_lvis_image(rng, width, height, plan):
    """Draw one image of `plan`; returns (uint8 [H, W, 3], [(category index, [x, y, w, h], annotated)])."""
    image = _background(rng, width, height)
    image = 0.7 * image.mean(axis=2, keepdims=True) + 0.3 * image  # desaturated: an object's colour stands out
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    _draw_clutter(rng, canvas)
    image = np.asarray(canvas, dtype=np.float32).copy()
    owner = np.full((height, width), -1, dtype=np.int32)
    full_area, visible, objects = [], np.zeros(0, dtype=np.int64), []
    drawn = [(category, copy < annotated) for category, instances, annotated in plan for copy in range(instances)]
    for position in rng.permutation(len(drawn)):
        category, annotated = drawn[position]
        side = min(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE))), 0.8 * min(width, height))
        for attempt in range(24):
            if attempt and attempt % 8 == 0:
                side = max(MIN_SIDE, side * 0.7)
            fill, outline = _rasterise(_shape_points(CATEGORIES[category]["shape"], side, rng), 0)
            mask_h, mask_w = fill.shape
            if mask_w >= width or mask_h >= height:
                continue
            x0, y0 = int(rng.integers(0, width - mask_w + 1)), int(rng.integers(0, height - mask_h + 1))
            region = owner[y0:y0 + mask_h, x0:x0 + mask_w]
            covered = region[fill]
            covered = np.bincount(covered[covered >= 0], minlength=len(objects))
            if not np.any(visible - covered < MIN_VISIBLE_FRACTION * np.asarray(full_area)):
                break
        else:
            continue  # no room: the image gets one object fewer
        colour = np.asarray(CATEGORIES[category]["colour"], dtype=np.float32) + rng.normal(0, 12, size=3)
        image[y0:y0 + mask_h, x0:x0 + mask_w][fill] = colour
        region[fill] = len(objects)
        full_area.append(int(fill.sum()))
        visible = np.append(visible - covered, full_area[-1])
        ys, xs = np.nonzero(fill)
        box = [float(x0 + xs.min()), float(y0 + ys.min()), float(xs.max() - xs.min() + 1),
               float(ys.max() - ys.min() + 1)]
        objects.append((category, box, annotated))
    image += rng.normal(0.0, rng.uniform(0, 4), size=(height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _write_split(folder, split, plans, seed, first_id):
    """Write folder/<split>2017/*.png; return (images, annotations) entries in LVIS format."""
    os.makedirs(os.path.join(folder, f"{split}2017"))
    images, annotations = [], []
    for index, plan in enumerate(plans):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        width, height = IMAGE_SIZES[int(rng.integers(0, len(IMAGE_SIZES)))]
        pixels, objects = draw_lvis_image(rng, width, height, plan)
        image_id = first_id + index
        relative = f"{split}2017/{image_id:012d}.png"
        Image.fromarray(pixels).save(os.path.join(folder, relative), compress_level=1)
        present = {CATEGORIES[category]["id"] for category, _, annotated in objects if annotated}
        not_exhaustive = sorted({CATEGORIES[category]["id"] for category, _, annotated in objects
                                 if not annotated and CATEGORIES[category]["id"] in present})
        absent = [category["id"] for category in CATEGORIES if category["id"] not in
                  {CATEGORIES[c]["id"] for c, _, _ in objects}]
        negatives = sorted(int(c) for c in absent if rng.random() < 0.5)
        images.append({"id": image_id, "width": width, "height": height,
                       "coco_url": f"http://images.cocodataset.org/{relative}",
                       "neg_category_ids": negatives, "not_exhaustive_category_ids": not_exhaustive})
        for category, box, annotated in objects:
            if annotated:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": CATEGORIES[category]["id"], "bbox": box, "area": box[2] * box[3]})
    return images, annotations


def _categories(train_annotations):
    """LVIS category entries: frequency group, image and instance counts from the train annotations."""
    images, instances = {}, {}
    for annotation in train_annotations:
        images.setdefault(annotation["category_id"], set()).add(annotation["image_id"])
        instances[annotation["category_id"]] = instances.get(annotation["category_id"], 0) + 1
    return [{"id": c["id"], "name": c["name"], "synset": c["synset"], "synonyms": [c["name"]], "def": c["def"],
             "image_count": len(images.get(c["id"], ())), "instance_count": instances.get(c["id"], 0),
             "frequency": frequency_group(len(images.get(c["id"], ())))} for c in CATEGORIES]


def _write(folder, num_train, num_val, seed):
    rng = np.random.default_rng([seed, 10])
    ranks = rng.permutation(len(CATEGORIES))                         # category index -> frequency rank - 1
    train_counts = [zipf_image_counts(num_train)[rank] for rank in ranks]
    val_counts = [min(num_val, max(MIN_VAL_IMAGES, round(count * num_val / num_train))) for count in train_counts]
    train_images, train_annotations = _write_split(folder, "train", _plan(rng, num_train, train_counts), seed, 1)
    val_images, val_annotations = _write_split(folder, "val", _plan(rng, num_val, val_counts), seed, num_train + 1)
    categories = _categories(train_annotations)
    os.makedirs(os.path.join(folder, "annotations"))
    for split, images, annotations in (("train", train_images, train_annotations),
                                       ("val", val_images, val_annotations)):
        content = {"info": {"description": "focaldet synthetic long-tailed shapes (LVIS v1 format)",
                            "version": GENERATOR_VERSION}, "licenses": [], "images": images,
                   "annotations": annotations, "categories": categories}
        with open(os.path.join(folder, "annotations", f"lvis_v1_{split}.json"), "w") as handle:
            json.dump(content, handle)


def _paths(root):
    return {"train_images": root, "train_ann": os.path.join(root, "annotations", "lvis_v1_train.json"),
            "val_images": root, "val_ann": os.path.join(root, "annotations", "lvis_v1_val.json")}


def ensure_shapes_lvis_dataset(root, num_train=800, num_val=240, seed=0):
    """Create the long-tailed LVIS-format set under `root` unless an identical one is there (data.synthetic's
    ensure_generated: locked, drawn into a temporary folder, moved into place). Returns the paths dict
    ('train_images', 'train_ann', 'val_images', 'val_ann'); both image folders are `root`, as datasets/coco is
    for LVIS."""
    params = {"num_train": int(num_train), "num_val": int(num_val), "seed": int(seed), "version": GENERATOR_VERSION,
              "format": "lvis_v1"}
    return ensure_generated(root, params, lambda folder: _write(folder, num_train, num_val, seed), _paths(root))


def main():
    parser = argparse.ArgumentParser(description="Write the long-tailed shapes set (LVIS v1 format).")
    parser.add_argument("--root", default="datasets/shapes_lvis")
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    paths = ensure_shapes_lvis_dataset(args.root, args.num_train, args.num_val, args.seed)
    print(f"long-tailed LVIS-format shapes set ready in {time.time() - start:.1f} s:")
    for key, value in paths.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
