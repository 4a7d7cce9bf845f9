"""Evaluate a checkpoint on the val split: COCO table, per-class AP, metrics.json and detections.json.

    python eval.py --checkpoint work_dirs/shapes_gfl_r18/checkpoints/last.pth
    python eval.py --config gfl_r50.yaml --checkpoint gfl_r50.pth data.val_ann=... data.val_images=...
    torchrun --nproc_per_node=8 eval.py --config gfl_r50.yaml --checkpoint ...

    # no annotations (e.g. COCO test-dev): detections.json only, with the checkpoint's category ids
    python eval.py --checkpoint last.pth --images datasets/coco/test2017 --image-info image_info_test-dev2017.json
    # per-class precision-recall curves (PNG) of an annotated split, in <out dir>/pr_curves/
    python eval.py --checkpoint last.pth --pr-curves

Without --config the configuration saved in the checkpoint is used; overrides apply on top of either.
With --images, image ids come from --image-info (file name -> id), else from numeric file names
(000000397133.jpg is image 397133), else 1..N in sorted order (data/image_folder.py).
"""
import argparse
import json
import logging
import os
import sys

import torch

from data.build import build_dataset, build_evaluator, build_test_loader, check_categories, check_data_config
from data.coco import DatasetError
from data.image_folder import ImageFolder, assign_image_ids, list_images, read_image_info
from data.lvis import LvisDetection
from data.pr_curves import write_pr_curves
from data.transforms import build_transforms
from detector import build_model, build_postprocessor, dist
from detector.checkpoint import CheckpointError, load_checkpoint, load_state
from detector.config import config_from_dict, load_config, merge_dicts, parse_overrides
from detector.engine import compiled_for_inference, evaluate
from detector.errors import run_cli
from detector.precision import choose_precision

logger = logging.getLogger("focaldet")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file or name inside configs/ (default: the checkpoint's config)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out-dir", help="where metrics.json and detections.json go (default: <work dir>/eval)")
    parser.add_argument("--images", help="folder (or glob) of images without annotations: write detections.json "
                                         "only, with the checkpoint's category ids (e.g. COCO test-dev)")
    parser.add_argument("--image-info", help="with --images: COCO-format JSON whose 'images' list gives each "
                                             "file's id (e.g. image_info_test-dev2017.json)")
    parser.add_argument("--pr-curves", action="store_true",
                        help="also write per-class precision-recall PNGs to <out dir>/pr_curves/")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    args = parser.parse_intermixed_args()
    if args.images and args.pr_curves:
        parser.error("--pr-curves needs annotations: it cannot be combined with --images")
    if args.image_info and not args.images:
        parser.error("--image-info goes with --images")

    checkpoint = load_checkpoint(args.checkpoint)
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = config_from_dict(merge_dicts(checkpoint["config"], parse_overrides(args.overrides)))
    cfg.model.backbone.pretrained = None  # the checkpoint holds every weight
    if args.images:
        if checkpoint.get("classes") is None:
            raise CheckpointError(f"{args.checkpoint}: records no category ids, which --images needs "
                                  "(a checkpoint from an older focaldet)")
        paths = list_images([args.images])
        image_ids = assign_image_ids(paths, read_image_info(args.image_info) if args.image_info else None,
                                     args.image_info)
    else:
        check_data_config(cfg.data)

    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    rank, local_rank, world_size = dist.init_distributed("cuda" if use_cuda else "cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stdout)

    if args.images:  # the val split's test transforms on unannotated files; nothing to score
        dataset = ImageFolder(paths, build_transforms(False, [cfg.data.test_short_side], cfg.data.max_size), image_ids)
        cat_ids = checkpoint["classes"]["cat_ids"]
        evaluator = lambda results, log: {}  # noqa: E731
        logger.info(f"{args.images}: {len(dataset)} images without annotations")
    else:
        dataset = build_dataset(cfg.data, train=False)
        if args.pr_curves and isinstance(dataset, LvisDetection):
            raise DatasetError(f"{dataset.ann_file}: --pr-curves draws COCOeval's curves, which LVIS's federated "
                               "annotations (negative and not-exhaustive category lists) would misread")
        cat_ids, evaluator = dataset.cat_ids, build_evaluator(dataset, cfg.eval.backend)
        if checkpoint.get("classes") is not None:
            check_categories(dataset, checkpoint["classes"]["cat_ids"], checkpoint["classes"]["class_names"],
                             f"checkpoint {args.checkpoint}")
    loader = build_test_loader(dataset, cfg.data, distributed=world_size > 1)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    model = build_model(cfg.model, len(cat_ids)).to(device, memory_format=memory_format)
    load_state(model, checkpoint["model"], args.checkpoint)
    precision = choose_precision(cfg.train.amp, device)
    logger.info(f"precision {precision.name}: {precision.reason}")
    if cfg.eval.compile:
        frozen = ", frozen weights" if cfg.train.compile_backend == "inductor" else ""
        logger.info(f"model compiled for inference (backend {cfg.train.compile_backend}{frozen}); each new input "
                    "shape compiles on its first batch")
    metrics, detections = evaluate(compiled_for_inference(model, cfg), build_postprocessor(cfg.model), loader,
                                   cat_ids, evaluator, device, precision, cfg.train.channels_last)
    if rank == 0:
        out_dir = args.out_dir or os.path.join(cfg.work_dir or os.path.join("work_dirs", cfg.name), "eval")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "detections.json"), "w") as f:
            json.dump(detections, f)
        if args.images:
            logger.info(f"{len(detections)} detections on {len(dataset)} images -> {out_dir}/detections.json")
        else:
            with open(os.path.join(out_dir, "metrics.json"), "w") as f:
                json.dump({"checkpoint": args.checkpoint, **metrics}, f, indent=1)
            logger.info(f"bbox AP {metrics['AP']:.4f} ({len(detections)} detections) -> {out_dir}/metrics.json")
        if args.pr_curves:
            paths = write_pr_curves(dataset.coco, detections, os.path.join(out_dir, "pr_curves"), dataset.class_names)
            logger.info(f"{len(paths)} precision-recall curves -> {out_dir}/pr_curves/")
    dist.cleanup()


if __name__ == "__main__":
    run_cli(main)
