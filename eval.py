"""Evaluate a checkpoint on the val split: COCO table, per-class AP, metrics.json and detections.json.

    python eval.py --checkpoint work_dirs/shapes_gfl_r18/checkpoints/last.pth
    python eval.py --config gfl_r50.yaml --checkpoint gfl_r50.pth data.val_ann=... data.val_images=...
    torchrun --nproc_per_node=8 eval.py --config gfl_r50.yaml --checkpoint ...

Without --config the configuration saved in the checkpoint is used; overrides apply on top of either.
"""
import argparse
import json
import logging
import os
import sys

import torch

from data.build import build_dataset, build_evaluator, build_test_loader, check_categories, check_data_config
from detector import build_model, build_postprocessor, dist
from detector.checkpoint import load_checkpoint, load_state
from detector.config import config_from_dict, load_config, merge_dicts, parse_overrides
from detector.engine import evaluate
from detector.errors import run_cli
from detector.precision import choose_precision

logger = logging.getLogger("focaldet")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file or name inside configs/ (default: the checkpoint's config)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out-dir", help="where metrics.json and detections.json go (default: <work dir>/eval)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    args = parser.parse_intermixed_args()

    checkpoint = load_checkpoint(args.checkpoint)
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = config_from_dict(merge_dicts(checkpoint["config"], parse_overrides(args.overrides)))
    cfg.model.backbone.pretrained = None  # the checkpoint holds every weight
    check_data_config(cfg.data)

    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    rank, local_rank, world_size = dist.init_distributed("cuda" if use_cuda else "cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stdout)

    dataset = build_dataset(cfg.data, train=False)
    loader = build_test_loader(dataset, cfg.data, distributed=world_size > 1)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    model = build_model(cfg.model, dataset.num_classes).to(device, memory_format=memory_format)
    if checkpoint.get("classes") is not None:
        check_categories(dataset, checkpoint["classes"]["cat_ids"], checkpoint["classes"]["class_names"],
                         f"checkpoint {args.checkpoint}")
    load_state(model, checkpoint["model"], args.checkpoint)
    precision = choose_precision(cfg.train.amp, device)
    logger.info(f"precision {precision.name}: {precision.reason}")
    metrics, detections = evaluate(model, build_postprocessor(cfg.model), loader, dataset.cat_ids,
                                   build_evaluator(dataset), device, precision, cfg.train.channels_last)
    if rank == 0:
        out_dir = args.out_dir or os.path.join(cfg.work_dir or os.path.join("work_dirs", cfg.name), "eval")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"checkpoint": args.checkpoint, **metrics}, f, indent=1)
        with open(os.path.join(out_dir, "detections.json"), "w") as f:
            json.dump(detections, f)
        logger.info(f"bbox AP {metrics['AP']:.4f} ({len(detections)} detections) -> {out_dir}/metrics.json")
    dist.cleanup()


if __name__ == "__main__":
    run_cli(main)
