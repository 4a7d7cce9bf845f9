"""COCO-format detection dataset (also reads LVIS files, which share the layout).

Rules applied when the annotation file is loaded (counts are logged once, and kept in `self.stats`):
* The raw JSON is validated first; every problem raises `DatasetError` with a one-line message that
  names the file and the image or annotation id: missing file, malformed JSON, missing top-level or
  per-entry keys, duplicate image / annotation / category ids, an annotation whose image or category
  is not listed, a bbox that is not 4 numbers, has a NaN/inf coordinate or a negative width/height.
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
import math
import os
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from data.transforms import Normalize
from detector.errors import UserError

logger = logging.getLogger(__name__)


class DatasetError(UserError, ValueError):
    """A problem in a dataset's files, with a message naming the file and the image/annotation id."""


def _require(entry, keys, ann_file, what):
    missing = [key for key in keys if key not in entry]
    if missing:
        raise DatasetError(f"{ann_file}: {what} lacks required key(s) {missing}")


def _image_file_name(image):
    """File name of an image entry: `file_name`, or (LVIS) the path of `coco_url` after the host."""
    if "file_name" in image:
        return image["file_name"]
    return urlparse(image["coco_url"]).path.lstrip("/")


def load_and_validate(ann_file):
    """Read a COCO/LVIS instances JSON and check it; returns the parsed dict.

    Raises:
        DatasetError: see the module docstring for the list of checks.
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

    category_ids = set()
    for category in content["categories"]:
        _require(category, ("id", "name"), ann_file, f"category {category.get('id', '?')}")
        if category["id"] in category_ids:
            raise DatasetError(f"{ann_file}: duplicate category id {category['id']}")
        category_ids.add(category["id"])

    image_ids = set()
    for image in content["images"]:
        image_id = image.get("id", "?")
        _require(image, ("id", "width", "height"), ann_file, f"image {image_id}")
        if "file_name" not in image and "coco_url" not in image:
            raise DatasetError(f"{ann_file}: image {image_id} has neither file_name nor coco_url")
        if image_id in image_ids:
            raise DatasetError(f"{ann_file}: duplicate image id {image_id}")
        image_ids.add(image_id)

    annotation_ids = set()
    for annotation in content["annotations"]:
        annotation_id = annotation.get("id", "?")
        _require(annotation, ("id", "image_id", "category_id", "bbox"), ann_file,
                 f"annotation {annotation_id}")
        where = f"{ann_file}: annotation {annotation_id} (image {annotation['image_id']})"
        if annotation_id in annotation_ids:
            raise DatasetError(f"{where}: duplicate annotation id")
        annotation_ids.add(annotation_id)
        if annotation["image_id"] not in image_ids:
            raise DatasetError(f"{where}: image id not in images")
        if annotation["category_id"] not in category_ids:
            raise DatasetError(f"{where}: category id {annotation['category_id']} not in categories")
        box = annotation["bbox"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise DatasetError(f"{where}: bbox {box!r} is not 4 numbers")
        if not all(math.isfinite(v) for v in box):
            raise DatasetError(f"{where}: bbox {box} has a non-finite coordinate")
        if box[2] < 0 or box[3] < 0:
            raise DatasetError(f"{where}: bbox {box} has a negative width or height")
    return content


def coco_from_dict(content):
    """Build a pycocotools COCO index from an already parsed dict (no second JSON read, no prints)."""
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Detection dataset over a COCO-format annotation file.

    Args:
        image_dir: folder that `file_name` is relative to.
        ann_file: instances JSON (COCO or LVIS layout).
        transforms: callable (PIL image, target) -> (tensor [3, H, W], target); None normalises only.
        remove_images_without_annotations: drop images with no usable non-crowd box (training).
        class_names: optional subset of category names to use; annotations of the other
            categories are skipped (and counted). An unknown name raises DatasetError.
    Attributes:
        coco: pycocotools COCO over the whole file (for evaluation).
        image_ids: image ids of the items, in item order.
        cat_ids: sorted dataset category ids; contiguous label i <-> cat_ids[i].
        cat_id_to_label: dict dataset category id -> contiguous label.
        class_names: names in label order. num_classes: len(cat_ids).
        stats: counts from loading (see the module docstring).
    Item:
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
        content = load_and_validate(ann_file)
        self.coco = coco_from_dict(content)

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
        self.image_ids, self._entries = [], []
        for image in content["images"]:
            entry = self._parse_image(image, self.coco.imgToAnns.get(image["id"], []))
            if remove_images_without_annotations and not (~entry["crowd"]).any():
                self.stats["images_dropped_empty"] += 1
                continue
            self.image_ids.append(image["id"])
            self._entries.append(entry)
        logger.info("%s: %d of %d images kept (%d dropped without a usable box); %d boxes: "
                    "%d clipped to the image, %d dropped under 1 px, %d crowd kept as ignore, "
                    "%d of unused classes skipped", ann_file, len(self.image_ids),
                    self.stats["images"], self.stats["images_dropped_empty"], self.stats["boxes"],
                    self.stats["boxes_clipped"], self.stats["boxes_dropped_small"],
                    self.stats["crowd_boxes"], self.stats["boxes_other_class"])

    def _parse_image(self, image, annotations):
        """Clip/drop one image's boxes; returns a dict of numpy arrays and file information."""
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
        return {"file_name": _image_file_name(image), "width": width, "height": height,
                "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                "labels": np.asarray(labels, dtype=np.int64), "crowd": np.asarray(crowd, dtype=bool)}

    def __len__(self):
        return len(self.image_ids)

    def aspect_ratios(self):
        """Width / height of every item, from the JSON (no image decoding)."""
        return [entry["width"] / entry["height"] for entry in self._entries]

    def load_image(self, index):
        """Decode item `index` as an RGB PIL image; DatasetError names the file and image id."""
        entry, image_id = self._entries[index], self.image_ids[index]
        path = os.path.join(self.image_dir, entry["file_name"])
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: image file not found (image {image_id})")
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")  # forces a full decode
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{path}: unreadable image (image {image_id}): {error}") from None
        if image.size != (entry["width"], entry["height"]):
            raise DatasetError(f"{path}: size {image.size[0]}x{image.size[1]} differs from the "
                               f"annotation's {entry['width']}x{entry['height']} (image {image_id})")
        return image

    def __getitem__(self, index):
        entry = self._entries[index]
        image = self.load_image(index)
        target = {"boxes": torch.from_numpy(entry["boxes"].copy()),
                  "labels": torch.from_numpy(entry["labels"].copy()),
                  "crowd": torch.from_numpy(entry["crowd"].copy()),
                  "image_id": int(self.image_ids[index]),
                  "orig_size": (entry["height"], entry["width"]),
                  "size": (entry["height"], entry["width"]),
                  "scale_factor": (1.0, 1.0)}
        return self.transforms(image, target)
