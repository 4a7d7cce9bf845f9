"""Datasets, loaders and evaluators from the `data` section of the config (shared by train.py and eval.py)."""
import functools
import logging
import os

import torch
from torch.utils.data import DataLoader

from data.coco import CocoDetection, DatasetError
from data.collate import collate
from data.evaluation import coco_evaluate, lvis_evaluate
from data.lvis import LvisDetection
from data.repeat_factors import image_class_sets, log_class_statistics, repeat_factors
from data.sample_seeds import SeededBatchSampler
from data.samplers import build_test_sampler, build_train_batch_sampler
from data.synthetic import ensure_shapes_dataset
from data.synthetic_lvis import ensure_shapes_lvis_dataset
from data.transforms import build_transforms
from detector.config import choose


def _configured_paths(data_cfg):
    return data_cfg.train_images, data_cfg.train_ann, data_cfg.val_images, data_cfg.val_ann


def _shapes_paths(data_cfg):
    paths = ensure_shapes_dataset(data_cfg.shapes_root, data_cfg.shapes_num_train, data_cfg.shapes_num_val)
    return paths["train_images"], paths["train_ann"], paths["val_images"], paths["val_ann"]


def _shapes_lvis_paths(data_cfg):
    paths = ensure_shapes_lvis_dataset(data_cfg.shapes_lvis_root, data_cfg.shapes_num_train, data_cfg.shapes_num_val)
    return paths["train_images"], paths["train_ann"], paths["val_images"], paths["val_ann"]


logger = logging.getLogger(__name__)

# data.dataset -> (function of the config giving (train_images, train_ann, val_images, val_ann), dataset class).
# The shapes sets are generated on first use; the dataset class decides the evaluator (build_evaluator).
DATASETS = {"coco": (_configured_paths, CocoDetection), "lvis": (_configured_paths, LvisDetection),
            "shapes": (_shapes_paths, CocoDetection), "shapes_lvis": (_shapes_lvis_paths, LvisDetection)}


def check_data_config(data_cfg):
    """What can be checked before a run touches anything: the dataset type, and its files where they are given."""
    choose(DATASETS, data_cfg.dataset, "data.dataset")
    if DATASETS[data_cfg.dataset][0] is not _configured_paths:
        return
    for key in ("train_ann", "val_ann"):
        path = getattr(data_cfg, key)
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: annotation file not found (data.{key})")
    for key in ("train_images", "val_images"):
        path = getattr(data_cfg, key)
        if not os.path.isdir(path):
            raise DatasetError(f"{path}: image directory not found (data.{key})")


def dataset_paths(data_cfg):
    """(train_images, train_ann, val_images, val_ann); the shapes set is generated on first use."""
    return choose(DATASETS, data_cfg.dataset, "data.dataset")[0](data_cfg)


def build_evaluator(dataset, backend="pycocotools"):
    """Callable (COCO-format results, log) -> metrics dict for `dataset`, chosen by its type: LVISEval (AP, APr,
    APc, APf, per frequency group) for an LvisDetection, whose LVIS keys are checked now; COCOeval otherwise, by
    pycocotools or faster-coco-eval (eval.backend). The ground-truth index is built on the first call (rank 0
    evaluates; the other ranks never hold it)."""
    if isinstance(dataset, LvisDetection):
        dataset.check_lvis_format()
        return lambda results, log: lvis_evaluate(dataset.lvis, results, class_names=dataset.class_names, log=log)
    return lambda results, log: coco_evaluate(dataset.coco, results, class_names=dataset.class_names, log=log,
                                              backend=backend)


def build_dataset(data_cfg, train):
    """The train or val dataset (CocoDetection, or LvisDetection for LVIS-format sets); a split left without images
    or categories is a DatasetError."""
    train_images, train_ann, val_images, val_ann = dataset_paths(data_cfg)
    dataset_class = DATASETS[data_cfg.dataset][1]
    if train:
        transforms = build_transforms(True, data_cfg.train_short_sides, data_cfg.max_size,
                                      data_cfg.short_side_mode, data_cfg.flip_prob, data_cfg.train_crop)
        dataset = dataset_class(train_images, train_ann, transforms,
                                remove_images_without_annotations=data_cfg.remove_images_without_annotations)
    else:
        transforms = build_transforms(False, [data_cfg.test_short_side], data_cfg.max_size)
        dataset = dataset_class(val_images, val_ann, transforms, remove_images_without_annotations=False)
    if dataset.num_classes == 0:
        raise DatasetError(f"{dataset.ann_file}: no categories")
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.ann_file}: no images to {'train' if train else 'evaluate'} on "
                           f"({dataset.stats['images']} in the file, {dataset.stats['images_dropped_empty']} "
                           f"dropped without a usable box)")
    return dataset


def check_categories(dataset, cat_ids, class_names, source):
    """The model's classes (from the train split or a checkpoint) must be the dataset's, in the same order.

    Contiguous label i means category cat_ids[i]; a different list would silently score every
    detection against the wrong class, so it is a DatasetError naming both sides.
    """
    if list(dataset.cat_ids) != list(cat_ids):
        raise DatasetError(f"{dataset.ann_file}: category ids {_short(dataset.cat_ids)} differ from {source}'s "
                           f"{_short(cat_ids)}; both must list the same categories")
    if class_names is not None and list(dataset.class_names) != list(class_names):
        raise DatasetError(f"{dataset.ann_file}: category names {_short(dataset.class_names)} differ from "
                           f"{source}'s {_short(class_names)}")


def _short(values, limit=8):
    values = list(values)
    return str(values) if len(values) <= limit else f"{values[:limit]}... ({len(values)} in all)"


def train_repeat_factors(dataset, data_cfg):
    """Repeat factors of the training items with data.repeat_threshold (None without); logs the class-frequency
    statistics and the epoch length with and without repeat-factor sampling (data/repeat_factors.py)."""
    class_sets = image_class_sets(dataset)
    threshold = data_cfg.repeat_threshold
    factors = repeat_factors(class_sets, dataset.num_classes, threshold) if threshold is not None else None
    plain = build_train_batch_sampler(dataset, data_cfg.batch_size)
    repeated = build_train_batch_sampler(dataset, data_cfg.batch_size, repeat_factors=factors) if factors else None
    log_class_statistics(class_sets, dataset.class_names, factors=factors, threshold=threshold,
                         batches_without=plain.total_batches, batches_with=repeated and repeated.total_batches)
    return factors


def build_train_loader(dataset, data_cfg, seed, distributed):
    """Training batches; each image's augmentation seeded from (seed, epoch, position) (data/sample_seeds.py), and
    the loader's own generator, not the process's, seeds the workers: a resumed run draws what it would have."""
    batch_sampler = build_train_batch_sampler(dataset, data_cfg.batch_size, shuffle=True, seed=seed,
                                              distributed=distributed, repeat_factors=train_repeat_factors(dataset,
                                                                                                           data_cfg))
    return DataLoader(dataset, batch_sampler=SeededBatchSampler(batch_sampler, seed), num_workers=data_cfg.workers,
                      collate_fn=functools.partial(collate, size_divisor=data_cfg.size_divisor),
                      persistent_workers=data_cfg.workers > 0, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed))


def build_test_loader(dataset, data_cfg, distributed):
    """One image per batch, as mmdetection tests: results then never depend on padding or rank count."""
    return DataLoader(dataset, batch_size=1, sampler=build_test_sampler(dataset, distributed),
                      num_workers=data_cfg.workers,
                      collate_fn=functools.partial(collate, size_divisor=data_cfg.size_divisor))
