"""COCO-format detection dataset (also reads LVIS files, which share the layout).

Rules applied when the annotation file is loaded (counts are logged once, and kept in `self.stats`):
* The raw JSON is validated first (data/dataset_check.py, the cheap part of scripts/check_dataset.py): an
  error raises `DatasetError` with a one-line message that names the file, the image or annotation id and
  how many more errors there are: missing file, malformed JSON, missing top-level or per-entry keys,
  duplicate image / annotation / category ids, an annotation whose image or category is not listed, a bbox
  that is not 4 numbers, has a NaN/inf coordinate or a negative width/height. Warnings (boxes under 1 px
  or outside the image, images without boxes, a file named twice) are counted in one log line.
* Boxes are clipped to the image (the width/height in the JSON); boxes under 1 px wide or high after
  clipping are dropped and counted.
* Crowd annotations (`iscrowd` 1) are kept with `crowd` True: ignore regions, never positives.
* With `remove_images_without_annotations=True` (the training default) images without any usable
  non-crowd box are dropped and counted; evaluation keeps every image.
* Images are decoded with Pillow and converted to RGB (grayscale, palette and RGBA files included);
  EXIF orientation is not applied (COCO boxes refer to the stored pixels). A file that is missing,
  unreadable, or whose size differs from the JSON raises `DatasetError` when the item is read.
* LVIS images have no `file_name`: the path after the host in `coco_url` is used instead
  (e.g. 'val2017/000000000139.jpg', relative to `image_dir`). Missing `iscrowd` means 0.
"""
import contextlib
import io
import json
import logging
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from data.dataset_check import check_annotations, file_name_of
from data.transforms import Normalize
from detector.errors import UserError

logger = logging.getLogger(__name__)


class DatasetError(UserError, ValueError):
    """A problem in a dataset's files, with a message naming the file and the image/annotation id."""


def _require(entry, keys, ann_file, what):
    missing = [key for key in keys if key not in entry]
    if missing:
        raise DatasetError(f"{ann_file}: {what} lacks required key(s) {missing}")


def load_annotations(ann_file):
    """Read a COCO/LVIS instances JSON and check it (data/dataset_check.py): (parsed dict, DatasetReport).

    Raises:
        DatasetError: the file is missing or malformed, or holds an error (the first one, and how many more).
    """
    if not os.path.isfile(ann_file):
        raise DatasetError(f"{ann_file}: annotation file not found")
    try:
        with open(ann_file) as handle:
            content = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise DatasetError(f"{ann_file}: malformed JSON ({error})") from None
    if not isinstance(content, dict):
        raise DatasetError(f"{ann_file}: top level is a {type(content).__name__}, expected an object")
    _require(content, ("images", "annotations", "categories"), ann_file, "top level")
    report = check_annotations(content, ann_file)
    if report.errors:
        raise DatasetError(report.first_error())
    return content, report


def load_and_validate(ann_file):
    """The parsed dict of a checked annotation file (load_annotations without the report)."""
    return load_annotations(ann_file)[0]


