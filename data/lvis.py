"""LVIS v1 (and LVIS-format files): the dataset of `data.dataset: lvis` and its index for LVISEval.

LVIS shares COCO's layout, so training items are CocoDetection's: images have no `file_name`, and the path after
the host in `coco_url` ('train2017/000000391895.jpg') is read relative to the image folder (datasets/coco: LVIS v1
val takes images from both COCO folders); annotations have no `iscrowd` (0). What LVIS adds is evaluation data:

* federated annotation: per image, `neg_category_ids` (verified absent: a detection of them is a false positive)
  and `not_exhaustive_category_ids` (present, not every instance annotated: an unmatched detection is ignored);
  a detection of any other category not annotated in the image is not evaluated at all;
* `frequency` per category: 'r' rare (1-10 train images), 'c' common (11-100), 'f' frequent (> 100), giving APr,
  APc and APf.

Both are read by the `lvis` package's LVISEval through `LvisDetection.lvis` (data/evaluation.py, lvis_evaluate),
built on first use on the process that evaluates. `check_lvis_format` checks them at start, with one-line errors.
"""
import logging

from data.coco import CocoDetection, DatasetError, load_and_validate

FREQUENCIES = ("r", "c", "f")


def check_lvis_format(content, ann_file):
    """The LVIS keys that LVISEval needs, checked on a parsed file; a DatasetError names the file and the entry."""
    category_ids = set()
    for category in content["categories"]:
        if category.get("frequency") not in FREQUENCIES:
            raise DatasetError(f"{ann_file}: category {category['id']} has frequency {category.get('frequency')!r}, "
                               f"expected one of {list(FREQUENCIES)} (an LVIS-format file; data.dataset=coco reads "
                               f"COCO-format files)")
        category_ids.add(category["id"])
    for image in content["images"]:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            values = image.get(key)
            if not isinstance(values, list):
                raise DatasetError(f"{ann_file}: image {image['id']} lacks the list '{key}' of LVIS's federated "
                                   f"annotation (an LVIS-format file; data.dataset=coco reads COCO-format files)")
            unknown = [value for value in values if value not in category_ids]
            if unknown:
                raise DatasetError(f"{ann_file}: image {image['id']}: {key} names unknown categories {unknown[:5]}")
    for annotation in content["annotations"]:
        if "area" not in annotation:  # LVISEval's area ranges read it (LVIS: the mask area); the box area here
            annotation["area"] = annotation["bbox"][2] * annotation["bbox"][3]


def lvis_from_dict(content):
    """lvis.LVIS index of a parsed file, without a second read; masks are dropped (box evaluation only)."""
    from data.lvis_compat import LVIS  # on first use: the lvis package loads OpenCV and matplotlib
    for annotation in content["annotations"]:
        annotation.pop("segmentation", None)
    index = LVIS.__new__(LVIS)  # LVIS.__init__ reads a path; the parsed dict is at hand
    index.logger = logging.getLogger("lvis.lvis")
    index.dataset = content
    index._create_index()
    return index


class LvisDetection(CocoDetection):
    """An LVIS-format annotation file: CocoDetection's items, plus `lvis` (lvis.LVIS of the file, built on first use:
    evaluation on rank 0) and `check_lvis_format()`. Arguments as CocoDetection."""

    def __init__(self, image_dir, ann_file, transforms=None, remove_images_without_annotations=False,
                 class_names=None):
        super().__init__(image_dir, ann_file, transforms, remove_images_without_annotations, class_names)
        self._lvis = None

    def check_lvis_format(self):
        """Read the file again and check its LVIS keys (before a run: a bad file fails at start, not at its end)."""
        check_lvis_format(load_and_validate(self.ann_file), self.ann_file)

    @property
    def lvis(self):
        if self._lvis is None:
            content = load_and_validate(self.ann_file)
            check_lvis_format(content, self.ann_file)
            self._lvis = lvis_from_dict(content)
        return self._lvis

    def __getstate__(self):  # a DataLoader worker never receives the evaluation index
        state = dict(super().__getstate__() or self.__dict__)
        state["_lvis"] = None
        return state
