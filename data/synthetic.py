"""Embedded "shapes" detection dataset, written as real COCO files (PNG images + instances JSON).

Every image is drawn from its own seeded numpy generator, so a split is a pure function of
(seed, split, index) and two generations give identical bytes. What an image holds:

* Size 256x256, 320x240 or 240x320 (width x height), so aspect-ratio grouping has work to do.
* A textured background: noisy flat colour, linear gradient, stripes, checkerboard or a blurred
  patchwork of random colours.
* Clutter: a few unannotated strokes, arcs and thin rings that are not class shapes.
* 1 to 15 objects of 4 classes (ids non-contiguous on purpose, as in COCO), each with a random
  colour kept away from the local background, an optional outline, a random rotation and a mild
  stretch. Side lengths are log-uniform in [10, 150] px, so COCO small (< 32^2), medium and large
  (> 96^2) boxes all occur. Later objects may cover earlier ones, but every object keeps at least
  60% of its pixels visible. The box is the tight box of the full (unoccluded) shape.
* About 3% of the images (index % 33 == 16) hold no object at all.
* Mild pixel noise over the whole image.

Annotations carry `bbox` [x, y, w, h] floats, `area` = w * h (the box area, as in coco128, so the
COCO small/medium/large buckets follow the box), `iscrowd` 0, and 1-based image/annotation ids.

Usage: `python -m data.synthetic --root datasets/shapes [--num-train 1200 --num-val 200 --seed 0]`.
The long-tailed LVIS-format variant (30 colour x shape classes, Zipfian frequencies, federated lists) is
data/synthetic_lvis.py; it draws with the helpers here and is written by the same `ensure_generated`.
"""
import argparse
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [
    {"id": 3, "name": "circle", "supercategory": "shape"},
    {"id": 7, "name": "square", "supercategory": "shape"},
    {"id": 11, "name": "triangle", "supercategory": "shape"},
    {"id": 42, "name": "star", "supercategory": "shape"},
]
# Bump when the drawing changes, so that datasets written by an older version are regenerated.
GENERATOR_VERSION = 2
IMAGE_SIZES = [(256, 256), (320, 240), (240, 320)]  # (width, height)
MIN_SIDE, MAX_SIDE = 10.0, 150.0
MIN_VISIBLE_FRACTION = 0.6
EMPTY_EVERY, EMPTY_OFFSET = 33, 16  # image index % 33 == 16 has no object (~3%)
_SPLIT_CODES = {"train": 1, "val": 2}


# ----------------------------------------------------------------------------- backgrounds
def _random_colour(rng):
    return rng.integers(0, 256, size=3).astype(np.float32)