def coco_from_dict(content):
    """Build a pycocotools COCO index from an already parsed dict (no second JSON read, no prints)."""
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Detection dataset over a COCO-format annotation file, held as a few flat NumPy arrays.

    Args:
        image_dir: folder that `file_name` is relative to.
        ann_file: instances JSON (COCO or LVIS layout).
        transforms: callable (PIL image, target) -> (tensor [3, H, W], target); None normalises only.
        remove_images_without_annotations: drop images with no usable non-crowd box (training).
        class_names: optional subset of category names to use; annotations of the other
            categories are skipped (and counted). An unknown name raises DatasetError.
    Attributes:
        cat_ids: sorted dataset category ids; contiguous label i <-> cat_ids[i].
        cat_id_to_label: dict dataset category id -> contiguous label.
        class_names: names in label order. num_classes: len(cat_ids).
        stats: counts from loading (see the module docstring).
        image_ids: image ids of the items, in item order (a list made on demand).
        coco: pycocotools COCO of the whole file, built on first use from the file (for evaluation); never
            part of the dataset a DataLoader worker receives.
    Storage (detectron2's remedy for the copy-on-read growth of DataLoader workers): after loading, the images
    and boxes live in flat arrays (ids, sizes, one UTF-8 buffer of file names with offsets, boxes [N_boxes, 4],
    labels, crowd flags and per-image offsets into them). A forked worker that reads a Python list of dicts
    touches every object's reference count and copies the pages it reads; reading these arrays copies nothing.
    Item (index, or (index, seed): the image's augmentation is drawn from torch's generator seeded with `seed`,
    data/sample_seeds.py):
        image: float tensor [3, H, W], normalised (see data.transforms.Normalize).
        target: dict with
            'boxes' float [N, 4] xyxy pixels of the transformed image, 'labels' long [N] contiguous,
            'crowd' bool [N], 'image_id' int, 'orig_size' (h, w) of the file,
            'size' (h, w) after resizing (before batch padding), 'scale_factor' (w, h) resized / original.
    """

    def __init__(self, image_dir, ann_file, transforms=None, remove_images_without_annotations=False,
                 class_names=None):
        self.image_dir = image_dir
        self.ann_file = ann_file
        self.transforms = transforms if transforms is not None else Normalize()
        self._coco = None
        content, report = load_annotations(ann_file)
        if report.warnings_line():
            logger.info(report.warnings_line())

        categories = sorted(content["categories"], key=lambda category: category["id"])
        if class_names is not None:
            known = {category["name"]: category for category in categories}
            unknown = [name for name in class_names if name not in known]
            if unknown:
                raise DatasetError(f"{ann_file}: class names {unknown} not in categories "
                                   f"(valid: {sorted(known)})")
            categories = [category for category in categories if category["name"] in class_names]
        self.cat_ids = [category["id"] for category in categories]
        self.class_names = [category["name"] for category in categories]
        self.num_classes = len(self.cat_ids)
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}

        self.stats = {"images": len(content["images"]), "boxes": len(content["annotations"]),
                      "boxes_clipped": 0, "boxes_dropped_small": 0, "boxes_other_class": 0,
                      "crowd_boxes": 0, "images_dropped_empty": 0}
        annotations_of = {}
        for annotation in content["annotations"]:
            annotations_of.setdefault(annotation["image_id"], []).append(annotation)
        kept = []  # (image id, width, height, file name, boxes [n, 4], labels [n], crowd [n]) of kept images
        for image in content["images"]:
            boxes, labels, crowd = self._parse_boxes(image, annotations_of.get(image["id"], []))
            if remove_images_without_annotations and not (~crowd).any():
                self.stats["images_dropped_empty"] += 1
                continue
            kept.append((image["id"], image["width"], image["height"], file_name_of(image), boxes, labels, crowd))
        del content, annotations_of
        self._store(kept)
        logger.info("%s: %d of %d images kept (%d dropped without a usable box); %d boxes: "
                    "%d clipped to the image, %d dropped under 1 px, %d crowd kept as ignore, "
                    "%d of unused classes skipped", ann_file, len(self),
                    self.stats["images"], self.stats["images_dropped_empty"], self.stats["boxes"],
                    self.stats["boxes_clipped"], self.stats["boxes_dropped_small"],
                    self.stats["crowd_boxes"], self.stats["boxes_other_class"])

    def _store(self, kept):
        """The kept images as flat arrays; per-image slices are [box_offsets[i], box_offsets[i + 1])."""
        self._image_ids = np.array([item[0] for item in kept], dtype=np.int64)                    # [N]
        self._sizes = np.array([(item[2], item[1]) for item in kept], dtype=np.int64).reshape(-1, 2)  # [N, 2] (h, w)
        names = [item[3].encode("utf-8") for item in kept]
        self._name_offsets = np.cumsum([0] + [len(name) for name in names], dtype=np.int64)       # [N + 1]
        self._names = np.frombuffer(b"".join(names), dtype=np.uint8).copy()                         # UTF-8 bytes
        self._box_offsets = np.cumsum([0] + [len(item[4]) for item in kept], dtype=np.int64)      # [N + 1]
        self._boxes = np.concatenate([item[4] for item in kept] or [np.zeros((0, 4), np.float32)])  # [N_boxes, 4]
        self._labels = np.concatenate([item[5] for item in kept] or [np.zeros(0, np.int64)])       # [N_boxes]
        self._crowd = np.concatenate([item[6] for item in kept] or [np.zeros(0, bool)])           # [N_boxes]

    def _parse_boxes(self, image, annotations):
        """Clip/drop one image's boxes: (boxes float32 [n, 4] xyxy, labels int64 [n], crowd bool [n])."""
        width, height = image["width"], image["height"]
        boxes, labels, crowd = [], [], []
        for annotation in annotations:
            if annotation["category_id"] not in self.cat_id_to_label:
                self.stats["boxes_other_class"] += 1
                continue
            x, y, w, h = annotation["bbox"]
            clipped = [min(max(x, 0.0), width), min(max(y, 0.0), height),
                       min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]
            if clipped != [x, y, x + w, y + h]:
                self.stats["boxes_clipped"] += 1
            if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
                self.stats["boxes_dropped_small"] += 1
                continue
            is_crowd = bool(annotation.get("iscrowd", 0))
            self.stats["crowd_boxes"] += is_crowd
            boxes.append(clipped)
            labels.append(self.cat_id_to_label[annotation["category_id"]])
            crowd.append(is_crowd)
        return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
                np.asarray(crowd, dtype=bool))

    def __len__(self):
        return len(self._image_ids)

    @property
    def image_ids(self):
        return self._image_ids.tolist()

    @property
    def coco(self):
        """pycocotools COCO of the annotation file (read again, on first use: evaluation, not training)."""
        if self._coco is None:
            self._coco = coco_from_dict(load_and_validate(self.ann_file))
        return self._coco

    def __getstate__(self):  # a spawned worker receives the arrays, never the COCO index
        return {**self.__dict__, "_coco": None}

    def file_name(self, index):
        """File name of item `index`, relative to image_dir."""
        return self._names[self._name_offsets[index]:self._name_offsets[index + 1]].tobytes().decode("utf-8")

    def files_of(self, image_ids):
        """Paths of the images with these ids (for messages about a batch)."""
        wanted = {int(image_id) for image_id in image_ids}
        positions = {int(image_id): index for index, image_id in enumerate(self._image_ids) if int(image_id) in wanted}
        return [os.path.join(self.image_dir, self.file_name(positions[i])) if i in positions else "?"
                for i in image_ids]

    def annotations(self, index):
        """(boxes float32 [n, 4] xyxy of the file, labels int64 [n] contiguous, crowd bool [n]) of item `index`."""
        start, end = self._box_offsets[index], self._box_offsets[index + 1]
        return self._boxes[start:end], self._labels[start:end], self._crowd[start:end]

    def aspect_ratios(self):
        """Width / height of every item, from the JSON (no image decoding)."""
        return (self._sizes[:, 1] / self._sizes[:, 0]).tolist()

    def load_image(self, index):
        """Decode item `index` as an RGB PIL image; DatasetError names the file and image id."""
        image_id = int(self._image_ids[index])
        height, width = (int(v) for v in self._sizes[index])
        path = os.path.join(self.image_dir, self.file_name(index))
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: image file not found (image {image_id})")
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")  # forces a full decode
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{path}: unreadable image (image {image_id}): {error}") from None
        if image.size != (width, height):
            raise DatasetError(f"{path}: size {image.size[0]}x{image.size[1]} differs from the "
                               f"annotation's {width}x{height} (image {image_id})")
        return image

    def __getitem__(self, index):
        seed = None
        if isinstance(index, tuple):  # (index, seed) from data.sample_seeds.SeededBatchSampler
            index, seed = index
        image = self.load_image(index)
        boxes, labels, crowd = self.annotations(index)
        height, width = (int(v) for v in self._sizes[index])
        target = {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(labels.copy()),
                  "crowd": torch.from_numpy(crowd.copy()), "image_id": int(self._image_ids[index]),
                  "orig_size": (height, width), "size": (height, width), "scale_factor": (1.0, 1.0)}
        if seed is None:
            return self.transforms(image, target)
        with torch.random.fork_rng(devices=[]):  # this image's draws alone; the process's generator is untouched
            torch.manual_seed(seed)
            return self.transforms(image, target)
