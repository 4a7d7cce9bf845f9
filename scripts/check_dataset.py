"""Check a dataset before a long run: every problem of its annotation files and images, counted, with examples.

    python scripts/check_dataset.py --config gfl_r50.yaml                  # the train and val splits of a config
    python scripts/check_dataset.py --config gfl_r50.yaml --split train --decode data.train_ann=...

Errors: duplicate ids, unknown images or categories, malformed, non-finite or negative boxes, incomplete
entries, missing or unreadable images, images whose size is not the JSON's. Warnings: boxes under 1 px or
outside their image, images without boxes, one file named by several images. Then per category the boxes and
images, and a histogram of the images' longer sides (data/dataset_check.py). Exit status 1 when a split has
an error (training would refuse it or read garbage), 0 otherwise. Training runs the annotation part at start.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.build import check_data_config, dataset_paths  # noqa: E402
from data.coco import DatasetError  # noqa: E402
from data.dataset_check import check_annotations, check_images  # noqa: E402
from detector.config import load_config  # noqa: E402
from detector.errors import run_cli  # noqa: E402


def read_annotations(ann_file):
    """The parsed JSON, or a DatasetError for a missing or malformed file (whose entries cannot be checked)."""
    if not os.path.isfile(ann_file):
        raise DatasetError(f"{ann_file}: annotation file not found")
    try:
        with open(ann_file) as handle:
            content = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"{ann_file}: malformed JSON ({error})") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in content] \
        if isinstance(content, dict) else ["an object at the top level"]
    if missing:
        raise DatasetError(f"{ann_file}: lacks {missing}")
    return content


def check_split(image_dir, ann_file, decode):
    """The full DatasetReport of one split (annotations, then every image file)."""
    content = read_annotations(ann_file)
    report = check_annotations(content, ann_file)
    return check_images(report, content, image_dir, decode=decode)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file, or a name inside configs/")
    parser.add_argument("--split", choices=("train", "val", "both"), default="both")
    parser.add_argument("--decode", action="store_true", help="decode every image's pixels (slow; default: "
                                                             "header and Pillow's verify)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides (e.g. data.train_ann=...)")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_data_config(cfg.data)
    train_images, train_ann, val_images, val_ann = dataset_paths(cfg.data)
    splits = {"train": (train_images, train_ann), "val": (val_images, val_ann)}
    failed = False
    for split in ("train", "val") if args.split == "both" else (args.split,):
        started = time.time()
        report = check_split(*splits[split], args.decode)
        print(f"== {split} ({time.time() - started:.1f} s)\n{report.summary()}\n")
        failed |= bool(report.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
