"""Train torchvision's FCOS / RetinaNet and our GFL / ATSS / RetinaNet on the same data, the same way.

    .venv/bin/python scripts/compare_torchvision.py --data ../shared/datasets/raccoon --iters 300 \
        --eval-at 50,100,150,300 --out runs/compare_raccoon

Every model gets the same batches (same images, same flips, same padded tensors), the same SGD schedule (linear
warm-up from warmup_ratio x lr, then constant), the same seed and iteration count, and is evaluated on the same val
split by the same COCOeval (data/evaluation.py) at each --eval-at iteration. torchvision's detectors are built as
`fcos_resnet50_fpn` / `retinanet_resnet50_fpn` (and `retinanet_resnet50_fpn_v2`: tv_retinanet_v2) build them with
weights=None (random init, trainable BatchNorm, every layer trained), at any ResNet depth; their own transform is
told not to resize or normalise again (our loader did both), so the input tensors are identical. torchvision is the
yardstick here only; nothing else imports it.

Our models train from scratch (depth, frozen_stages=-1, norm=bn, norm_eval=false, pretrained=null, set here):
ATSS is the reference atss_r50.yaml, GFL gfl_r18_scratch.yaml (the reference one plus a gradient clip at 35: see
its comment; `--ours-config gfl=gfl_r50.yaml` runs the reference one) and RetinaNet retinanet_r18_scratch_gn.yaml
(torchvision's RetinaNet design where it differs from mmdetection's, and GroupNorm in the head: see its comment;
`--ours-config retinanet=retinanet_r18_scratch.yaml` runs it without the GroupNorm,
`--ours-config retinanet=retinanet_r50.yaml` the reference one);
`--ours-config gfl=configs/x.yaml` swaps one config and `--set KEY=VALUE` adds overrides to all of ours.
`--init-from-torchvision` starts our RetinaNet from the weights torchvision's RetinaNet starts from at the same
seed (P6 from P5, as theirs; retinanet_r18_scratch.yaml, whose head has no norm as theirs, unless --ours-config
names another): a paired comparison, in which only the training differs, not the random draws.
Output in --out: results.md (final table, per-class AP, AP at each eval iteration), results.json,
curves.png (AP against iterations; needs matplotlib) and one log per model.
"""
import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchvision_models import build_torchvision_detector, retinanet_state_to_ours, to_torchvision_inputs  # noqa: E402

from data.build import build_dataset  # noqa: E402
from data.collate import collate  # noqa: E402
from data.evaluation import coco_evaluate  # noqa: E402
from data.samplers import GroupedBatchSampler, aspect_group_ids  # noqa: E402
from detector import build_criterion, build_model, build_postprocessor  # noqa: E402
from detector.config import load_config  # noqa: E402
from detector.cpu import describe_cpu, keep_freed_memory  # noqa: E402
from detector.engine import to_coco_results  # noqa: E402

OURS = {"gfl": "gfl_r18_scratch.yaml", "atss": "atss_r50.yaml", "retinanet": "retinanet_r18_scratch_gn.yaml"}
TORCHVISION = ("tv_fcos", "tv_retinanet", "tv_retinanet_v2")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with images/ and annotations/instances_{train,val}.json")
    parser.add_argument("--train-ann", default="annotations/instances_train.json", help="relative to --data")
    parser.add_argument("--val-ann", default="annotations/instances_val.json", help="relative to --data")
    parser.add_argument("--images", default="images", help="image folder relative to --data")
    parser.add_argument("--models", default="tv_fcos,gfl,tv_retinanet,retinanet,atss",
                        help=f"comma list from {', '.join(TORCHVISION + tuple(OURS))}")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--eval-at", default="50,100,150,300", help="iterations to evaluate at (<= --iters)")
    parser.add_argument("--depth", type=int, default=18, help="ResNet depth of every model")
    parser.add_argument("--short-side", type=int, default=480)
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--feat-channels", type=int, default=256, help="FPN and head width of every model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.0025, help="the lr applied (no batch scaling)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-iters", type=int, default=100)
    parser.add_argument("--warmup-ratio", type=float, default=0.001)
    parser.add_argument("--flip", type=float, default=0.5)
    parser.add_argument("--score-thr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--ours-config", action="append", default=[], metavar="HEAD=YAML",
                        help="use this config for one of our heads instead of the reference one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for all our models (after the from-scratch backbone ones)")
    parser.add_argument("--torchvision-grad-clip", type=float, default=None,
                        help="clip torchvision's gradients too (L2 norm of all; default: no clip, as its recipe)")
    parser.add_argument("--init-from-torchvision", action="store_true",
                        help="our RetinaNet starts from the weights torchvision's RetinaNet starts from with the same "
                             "seed (a paired comparison; needs model.fpn.extra_from=p5, added here)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in TORCHVISION and m not in OURS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(TORCHVISION + tuple(OURS))}")
    args.eval_at = sorted({int(v) for v in args.eval_at.split(",") if v.strip()} | {args.iters})
    if args.eval_at[0] < 1 or args.eval_at[-1] > args.iters:
        parser.error(f"--eval-at must lie in 1..--iters ({args.iters})")
    args.ours_config = dict(item.split("=", 1) for item in args.ours_config)
    if args.init_from_torchvision and set(args.models) - {"retinanet", "tv_retinanet"}:
        parser.error("--init-from-torchvision maps torchvision's RetinaNet weights: --models retinanet[,tv_retinanet]")
    if args.init_from_torchvision:   # torchvision's RetinaNet head has no norm: the config without the GroupNorm
        args.ours_config.setdefault("retinanet", "retinanet_r18_scratch.yaml")
    return args


