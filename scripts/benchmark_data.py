"""Data pipeline speed: training images per second that one DataLoader worker prepares, and where the time goes.

    python scripts/benchmark_data.py                       # coco128 (../shared/datasets) at COCO's 1333x800
    python scripts/benchmark_data.py --config shapes_gfl_r18.yaml --images 200

Runs the training dataset's __getitem__ (decode, resize, flip, normalise: what a worker does) in this process
with one thread, as a worker has, and times the stages apart: JPEG/PNG decoding with Pillow (what the dataset
uses) and with torchvision.io.decode_image (libjpeg-turbo, no Pillow-SIMD needed), Pillow's bilinear resize, and
normalisation. Prints images/s per worker and ms per image for each, with the CPU beside them.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.build import build_dataset  # noqa: E402
from data.transforms import Normalize  # noqa: E402
from detector.config import load_config  # noqa: E402
from detector.cpu import cpu_capability, cpu_model  # noqa: E402

COCO128 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets",
                       "coco128")


def per_image_ms(function, count, repeats=3):
    """Median over `repeats` passes of the wall time per call of function(i), i in range(count), in ms."""
    passes = []
    for _ in range(repeats):
        started = time.perf_counter()
        for index in range(count):
            function(index)
        passes.append((time.perf_counter() - started) / count * 1000)
    return statistics.median(passes)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="gfl_r50.yaml", help="its data section (default COCO's 1333x800)")
    parser.add_argument("--data", default=COCO128, help="a COCO-format folder (images/, annotations/) when the "
                        "config's dataset is coco")
    parser.add_argument("--images", type=int, default=64, help="images per timed pass")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker's setting
    overrides = list(args.overrides)
    if load_config(args.config).data.dataset == "coco":
        overrides = [f"data.train_images={args.data}/images", f"data.val_images={args.data}/images",
                     f"data.train_ann={args.data}/annotations/instances_train.json",
                     f"data.val_ann={args.data}/annotations/instances_val.json"] + overrides
    cfg = load_config(args.config, overrides)
    dataset = build_dataset(cfg.data, train=True)
    count = min(args.images, len(dataset))
    paths = [os.path.join(dataset.image_dir, dataset.file_name(index)) for index in range(count)]
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image, read_file

    def pillow_decode(index):
        with Image.open(paths[index]) as image:
            return image.convert("RGB")

    decoded = [pillow_decode(index) for index in range(count)]
    resize = dataset.transforms.transforms[0]          # Resize, as configured
    size_of = {}

    def pillow_resize(index):
        image = decoded[index]
        target = {"boxes": torch.zeros(0, 4), "size": image.size[::-1]}
        size_of[index] = resize(image, target)[0]

    pillow_resize(0)
    for index in range(count):
        pillow_resize(index)
    normalize = Normalize()
    rows = [
        ("whole __getitem__ (Pillow decode, resize, flip, normalise)", per_image_ms(dataset.__getitem__, count)),
        ("  decode: Pillow", per_image_ms(pillow_decode, count)),
        ("  decode: torchvision.io.decode_image", per_image_ms(
            lambda i: decode_image(read_file(paths[i]), mode=ImageReadMode.RGB), count)),
        ("  resize: Pillow bilinear", per_image_ms(pillow_resize, count)),
        ("  normalise", per_image_ms(lambda i: normalize(size_of[i], None), count)),
    ]
    sizes = [image.size for image in size_of.values()]
    print(f"{cfg.name} data on {args.data if cfg.data.dataset == 'coco' else cfg.data.dataset}: {count} training "
          f"images resized to {max(cfg.data.train_short_sides)} short side, at most {cfg.data.max_size} "
          f"(e.g. {sizes[0][0]}x{sizes[0][1]}); one thread; {cpu_model()}, ATen capability {cpu_capability()}")
    for name, milliseconds in rows:
        print(f"{name:<60} {milliseconds:7.1f} ms/image {1000 / milliseconds:7.1f} images/s per worker")


if __name__ == "__main__":
    main()
