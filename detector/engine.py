"""The training epoch, the learning-rate schedule and evaluation, shared by train.py and eval.py."""
import contextlib
import datetime
import logging
import math
import sys
import time

import torch
from tqdm import tqdm

from . import dist
from .config import choose

logger = logging.getLogger("focaldet")


OPTIMIZERS = {  # optim.type -> optimizer over the trainable parameters at learning rate lr
    "sgd": lambda parameters, lr, cfg: torch.optim.SGD(parameters, lr=lr, momentum=cfg.momentum,
                                                       weight_decay=cfg.weight_decay),
    "adamw": lambda parameters, lr, cfg: torch.optim.AdamW(parameters, lr=lr, betas=tuple(cfg.betas),
                                                           weight_decay=cfg.weight_decay),
}


def build_optimizer(parameters, lr, optim_cfg):
    return choose(OPTIMIZERS, optim_cfg.type, "optim.type")(parameters, lr, optim_cfg)


def learning_rate(iteration, base_lr, optim_cfg, iters_per_epoch, epochs):
    """Linear warmup from warmup_ratio x lr over warmup_iters, then the optim.schedule:

    step (reference): x gamma at each milestone epoch;
    cosine: lr x (r + (1 - r) (1 + cos(pi t / T)) / 2) over T = epochs x iters_per_epoch iterations,
    r = optim.min_lr_ratio (mmdetection's CosineAnnealingLR by iteration).
    """
    if optim_cfg.schedule == "cosine":
        progress = min(iteration / (epochs * iters_per_epoch), 1.0)
        ratio = optim_cfg.min_lr_ratio
        lr = base_lr * (ratio + (1 - ratio) * (1 + math.cos(math.pi * progress)) / 2)
    else:
        decays = sum(iteration >= milestone * iters_per_epoch for milestone in optim_cfg.milestones)
        lr = base_lr * optim_cfg.gamma ** decays
    if iteration < optim_cfg.warmup_iters:
        lr *= optim_cfg.warmup_ratio + (1 - optim_cfg.warmup_ratio) * iteration / optim_cfg.warmup_iters
    return lr


def images_to(images, device, channels_last):
    """Batch [B, 3, H, W] on `device`, in the memory format the model was put in (train.channels_last)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=memory_format)


def to_device(targets, device):
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in targets.items()}


def train_one_epoch(model, criterion, loader, optimizer, epoch, iteration, base_lr, cfg, device, precision,
                    scaler, writer=None, max_iters=None, stop=None):
    """One pass over `loader`: returns (global iteration count after it, stopped). Rank 0 logs and shows a bar.

    precision: detector.precision.Precision (autocast of the model's forward); scaler: its GradScaler
    (a no-op unless fp16). stop: optional callable checked after every step (the same answer on every
    rank); True ends the epoch early and is returned as `stopped`.
    """
    model.train()
    criterion.train()
    iters_per_epoch = len(loader)
    show_bar = dist.is_main_process() and sys.stderr.isatty()  # in a log file the ETA is in the log lines
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not show_bar, dynamic_ncols=True,
               leave=False)
    total_iters = cfg.train.epochs * iters_per_epoch if cfg.train.max_iters is None else cfg.train.max_iters
    first_iteration = iteration
    started = time.time()
    for images, targets in bar:
        if max_iters is not None and iteration >= max_iters:
            break
        lr = learning_rate(iteration, base_lr, cfg.optim, iters_per_epoch, cfg.train.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = images_to(images, device, cfg.train.channels_last), to_device(targets, device)
        with precision.autocast(device):
            outputs = model(images)
        losses = criterion(outputs, targets)
        loss = sum(value for key, value in losses.items() if key.startswith("loss_"))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at iteration {iteration}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                                     + "; training diverged: lower optim.lr or set optim.grad_clip")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        iteration += 1
        if iteration % cfg.train.log_interval == 0 or iteration == 1:
            values = {k: dist.reduce_mean(v.detach()).item() for k, v in losses.items()}
            values["loss"] = sum(v for k, v in values.items() if k.startswith("loss_"))
            if dist.is_main_process():
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}")
                rate = (iteration - first_iteration) / max(time.time() - started, 1e-6)
                eta = datetime.timedelta(seconds=int((total_iters - iteration) / max(rate, 1e-6)))
                logger.info(f"epoch {epoch + 1} iter {iteration}/{total_iters} lr {lr:.3e} "
                            + " ".join(f"{k} {v:.4f}" for k, v in values.items()) + f" ({rate:.2f} it/s, eta {eta})")
                if writer is not None:
                    for key, value in values.items():
                        writer.add_scalar(f"train/{key}", value, iteration)
                    writer.add_scalar("train/lr", lr, iteration)
        if stop is not None and stop():
            bar.close()
            return iteration, True
    bar.close()
    return iteration, False


def to_coco_results(detections, image_ids, cat_ids):
    """Per-image detections (xyxy original pixels, contiguous labels) -> COCO results (xywh, dataset ids)."""
    results = []
    for detection, image_id in zip(detections, image_ids):
        boxes = detection["boxes"].cpu()
        boxes[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(boxes.tolist(), detection["scores"].tolist(), detection["labels"].tolist()):
            results.append({"image_id": int(image_id), "category_id": int(cat_ids[label]),
                            "bbox": [round(v, 3) for v in box], "score": round(score, 5)})
    return results


@torch.no_grad()
def evaluate(model, postprocessor, loader, cat_ids, evaluator, device, precision=None, channels_last=False):
    """Inference sharded over ranks, gathered on rank 0, scored there by `evaluator`.

    cat_ids: the dataset category id of each contiguous label. evaluator: callable (COCO-format results, log)
    -> metrics dict (data.build.build_evaluator: COCOeval, or LVISEval for LVIS).
    precision: detector.precision.Precision of the forward pass (None: fp32).
    Returns (metrics dict or None on other ranks, COCO-format detections or None).
    """
    model.eval()
    results = []
    for images, targets in tqdm(loader, desc="eval", disable=not (dist.is_main_process() and sys.stderr.isatty()),
                                dynamic_ncols=True, leave=False):
        images = images_to(images, device, channels_last)
        with precision.autocast(device) if precision is not None else contextlib.nullcontext():
            outputs = model(images)
        detections = postprocessor(outputs, targets["image_sizes"].to(device), targets["scale_factors"].to(device))
        results.extend(to_coco_results(detections, targets["image_ids"].tolist(), cat_ids))
    gathered = dist.all_gather_objects(results)
    if not dist.is_main_process():
        return None, None
    results = [r for part in gathered for r in part]
    metrics = evaluator(results, log=logger.info)
    metrics = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) if k != "per_class" else v
               for k, v in metrics.items()}
    return metrics, results