# --- data: one loader definition, re-created with the same seed for every model ---------------------

def data_config(args):
    """Our config's data section for the folder: used by every model, ours and torchvision's."""
    cfg = load_config("gfl_r50.yaml", [
        "data.dataset=coco", f"data.train_images={os.path.join(args.data, args.images)}",
        f"data.val_images={os.path.join(args.data, args.images)}",
        f"data.train_ann={os.path.join(args.data, args.train_ann)}",
        f"data.val_ann={os.path.join(args.data, args.val_ann)}",
        f"data.train_short_sides=[{args.short_side}]", f"data.max_size={args.max_size}",
        f"data.test_short_side={args.short_side}", f"data.flip_prob={args.flip}",
        f"data.batch_size={args.batch}", f"data.workers={args.workers}"])
    return cfg.data


def batches(dataset, data_cfg, seed, iters):
    """`iters` training batches, epoch after epoch; the same sequence (images and flips) for a given seed."""
    sampler = GroupedBatchSampler(aspect_group_ids(dataset), data_cfg.batch_size, shuffle=True, seed=seed)
    generator = torch.Generator().manual_seed(seed)  # worker seeds, hence the random flips
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=data_cfg.workers, generator=generator,
                        collate_fn=functools.partial(collate, size_divisor=data_cfg.size_divisor))
    done, epoch = 0, 0
    while done < iters:
        sampler.set_epoch(epoch)
        for batch in loader:
            if done == iters:
                return
            yield batch
            done += 1
        epoch += 1


# --- models: a common interface (loss of a batch, detections of a batch) ----------------------------

class Ours:
    def __init__(self, head, args, num_classes):
        config = args.ours_config.get(head, OURS[head])
        overrides = [f"model.backbone.depth={args.depth}", "model.backbone.frozen_stages=-1",
                     "model.backbone.norm=bn", "model.backbone.norm_eval=false", "model.backbone.pretrained=null",
                     f"model.fpn.out_channels={args.feat_channels}", f"model.head.feat_channels={args.feat_channels}",
                     f"model.test.score_thr={args.score_thr}"] + list(args.set)
        if args.init_from_torchvision:
            overrides.append("model.fpn.extra_from=p5")
        self.cfg = load_config(config, overrides)
        if args.init_from_torchvision and self.cfg.model.head.norm is not None:
            raise SystemExit(f"--init-from-torchvision: {config} has model.head.norm={self.cfg.model.head.norm}, "
                             "torchvision's RetinaNet head has no norm; use a config without one")
        self.description = f"{config} + {' '.join(overrides)}"
        self.model = build_model(self.cfg.model, num_classes)
        if args.init_from_torchvision:   # the weights torchvision's RetinaNet gets after the same manual_seed
            torch.manual_seed(args.seed)
            theirs = build_torchvision_detector("retinanet", args.depth, args.feat_channels, num_classes,
                                                args.short_side, args.max_size, args.score_thr).state_dict()
            self.model.load_state_dict(retinanet_state_to_ours(theirs, self.model.state_dict()))
            self.description += ", weights of torchvision's RetinaNet at the same seed"
        self.criterion = build_criterion(self.cfg.model, num_classes)
        self.postprocessor = build_postprocessor(self.cfg.model)
        self.grad_clip = self.cfg.optim.grad_clip   # a from-scratch config may clip (the reference ones do not)

    def losses(self, images, targets):
        losses = self.criterion(self.model(images), targets)
        return {k: v for k, v in losses.items() if k.startswith("loss_")}

    def detect(self, images, targets):
        return self.postprocessor(self.model(images), targets["image_sizes"], targets["scale_factors"])


