"""Run a checkpoint on your own images and draw what it detects.

    .venv/bin/python scripts/demo.py --checkpoint work_dirs/shapes_gfl_r18/checkpoints/last.pth \\
        datasets/shapes/val/000001.png "photos/*.jpg" my_folder/ --out work_dirs/demo --score-thr 0.3

INPUT: image files, folders (their image files) or glob patterns (quote them). Writes to --out one PNG per
image (boxes with class names and scores, drawn by torchvision.utils.draw_bounding_boxes) and detections.json:
the drawn detections (score >= --score-thr) in the COCO results format (xywh in original pixels, the
checkpoint's category ids). Image ids: numeric file names give theirs (000000397133.jpg is 397133), otherwise
1..N in the order listed (data/image_folder.py). Images of one size run in batches of up to --batch-size (so a
batch never pads an image more than it alone would be, and results equal eval.py's one image at a time) through
the checkpoint's own test transforms, model and post-processor; a missing or unreadable image stops with one
line naming the file. Without --config the configuration saved in the checkpoint is used.
"""
import argparse
import functools
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.collate import collate  # noqa: E402
from data.image_folder import (  # noqa: E402
    ImageFolder,
    assign_image_ids,
    list_images,
    read_sizes,
    same_size_batches,
)
from data.transforms import build_transforms  # noqa: E402
from detector import build_model, build_postprocessor  # noqa: E402
from detector.checkpoint import CheckpointError, load_checkpoint, load_state  # noqa: E402
from detector.config import config_from_dict, load_config  # noqa: E402
from detector.engine import images_to, to_coco_results  # noqa: E402
from detector.errors import run_cli  # noqa: E402
from detector.precision import choose_precision  # noqa: E402

# matplotlib's tab10: one colour per class label (cycled beyond ten classes)
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def output_names(paths, image_ids):
    """PNG file name per input: its stem, or stem_<image id> where two inputs share a stem."""
    stems = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    return [f"{stem}.png" if stems.count(stem) == 1 else f"{stem}_{image_id}.png"
            for stem, image_id in zip(stems, image_ids)]


def draw(image, detection, class_names, line_width=2):
    """image: PIL RGB of the original file; detection: dict of boxes [K, 4] xyxy original pixels, scores [K],
    labels [K] -> uint8 tensor [3, H, W] with each box and its 'name score' label, drawn from the lowest score up
    (a box scored for several classes shows its best class on top)."""
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # [3, H, W] uint8
    order = detection["scores"].argsort(stable=True).tolist()  # ascending
    labels = [detection["labels"][index].item() for index in order]
    scores = [detection["scores"][index].item() for index in order]
    colours = [PALETTE[label % len(PALETTE)] for label in labels]
    captions = [f"{class_names[label]} {score:.2f}" for label, score in zip(labels, scores)]
    return draw_bounding_boxes(pixels, detection["boxes"][order].float(), labels=captions, colors=colours,
                               width=line_width, label_colors="white", fill_labels=True,
                               label_background_colors=colours)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file or name inside configs/ (default: the checkpoint's config)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or glob pattern")
    parser.add_argument("--out", default=os.path.join("work_dirs", "demo"), help="folder for the PNGs and JSON")
    parser.add_argument("--score-thr", type=float, default=0.3, help="draw and record detections at least this")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.checkpoint)
    if checkpoint.get("classes") is None:
        raise CheckpointError(f"{args.checkpoint}: records no class names or category ids (an older checkpoint)")
    cat_ids, class_names = checkpoint["classes"]["cat_ids"], checkpoint["classes"]["class_names"]
    cfg = load_config(args.config) if args.config else config_from_dict(checkpoint["config"])
    cfg.model.backbone.pretrained = None  # the checkpoint holds every weight
    paths = list_images(args.inputs)
    image_ids = assign_image_ids(paths)
    names = output_names(paths, image_ids)
    batches = same_size_batches(read_sizes(paths), args.batch_size)  # batching never changes a detection

    dataset = ImageFolder(paths, build_transforms(False, [cfg.data.test_short_side], cfg.data.max_size), image_ids)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.data.workers,
                        collate_fn=functools.partial(collate, size_divisor=cfg.data.size_divisor))
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    model = build_model(cfg.model, len(cat_ids)).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    load_state(model, checkpoint["model"], args.checkpoint)
    model.eval()
    postprocessor = build_postprocessor(cfg.model)
    precision = choose_precision(cfg.train.amp, device)
    os.makedirs(args.out, exist_ok=True)

    results = {}  # input index -> its COCO results (batches follow image sizes, the JSON follows the inputs)
    with torch.no_grad():
        for indices, (images, targets) in zip(batches, tqdm(loader, desc="demo", unit="batch", dynamic_ncols=True,
                                                            disable=not sys.stderr.isatty())):
            with precision.autocast(device):
                outputs = model(images_to(images, device, cfg.train.channels_last))
            detections = postprocessor(outputs, targets["image_sizes"].to(device),
                                       targets["scale_factors"].to(device))
            for index, detection in zip(indices, detections):
                keep = detection["scores"] >= args.score_thr
                detection = {key: value[keep].cpu() for key, value in detection.items()}
                drawn = draw(dataset.load_image(index), detection, class_names)  # the file's own pixels
                Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(os.path.join(args.out, names[index]))
                results[index] = to_coco_results([detection], [image_ids[index]], cat_ids)
    results = [result for index in sorted(results) for result in results[index]]
    with open(os.path.join(args.out, "detections.json"), "w") as f:
        json.dump(results, f)
    print(f"{len(results)} detections (score >= {args.score_thr}) on {len(paths)} images -> {args.out}/*.png, "
          f"{args.out}/detections.json")


if __name__ == "__main__":
    run_cli(main)
