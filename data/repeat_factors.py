"""Class frequencies of a training set, LVIS frequency groups, and repeat-factor sampling (RFS).

Repeat-factor sampling (Gupta et al. 2019, LVIS; REFERENCE.md): with f_c the fraction of training images that
contain class c and a threshold t (LVIS: 0.001), image i is repeated

    r_i = max over the classes c in image i of max(1, sqrt(t / f_c))

times per epoch, a fractional r_i by stochastic rounding drawn anew each epoch (data/samplers.py does the drawing,
composed with its aspect grouping and rank sharding). An image without a class has r_i = 1. Classes are those of
an image's non-crowd boxes (crowd boxes are ignore regions, never positives).

Frequency groups by the number of training images that contain a class, as LVIS defines them: rare 1-10 images,
common 11-100, frequent more than 100. LVIS files state the group of each category ('frequency', counted on the
full LVIS train set); the dataset's own counts are used where a file does not (COCO-format sets).
"""
import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def image_class_sets(dataset):
    """Sorted unique labels of each item's non-crowd boxes (dataset.annotations(index) -> boxes, labels, crowd)."""
    class_sets = []
    for index in range(len(dataset)):
        _, labels, crowd = dataset.annotations(index)
        class_sets.append(np.unique(np.asarray(labels)[~np.asarray(crowd, dtype=bool)]))
    return class_sets


def images_per_class(class_sets, num_classes):
    """[C] int: how many items contain each class."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for classes in class_sets:
        counts[classes] += 1
    return counts


def frequency_group(image_count):
    """'r' (1-10 images), 'c' (11-100) or 'f' (more than 100), LVIS's groups; 'r' also for 0."""
    return "r" if image_count <= 10 else "c" if image_count <= 100 else "f"


def repeat_factors(class_sets, num_classes, threshold):
    """Repeat factor r_i of every item (list of floats >= 1); see the module docstring."""
    if not 0 < threshold <= 1:
        raise ValueError(f"repeat threshold must be in (0, 1], got {threshold}")
    fractions = images_per_class(class_sets, num_classes) / max(len(class_sets), 1)                # f_c [C]
    class_factors = np.maximum(1.0, np.sqrt(threshold / np.maximum(fractions, 1e-12)))           # [C]
    return [float(class_factors[classes].max()) if len(classes) else 1.0 for classes in class_sets]


def expected_copies(factors):
    """Expected number of items per epoch under stochastic rounding of `factors`: their sum."""
    return float(math.fsum(factors))


def log_class_statistics(class_sets, class_names, file_groups=None, factors=None, threshold=None,
                         batches_without=None, batches_with=None):
    """Log, once at the start of training: images per class by frequency group, the rarest classes, and with RFS
    the repeat factors and the epoch length with and without them.

    Args:
        class_sets: per item, the classes it contains (image_class_sets).
        class_names: names in label order.
        file_groups: per label 'r' / 'c' / 'f' from the annotation file (LVIS), or None to group by these counts.
        factors: repeat factors per item, or None without RFS. threshold: RFS's t.
        batches_without, batches_with: batches per epoch without and with RFS, all ranks together.
    """
    counts = images_per_class(class_sets, len(class_names))
    groups = list(file_groups) if file_groups is not None else [frequency_group(count) for count in counts]
    source = "the annotation file's" if file_groups is not None else "these counts'"
    parts = []
    for group, name in GROUP_NAMES.items():
        members = [label for label, label_group in enumerate(groups) if label_group == group]
        if members:
            images = counts[members]
            parts.append(f"{name} {len(members)} (images per class {images.min()}-{images.max()}, "
                         f"median {int(np.median(images))})")
    logger.info("train classes by images containing them, %s LVIS groups (rare 1-10, common 11-100, frequent "
                ">100): %s; %d classes without a training image", source, "; ".join(parts) or "none",
                int((counts == 0).sum()))
    rarest = np.argsort(counts, kind="stable")[:5]
    logger.info("rarest classes: %s", ", ".join(f"{class_names[label]} ({counts[label]})" for label in rarest))
    if factors is None:
        return
    factors = np.asarray(factors)
    repeated = factors > 1
    logger.info("repeat-factor sampling (t = %g): %d of %d images repeated (r up to %.2f, mean %.3f); an epoch is "
                "%.0f images = %s batches over all ranks (without it: %d images = %s)", threshold, int(repeated.sum()),
                len(factors), float(factors.max(initial=1.0)), float(factors.mean()) if len(factors) else 1.0,
                expected_copies(factors), batches_with, len(factors), batches_without)