class Torchvision:
    """torchvision's FCOS or RetinaNet as its *_resnet50_fpn builder makes it with weights=None (any depth, width)."""

    def __init__(self, name, args, num_classes):
        self.model = build_torchvision_detector(name.removeprefix("tv_"), args.depth, args.feat_channels,
                                                num_classes, args.short_side, args.max_size, args.score_thr)
        version = " v2 (GroupNorm head, GIoU loss, P6 from C5)" if name == "tv_retinanet_v2" else ""
        self.description = f"torchvision {type(self.model).__name__}{version} R{args.depth}-FPN, weights=None" + (
            f", gradients clipped at {args.torchvision_grad_clip}" if args.torchvision_grad_clip else "")
        self.criterion, self.grad_clip = None, args.torchvision_grad_clip

    def losses(self, images, targets):
        return self.model(*to_torchvision_inputs(images, targets))

    def detect(self, images, targets):
        image_list, _ = to_torchvision_inputs(images, targets)
        outputs = self.model(image_list)   # boxes in network-input pixels (no resize happened)
        detections = []
        for output, scale_factor in zip(outputs, targets["scale_factors"]):
            boxes = output["boxes"] * (1.0 / scale_factor).to(output["boxes"].dtype).repeat(2)   # as ours
            detections.append({"boxes": boxes, "scores": output["scores"], "labels": output["labels"]})
        return detections


def build(name, args, num_classes):
    return Torchvision(name, args, num_classes) if name in TORCHVISION else Ours(name, args, num_classes)


# --- training and evaluation ------------------------------------------------------------------------

def warmup_constant_lr(iteration, args):
    if iteration < args.warmup_iters:
        return args.lr * (args.warmup_ratio + (1 - args.warmup_ratio) * iteration / args.warmup_iters)
    return args.lr


@torch.no_grad()
def evaluate(detector, dataset, data_cfg):
    detector.model.eval()
    loader = DataLoader(dataset, batch_size=1, num_workers=data_cfg.workers,
                        collate_fn=functools.partial(collate, size_divisor=data_cfg.size_divisor))
    results = []
    for images, targets in loader:
        detections = detector.detect(images, targets)
        results.extend(to_coco_results(detections, targets["image_ids"].tolist(), dataset.cat_ids))
    detector.model.train()
    metrics = coco_evaluate(dataset.coco, results, class_names=dataset.class_names, log=lambda text: None)
    metrics["detections"] = len(results)
    return metrics


