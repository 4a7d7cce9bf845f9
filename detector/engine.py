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
from .box_ops import xyxy_to_xywh
from .config import choose

logger = logging.getLogger("focaldet")


OPTIMIZERS = {  # optim.type -> optimizer over the trainable parameters at learning rate lr
    "sgd": lambda parameters, lr, cfg: torch.optim.SGD(parameters, lr=lr, momentum=cfg.momentum,
                                                       weight_decay=cfg.weight_decay),
    "adamw": lambda parameters, lr, cfg: torch.optim.AdamW(parameters, lr=lr, betas=tuple(cfg.betas),
                                                           weight_decay=cfg.weight_decay),
}


def build_optimizer(parameters, lr, optim_cfg):
    """The optim.type optimizer over `parameters`; with optim.decay_norm_and_bias false the 1-d ones (biases,
    norm affine terms, Scales) form a second group without weight decay (mmdetection's norm/bias_decay_mult 0)."""
    parameters = list(parameters)
    if not optim_cfg.decay_norm_and_bias:
        parameters = [{"params": [p for p in parameters if p.ndim > 1]},
                      {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0}]
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


def compiled(model, train_cfg):
    """The module train.py calls, torch.compile'd when train.compile (backend train.compile_backend); else `model`.

    Compiling the DDP-wrapped module lets DDP's optimizer split the graph at its gradient buckets. The weights stay
    those of `model` (checkpoints and evaluation use the bare module).
    """
    if not train_cfg.compile:
        return model
    return torch.compile(model, backend=train_cfg.compile_backend)


class FrozenForInference(torch.nn.Module):
    """`model` torch.compile'd by inductor with weight freezing: the parameters become constants of the graph.

    torch.compile(options={"freezing": True}) does not reach the inference compiler (torch 2.14), so the flag is
    patched in around each call: compilation happens inside the first call at each input shape. Every new padded
    input shape compiles its own static graph (inductor's freezing fails on symbolic sizes in torch 2.14), up to
    torch._dynamo.config.recompile_limit shapes; calls with further shapes then run eagerly. Each compiled shape
    may keep its own folded and pre-packed copy of the weights.
    """

    def __init__(self, model):
        super().__init__()
        self.compiled = torch.compile(model, backend="inductor", dynamic=False)  # freezing fails on symbolic sizes

    @property
    def model(self):
        """The module compiled (its weights are the ones frozen)."""
        return self.compiled._orig_mod

    def forward(self, inputs):
        import torch._inductor.config as inductor_config
        with inductor_config.patch(freezing=True):
            return self.compiled(inputs)


def compiled_for_inference(model, cfg):
    """The module eval.py calls: `model` in eval mode, torch.compile'd when eval.compile (else `model` itself).

    Backend train.compile_backend; with inductor the weights are frozen (FrozenForInference), so they must hold
    their final values (the checkpoint's) before the first call: the constants it folds or pre-packs then keep the
    values of that call, whatever later updates `model` gets.
    """
    model.eval()
    if not cfg.eval.compile:
        return model
    if cfg.train.compile_backend == "inductor":
        return FrozenForInference(model).eval()
    return torch.compile(model, backend=cfg.train.compile_backend)