def _background(rng, width, height):
    """Return a float32 array [height, width, 3] in 0..255 with one of five textures."""
    kind = rng.integers(0, 5)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    colour_a, colour_b = _random_colour(rng), _random_colour(rng)
    # Keep texture contrast moderate so that objects stay the strongest edges in the image.
    colour_b = colour_a + (colour_b - colour_a) * rng.uniform(0.15, 0.45)
    if kind == 0:  # flat colour with strong noise
        image = np.broadcast_to(colour_a, (height, width, 3)).copy()
        image += rng.normal(0.0, rng.uniform(4, 10), size=(height, width, 1)).astype(np.float32)
    elif kind == 1:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        image = colour_a + t[..., None] * (colour_b - colour_a)
    elif kind == 2:  # stripes at a random angle and period
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        mask = (np.floor(t / period) % 2)[..., None]
        image = colour_a + mask * (colour_b - colour_a)
    elif kind == 3:  # checkerboard
        cell = int(rng.integers(8, 48))
        mask = ((xs // cell + ys // cell) % 2)[..., None]
        image = colour_a + mask * (colour_b - colour_a)
    else:  # blurred patchwork of random colours
        grid = rng.integers(0, 256, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
        patch = Image.fromarray(grid.astype(np.uint8)).resize((width, height), Image.BILINEAR)
        image = np.asarray(patch, dtype=np.float32) * 0.6 + colour_a * 0.4
    return np.clip(image, 0, 255).astype(np.float32)


def _draw_clutter(rng, canvas):
    """Draw 0..3 unannotated distractors (strokes, arcs, thin rings) onto a PIL image in place."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    for _ in range(int(rng.integers(0, 4))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = rng.integers(0, 3)
        if kind == 0:  # polyline stroke
            points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height)))]
            for _ in range(int(rng.integers(1, 4))):
                x, y = points[-1]
                points.append((x + float(rng.normal(0, 40)), y + float(rng.normal(0, 40))))
            draw.line(points, fill=colour, width=int(rng.integers(1, 4)))
        else:  # open arc (kind 1) or thin full ring (kind 2): never a filled class shape
            radius = float(rng.uniform(8, 60))
            x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
            start = float(rng.uniform(0, 360))
            end = start + (float(rng.uniform(60, 270)) if kind == 1 else 360.0)
            draw.arc([x - radius, y - radius, x + radius, y + radius], start, end, fill=colour,
                     width=int(rng.integers(1, 3)))


# ----------------------------------------------------------------------------- shapes
def _polygon(name, rng):
    """Unit-size outline of a class shape centred at 0: array [V, 2] (x, y), radius about 1."""
    if name == "circle":
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if name == "triangle":
        angles = np.array([90, 210, 330]) * math.pi / 180
        return np.stack([np.cos(angles), -np.sin(angles)], axis=1)
    if name == "hexagon":  # the next two only in the LVIS-format set (data/synthetic_lvis.py)
        angles = np.arange(6) * math.pi / 3
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if name == "cross":  # a plus sign, arms a third of its width
        a = 1 / 3
        return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a],
                         [-1, -a], [-a, -a]], dtype=np.float64)
    # star: five points, inner radius ratio sampled so that stars are not pentagons
    inner = rng.uniform(0.38, 0.5)
    angles = np.arange(10) * math.pi / 5 - math.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _shape_points(name, side, rng):
    """Vertices [V, 2] of a rotated, mildly stretched shape whose tight box is about side x side."""
    points = _polygon(name, rng)
    if name != "circle":  # a rotated circle is the same circle (stretched below to an ellipse)
        angle = rng.uniform(0, 2 * math.pi)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        points = points @ rotation.T
    stretch = math.exp(rng.uniform(-0.25, 0.25))  # aspect ratio in about [0.78, 1.28]
    points = points * np.array([stretch, 1.0 / stretch])
    extent = points.max(axis=0) - points.min(axis=0)
    return (points - points.min(axis=0)) * (side / float(extent.max()))


def _rasterise(points, outline_width):
    """Rasterise a polygon with its min corner at 0: returns (fill mask, outline mask) bool [h, w]."""
    width = int(math.ceil(points[:, 0].max())) + 1
    height = int(math.ceil(points[:, 1].max())) + 1
    mask = Image.new("L", (width, height), 0)
    flat = [(float(x), float(y)) for x, y in points]
    ImageDraw.Draw(mask).polygon(flat, fill=255, outline=128 if outline_width else 255,
                                 width=max(outline_width, 1))
    values = np.asarray(mask)
    return values > 0, values == 128


def _pick_colour(rng, background_mean):
    """Random RGB colour far (>= 130 in RGB distance when possible) from the local background."""
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = _random_colour(rng)
        distance = float(np.linalg.norm(colour - background_mean))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= 130:
            break
    return best


def draw_image(rng, width, height, num_objects):
    """Draw one image.

    Args:
        rng: numpy Generator owned by this image.
        width, height: image size in pixels.
        num_objects: how many objects to try to place (0 gives a background-only image).
    Returns:
        image: uint8 array [height, width, 3].
        objects: list of (category index into CATEGORIES, [x, y, w, h] float box).
    """
    background = _background(rng, width, height)
    canvas = Image.fromarray(background.astype(np.uint8))
    _draw_clutter(rng, canvas)
    image = np.asarray(canvas, dtype=np.float32).copy()
    owner = np.full((height, width), -1, dtype=np.int32)  # index of the object visible per pixel
    full_area = []  # pixel count of each placed object's full shape
    visible = np.zeros(0, dtype=np.int64)  # pixel count of each placed object still visible
    objects = []
    for _ in range(num_objects):
        category = int(rng.integers(0, len(CATEGORIES)))
        side = math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE)))
        side = min(side, 0.9 * min(width, height))
        outline_width = int(rng.integers(1, 4)) if rng.random() < 0.4 else 0
        for attempt in range(24):
            if attempt and attempt % 8 == 0:  # crowded image: try a smaller object
                side = max(MIN_SIDE, side * 0.7)
            points = _shape_points(CATEGORIES[category]["name"], side, rng)
            fill, outline = _rasterise(points, outline_width)
            mask_h, mask_w = fill.shape
            if mask_w >= width or mask_h >= height:
                continue
            x0 = int(rng.integers(0, width - mask_w + 1))
            y0 = int(rng.integers(0, height - mask_h + 1))
            region = owner[y0:y0 + mask_h, x0:x0 + mask_w]
            covered = region[fill]
            covered = np.bincount(covered[covered >= 0], minlength=len(objects))
            if np.any(visible - covered < MIN_VISIBLE_FRACTION * np.asarray(full_area)):
                continue
            break
        else:
            continue  # no room for this object; the image gets one fewer
        patch = image[y0:y0 + mask_h, x0:x0 + mask_w]
        colour = _pick_colour(rng, patch.reshape(-1, 3).mean(axis=0))
        patch[fill] = colour
        if outline_width:
            patch[outline] = colour * rng.uniform(0.2, 0.5)  # darker rim
        region[fill] = len(objects)
        full_area.append(int(fill.sum()))
        visible = np.append(visible - covered, full_area[-1])
        ys, xs = np.nonzero(fill)
        box = [float(x0 + xs.min()), float(y0 + ys.min()),
               float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        objects.append((category, box))
    image += rng.normal(0.0, rng.uniform(0, 4), size=(height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def generate_image(seed, split, index):
    """Draw image `index` (0-based) of a split from its own generator: returns draw_image()'s tuple."""
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    width, height = IMAGE_SIZES[int(rng.integers(0, len(IMAGE_SIZES)))]
    num_objects = 0 if index % EMPTY_EVERY == EMPTY_OFFSET else int(rng.integers(1, 16))
    return draw_image(rng, width, height, num_objects)


# ----------------------------------------------------------------------------- files
def _write_split(out_dir, split, num_images, seed):
    """Write out_dir/split/*.png and out_dir/annotations/instances_<split>.json."""
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        pixels, objects = generate_image(seed, split, index)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(os.path.join(out_dir, split, file_name), compress_level=1)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name,
                       "width": int(pixels.shape[1]), "height": int(pixels.shape[0])})
        for category, box in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": CATEGORIES[category]["id"], "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    content = {"info": {"description": "focaldet synthetic shapes", "version": GENERATOR_VERSION},
               "licenses": [], "images": images, "annotations": annotations,
               "categories": CATEGORIES}
    with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as handle:
        json.dump(content, handle)


def _paths(root):
    return {"train_images": os.path.join(root, "train"),
            "train_ann": os.path.join(root, "annotations", "instances_train.json"),
            "val_images": os.path.join(root, "val"),
            "val_ann": os.path.join(root, "annotations", "instances_val.json")}


def _is_complete(root, params, paths):
    try:
        with open(os.path.join(root, "params.json")) as handle:
            recorded = json.load(handle)
    except (OSError, ValueError):
        return False
    return recorded == params and all(os.path.exists(p) for p in paths.values())


def ensure_generated(root, params, write, paths):
    """Generate a dataset under `root` with write(folder) unless one with these `params` is complete there.

    write(folder) draws every file into `folder` (a temporary folder inside root); its top-level entries then
    replace root's, and root/params.json (the parameters, written last, so its presence marks a complete dataset)
    is written. A dataset with other parameters is replaced. Several processes may call this at once (torchrun):
    an exclusive lock on root/.lock serialises them (flock: local file systems only), and the files are drawn
    into the temporary folder and then moved into place. Returns `paths`.
    """
    os.makedirs(root, exist_ok=True)
    if _is_complete(root, params, paths):
        return paths
    with open(os.path.join(root, ".lock"), "w") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, the rename still avoids half-written files
            pass
        if not _is_complete(root, params, paths):  # another process may have finished meanwhile
            temporary = tempfile.mkdtemp(prefix=".generating-", dir=root)
            try:
                write(temporary)
                params_path = os.path.join(root, "params.json")
                if os.path.exists(params_path):
                    os.remove(params_path)
                for name in sorted(os.listdir(temporary)):
                    target = os.path.join(root, name)
                    if os.path.exists(target):
                        shutil.rmtree(target)
                    os.rename(os.path.join(temporary, name), target)
                with open(params_path + ".tmp", "w") as handle:
                    json.dump(params, handle)
                os.replace(params_path + ".tmp", params_path)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
    return paths


def ensure_shapes_dataset(root, num_train=1200, num_val=200, seed=0):
    """Create the shapes dataset under `root` unless an identical one is already there (ensure_generated).

    Writes root/{train,val}/*.png, root/annotations/instances_{train,val}.json and root/params.json.
    Returns:
        dict with keys 'train_images', 'train_ann', 'val_images', 'val_ann' (paths).
    """
    params = {"num_train": int(num_train), "num_val": int(num_val), "seed": int(seed),
              "version": GENERATOR_VERSION}

    def write(folder):
        os.makedirs(os.path.join(folder, "annotations"))
        _write_split(folder, "train", num_train, seed)
        _write_split(folder, "val", num_val, seed)
    return ensure_generated(root, params, write, _paths(root))


def main():
    parser = argparse.ArgumentParser(description="Write the synthetic shapes dataset (COCO format).")
    parser.add_argument("--root", default="datasets/shapes")
    parser.add_argument("--num-train", type=int, default=1200)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    paths = ensure_shapes_dataset(args.root, args.num_train, args.num_val, args.seed)
    print(f"shapes dataset ready in {time.time() - start:.1f} s:")
    for key, value in paths.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