def train_and_evaluate(name, args, train_set, val_set, data_cfg, log):
    torch.manual_seed(args.seed)
    detector = build(name, args, train_set.num_classes)
    log(f"{name}: {detector.description}")
    parameters = [p for p in detector.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    detector.model.train()
    if detector.criterion is not None:
        detector.criterion.train()
    curve, started, loss_log = [], time.time(), []
    for iteration, (images, targets) in enumerate(batches(train_set, data_cfg, args.seed, args.iters)):
        for group in optimizer.param_groups:
            group["lr"] = warmup_constant_lr(iteration, args)
        losses = detector.losses(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: non-finite loss at iteration {iteration}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if detector.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, detector.grad_clip)
        optimizer.step()
        loss_log.append(loss.item())
        done = iteration + 1
        if done % 10 == 0:
            log(f"{name} iter {done}/{args.iters} loss {sum(loss_log[-10:]) / 10:.4f} "
                + " ".join(f"{k}={v.item():.4f}" for k, v in losses.items())
                + f" ({(time.time() - started) / done:.2f} s/it)")
        if done in args.eval_at:
            metrics = evaluate(detector, val_set, data_cfg)
            metrics.update(iteration=done, train_seconds=round(time.time() - started, 1),
                           loss=sum(loss_log[-10:]) / len(loss_log[-10:]))
            curve.append(metrics)
            log(f"{name} eval at {done}: AP {100 * metrics['AP']:.2f} AP50 {100 * metrics['AP50']:.2f} "
                f"AP75 {100 * metrics['AP75']:.2f} ({metrics['detections']} detections)")
    return {"model": name, "description": detector.description, "curve": curve}


def fmt(value):
    return "-" if value is None or value < 0 else f"{100 * value:.1f}"


def write_markdown(path, runs, args, machine):
    lines = [f"# {args.data}: from scratch, ResNet-{args.depth}-FPN ({args.feat_channels} ch), "
             f"{args.short_side}x{args.max_size}, batch {args.batch}, SGD lr {args.lr} momentum {args.momentum} "
             f"wd {args.weight_decay}, warm-up {args.warmup_iters} from {args.warmup_ratio} x lr then constant, "
             f"flip {args.flip}, seed {args.seed}, fp32, score threshold {args.score_thr}", "",
             f"Machine: {machine}", "", f"## After {args.iters} iterations", "",
             "| model | " + " | ".join(METRICS) + " | detections | train s |",
             "|---|" + "---|" * (len(METRICS) + 2)]
    for run in runs:
        last = run["curve"][-1]
        lines.append(f"| {run['model']} | " + " | ".join(fmt(last[m]) for m in METRICS)
                     + f" | {last['detections']} | {last['train_seconds']:.0f} |")
    lines += ["", "## AP at each evaluated iteration", "",
              "| model | " + " | ".join(str(i) for i in args.eval_at) + " |", "|---|" + "---|" * len(args.eval_at)]
    for run in runs:
        lines.append(f"| {run['model']} | " + " | ".join(fmt(point["AP"]) for point in run["curve"]) + " |")
    classes = list(runs[0]["curve"][-1]["per_class"]) if runs else []
    if 1 < len(classes) <= 100:
        lines += ["", f"## Per-class AP after {args.iters} iterations", "",
                  "| class | " + " | ".join(run["model"] for run in runs) + " |", "|---|" + "---|" * len(runs)]
        for name in classes:
            cells = [fmt(run["curve"][-1]["per_class"].get(name)) for run in runs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Models", ""] + [f"- {run['model']}: {run['description']}" for run in runs]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot_curves(path, runs, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(6, 4))
    for run in runs:
        axis.plot([p["iteration"] for p in run["curve"]], [100 * p["AP"] for p in run["curve"]], marker="o",
                  linestyle="--" if run["model"].startswith("tv_") else "-", label=run["model"])
    axis.set_xlabel("iteration")
    axis.set_ylabel("box AP (COCOeval, val)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    log_file = open(os.path.join(args.out, "log.txt"), "a")

    def log(text):
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    machine = describe_cpu("fp32")
    log(f"machine: {machine}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    data_cfg = data_config(args)
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        train_set, val_set = build_dataset(data_cfg, train=True), build_dataset(data_cfg, train=False)
    log(f"train {len(train_set)} images, val {len(val_set)} images, {train_set.num_classes} classes")
    results_path = os.path.join(args.out, "results.json")
    runs = []
    if os.path.exists(results_path):  # re-running with more models keeps the finished ones
        with open(results_path) as f:
            previous = json.load(f)
        if previous.get("args", {}).get("data") == args.data and previous["args"].get("iters") == args.iters:
            runs = [run for run in previous["runs"] if run["model"] in args.models]
    for name in args.models:
        if any(run["model"] == name for run in runs):
            log(f"{name}: already in {results_path}, kept")
            continue
        runs.append(train_and_evaluate(name, args, train_set, val_set, data_cfg, log))
        runs.sort(key=lambda run: args.models.index(run["model"]))
        with open(results_path + ".tmp", "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "machine": machine, "runs": runs}, f, indent=1)
        os.replace(results_path + ".tmp", results_path)
        write_markdown(os.path.join(args.out, "results.md"), runs, args, machine)
    plotted = plot_curves(os.path.join(args.out, "curves.png"), runs,
                          f"{os.path.basename(os.path.normpath(args.data))}, R{args.depth} from scratch, SGD")
    log(f"wrote {args.out}/results.md, results.json"
        + (", curves.png" if plotted else " (no matplotlib: no curves.png)"))
    print(open(os.path.join(args.out, "results.md")).read())


if __name__ == "__main__":
    main()