def images_to(images, device, channels_last):
    """Batch [B, 3, H, W] on `device`, in the memory format the model was put in (train.channels_last)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=memory_format)


def to_device(targets, device):
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in targets.items()}


def train_steps(model, state, loader, base_lr, cfg, device, precision, writer=None):
    """Train from the loader's position to the end of its epoch, yielding after every optimizer step.

    model: the module to call (DDP-wrapped with several processes); state: detector.train_state.TrainState (the
    bare model, criterion, optimizer, grad scaler, EMA, non-finite guard, position), advanced in place: iteration
    and epoch_step after every step, epoch (and epoch_step back to 0) after the epoch's last one. The loader's
    batch sampler must start at batch epoch_step x train.accumulate (set_epoch(epoch, start_batch)).
    One step takes train.accumulate batches (the epoch's last step whatever is left): each batch's loss is divided
    by that count and gradients are all-reduced over ranks on the last one only (DDP no_sync), so the step is
    that of the larger batch, up to each batch's own loss normaliser (positives, as mmdetection's
    GradientCumulativeOptimizerHook). precision: detector.precision.Precision; rank 0 logs and shows a bar.
    """
    model.train()
    state.criterion.train()
    accumulate, batches_per_epoch = cfg.train.accumulate, len(loader)
    iters_per_epoch = math.ceil(batches_per_epoch / accumulate)
    total_iters = cfg.train.epochs * iters_per_epoch if cfg.train.max_iters is None else cfg.train.max_iters
    parameters = [(name, p) for name, p in state.model.named_parameters() if p.requires_grad]
    check_gradients = [] if state.scaler.is_enabled() else parameters  # fp16: the scaler skips overflowing steps
    show_bar = dist.is_main_process() and sys.stderr.isatty()  # in a log file the ETA is in the log lines
    bar = tqdm(total=iters_per_epoch, initial=state.epoch_step, desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}",
               disable=not show_bar, dynamic_ncols=True, leave=False)
    batches, batch_index = iter(loader), state.epoch_step * accumulate
    first_iteration, started = state.iteration, time.time()
    try:
        while batch_index < batches_per_epoch:
            lr = learning_rate(state.iteration, base_lr, cfg.optim, iters_per_epoch, cfg.train.epochs)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            state.optimizer.zero_grad(set_to_none=True)
            step_batches = min(accumulate, batches_per_epoch - batch_index)
            skip, values = False, {}
            for micro in range(step_batches):
                images, targets = next(batches)
                last = micro == step_batches - 1
                images, targets = images_to(images, device, cfg.train.channels_last), to_device(targets, device)
                with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
                    with precision.autocast(device):
                        outputs = model(images)
                    losses = state.criterion(outputs, targets)
                    loss = sum(value for key, value in losses.items() if key.startswith("loss_"))
                    state.scaler.scale(loss / step_batches).backward()
                skip |= state.guard.check(state.iteration, losses, targets, check_gradients if last else [])
                for key, value in losses.items():
                    values[key] = values.get(key, 0) + value.detach() / step_batches
            batch_index += step_batches
            state.last_losses = values  # this rank's, averaged over the step's batches (detached)
            if not skip:
                if cfg.optim.grad_clip is not None:
                    state.scaler.unscale_(state.optimizer)
                    torch.nn.utils.clip_grad_norm_([p for _, p in parameters], cfg.optim.grad_clip)
                state.scaler.step(state.optimizer)
                state.scaler.update()
                if state.ema is not None:
                    state.ema.update(state.model)
            state.guard.end_step(state.iteration, skipped=skip)
            state.iteration += 1
            state.epoch_step += 1
            bar.update(1)
            if state.iteration % cfg.train.log_interval == 0 or state.iteration == 1:
                log_step(state, values, lr, total_iters, (state.iteration - first_iteration) /
                         max(time.time() - started, 1e-6), bar, writer)
            if batch_index >= batches_per_epoch:  # the epoch is complete: the position is the next one's start
                state.epoch, state.epoch_step = state.epoch + 1, 0
            yield state.iteration
    finally:
        bar.close()


def log_step(state, values, lr, total_iters, rate, bar, writer):
    """Rank 0 logs the losses averaged over ranks (every rank takes part in the all-reduce)."""
    values = {k: dist.reduce_mean(v).item() for k, v in values.items()}
    values["loss"] = sum(v for k, v in values.items() if k.startswith("loss_"))
    if not dist.is_main_process():
        return
    bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}")
    eta = datetime.timedelta(seconds=int((total_iters - state.iteration) / max(rate, 1e-6)))
    epoch = state.epoch + 1
    logger.info(f"epoch {epoch} iter {state.iteration}/{total_iters} lr {lr:.3e} "
                + " ".join(f"{k} {v:.4f}" for k, v in values.items()) + f" ({rate:.2f} it/s, eta {eta})")
    if writer is not None:
        for key, value in values.items():
            writer.add_scalar(f"train/{key}", value, state.iteration)
        writer.add_scalar("train/lr", lr, state.iteration)


def to_coco_results(detections, image_ids, cat_ids):
    """Per-image detections (xyxy original pixels, contiguous labels) -> COCO results (xywh, dataset ids)."""
    results = []
    for detection, image_id in zip(detections, image_ids):
        boxes = xyxy_to_xywh(detection["boxes"].cpu())          # a new tensor: the detections stay xyxy
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
