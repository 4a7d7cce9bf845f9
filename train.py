"""Train a dense detector (RetinaNet, ATSS, GFL), evaluating on the val split with COCOeval.

    python train.py --config shapes_gfl_r18.yaml                       # one process
    torchrun --nproc_per_node=8 train.py --config gfl_r50.yaml         # one node, 8 GPUs
    python train.py --config gfl_r50.yaml optim.lr=0.02 data.batch_size=4   # dotted overrides
    python train.py --config gfl_r50.yaml --resume auto                # continue exactly where it stopped

Writes work_dirs/<config name>/ (or --work-dir): config.yaml, run_info.json (precision, machine), log.txt,
metrics.json, detections.json, tb/, checkpoints/ (iter_N.pth every train.checkpoint_every_iters steps and at
epoch ends, the newest train.keep_checkpoints kept; last.pth, the newest; epoch_N.pth weights). The config, its
files and the resume checkpoint are checked before anything is written; a directory holding another config's run
is refused. Ctrl-C / SIGTERM saves last.pth at the current iteration and prints the command that resumes it.
"""
import argparse
import json
import logging
import math
import os
import random
import shlex
import sys

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from data.build import (
    build_dataset,
    build_evaluator,
    build_test_loader,
    build_train_loader,
    check_categories,
    check_data_config,
)
from detector import build_criterion, build_model, build_postprocessor, dist
from detector.checkpoint import CheckpointDirectory
from detector.config import config_to_dict, dump_config, load_config
from detector.cpu import describe_cpu, keep_freed_memory
from detector.ema import ModelEMA
from detector.engine import build_optimizer, compiled, evaluate, train_steps
from detector.errors import run_cli
from detector.interrupt import StopOnSignal
from detector.nonfinite import NonFiniteGuard
from detector.precision import choose_precision
from detector.resume import check_resume, continued_position, find_resume
from detector.run_dir import check_config, check_run_dir, write_run_info
from detector.train_state import TrainState

logger = logging.getLogger("focaldet")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file, or a name inside configs/")
    parser.add_argument("--work-dir", help="run directory (default work_dirs/<config name>)")
    parser.add_argument("--resume", help="checkpoint to resume from, or 'auto' for <work-dir>/checkpoints/last.pth "
                                         "if it exists (else start fresh)")
    parser.add_argument("--resume-override", action="store_true", help="resume although the config changes the "
                        "trajectory (batch size, processes, schedule, model): continue from its weights and epoch")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    return parser.parse_intermixed_args()  # overrides may come before or after the options


def setup_logging(work_dir, main_process):
    """Rank 0 logs to stdout and <work_dir>/log.txt; other ranks only warn."""
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logging.getLogger("data").setLevel(logger.level)
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if main_process:
        handlers.append(logging.FileHandler(os.path.join(work_dir, "log.txt")))
    for handler in handlers:
        handler.setFormatter(formatter)
        logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logger.level)


def write_json(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def read_history(path, up_to_iteration):
    """Evaluations of a run being resumed (from its metrics.json), up to the checkpoint's iteration."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        history = json.load(f).get("history", [])
    return [entry for entry in history if entry["iteration"] <= up_to_iteration]


def resume_command(args, work_dir, world_size):
    """The command line that continues this run: the same config, overrides and work dir, --resume auto."""
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else "python"
    launcher = [f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', world_size)}"] if world_size > 1 \
        else [python]
    return " ".join(launcher + [shlex.join(["train.py", "--config", args.config, "--work-dir", work_dir,
                                             "--resume", "auto", *args.overrides])])


def main():
    args = parse_args()
    cfg = load_config(args.config, args.overrides)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    cfg.work_dir = cfg.work_dir or os.path.join("work_dirs", cfg.name)

    # --- checks before anything is written or read: config, files, run directory, resume checkpoint -------
    check_config(cfg)
    check_data_config(cfg.data)
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    rank, local_rank, world_size = dist.init_distributed("cuda" if use_cuda else "cpu")  # torchrun's environment
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    main_process = rank == 0
    directory = CheckpointDirectory(os.path.join(cfg.work_dir, "checkpoints"), cfg.train.keep_checkpoints)

    def choose_resume():  # on rank 0, whose filesystem holds the run; every rank gets its answer
        path, note = find_resume(args.resume, directory)
        checkpoint, changes = check_resume(path, cfg, world_size, args.resume_override) if path else (None, [])
        check_run_dir(cfg.work_dir, cfg)
        return path, note, checkpoint, changes
    resume, resume_note, checkpoint, changes = dist.run_on_main_process(choose_resume)

    # --- run directory, logging, precision, seeds ------------------------------------------------------
    if not use_cuda:
        keep_freed_memory()  # glibc: no page faults on every step's fresh buffers (detector/cpu.py)
    os.makedirs(directory.directory, exist_ok=True)
    setup_logging(cfg.work_dir, main_process)
    precision = choose_precision(cfg.train.amp, device)
    machine = torch.cuda.get_device_name(device) if use_cuda else describe_cpu(precision.name)
    if main_process:
        directory.remove_temporary_files()  # of a run killed while it wrote a checkpoint
        dump_config(cfg, os.path.join(cfg.work_dir, "config.yaml"))
        write_run_info(cfg.work_dir, {"precision": precision.name, "reason": precision.reason, "device": str(device),
                                      "machine": machine, "world_size": world_size, "torch": torch.__version__})
    random.seed(cfg.train.seed + rank)
    torch.manual_seed(cfg.train.seed + rank)
    logger.info(f"config {cfg.name}: {world_size} process(es) on {device} ({machine}), work dir {cfg.work_dir}")
    logger.info(f"precision {precision.name}: {precision.reason}")
    if resume_note:
        logger.info(resume_note)

    # --- data: rank 0 prepares the embedded set first so other ranks find it ready -------------------
    if not main_process:
        dist.barrier()
    train_set = build_dataset(cfg.data, train=True)
    val_set = build_dataset(cfg.data, train=False)
    if main_process:
        dist.barrier()
    check_categories(val_set, train_set.cat_ids, train_set.class_names, f"the train split ({train_set.ann_file})")
    classes = {"cat_ids": train_set.cat_ids, "class_names": train_set.class_names}
    train_loader = build_train_loader(train_set, cfg.data, cfg.train.seed, distributed=world_size > 1)
    val_loader = build_test_loader(val_set, cfg.data, distributed=world_size > 1)
    iters_per_epoch = math.ceil(len(train_loader) / cfg.train.accumulate)
    logger.info(f"train: {len(train_set)} images, {iters_per_epoch} iterations/epoch; val: {len(val_set)} images; "
                f"{train_set.num_classes} classes")

    # --- model, criterion, post-processor: three objects; DDP wraps only the model -------------------
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    model = build_model(cfg.model, train_set.num_classes)
    # Frozen BN statistics never change: only BN that trains them needs SyncBN or rank 0's broadcast each step.
    trains_statistics = cfg.model.backbone.norm == "bn" and not cfg.model.backbone.norm_eval
    model = dist.sync_batchnorm(model, cfg.train.sync_bn, trains_statistics, device).to(device,
                                                                                          memory_format=memory_format)
    criterion = build_criterion(cfg.model, train_set.num_classes).to(device)
    postprocessor = build_postprocessor(cfg.model)
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info(f"model: {cfg.model.head.type} R{cfg.model.backbone.depth}, {num_parameters / 1e6:.2f}M parameters")
    bare_model = model
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None,
                                        broadcast_buffers=trains_statistics and not cfg.train.sync_bn)
    model = compiled(model, cfg.train)  # train.compile: torch.compile for training (off by default)
    if cfg.train.compile:
        logger.info(f"model compiled with torch.compile (backend {cfg.train.compile_backend}) for training")

    # Linear scaling rule: optim.lr is the rate at base_batch_size images per optimizer step.
    total_batch = cfg.data.batch_size * world_size * cfg.train.accumulate
    base_lr = cfg.optim.lr * total_batch / cfg.optim.base_batch_size
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], base_lr, cfg.optim)
    ema = ModelEMA(bare_model, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema else None
    guard = NonFiniteGuard(cfg.train.on_nonfinite, cfg.train.max_nonfinite_skips, train_set.files_of)
    state = TrainState(bare_model, criterion, optimizer, precision.grad_scaler(device), ema, guard,
                       config_to_dict(cfg), classes, world_size)
    logger.info(f"total batch {total_batch}" + (f" ({cfg.train.accumulate} accumulated)" if cfg.train.accumulate > 1
                                                else "") + f": lr {base_lr:.4g} (optim.lr {cfg.optim.lr} at batch "
                f"{cfg.optim.base_batch_size})" + (", EMA of the weights evaluated" if ema else ""))

    # --- resume: weights, EMA, criterion statistics, optimizer, scaler, position, this rank's RNG streams ------
    history = []
    if checkpoint is not None:
        if checkpoint.get("classes") is not None:
            check_categories(train_set, checkpoint["classes"]["cat_ids"], None, f"checkpoint {resume}")
        position = continued_position(checkpoint, state.config_dict, world_size, iters_per_epoch)
        state.restore(checkpoint, resume, rank, position)
        history = read_history(os.path.join(cfg.work_dir, "metrics.json"), state.iteration)
        logger.info(f"resumed from {resume}: epoch {state.epoch}, iteration {state.iteration}"
                    + (f" ({state.epoch_step} steps into epoch {state.epoch + 1})" if state.epoch_step else ""))
        if changes:
            logger.warning(f"--resume-override: continuing with {'; '.join(changes)}")
        del checkpoint

    def stop_run(message):  # a signal: every rank has agreed to stop after the same step
        if main_process:
            logger.warning(f"{stop.signal_name}: {message}; resume with: "
                           f"{resume_command(args, cfg.work_dir, world_size)}")
            writer.close()
        dist.barrier()  # no rank exits (and has torchrun stop the others) before rank 0 has saved
        dist.cleanup()
        sys.exit(128 + stop.signum)

    every, max_iters = cfg.train.checkpoint_every_iters, cfg.train.max_iters
    writer = SummaryWriter(os.path.join(cfg.work_dir, "tb")) if main_process else None
    metrics, detections = None, None
    with StopOnSignal(device) as stop:
        for epoch in range(state.epoch, cfg.train.epochs):
            if max_iters is not None and state.iteration >= max_iters:
                break
            train_loader.batch_sampler.set_epoch(epoch, start_batch=state.epoch_step * cfg.train.accumulate)
            for iteration in train_steps(model, state, train_loader, base_lr, cfg, device, precision, writer):
                if stop.requested():  # the same answer on every rank (all-reduced)
                    state.save(directory)
                    stop_run(f"saved {directory.last} at iteration {iteration}")
                if every is not None and iteration % every == 0:
                    state.save(directory)
                if max_iters is not None and iteration >= max_iters:
                    break
            state.save(directory)  # the epoch's end, or train.max_iters mid-epoch: --resume continues at the next batch
            finished = state.epoch == epoch + 1  # every batch of this epoch trained
            if finished and main_process and (epoch + 1) % cfg.train.checkpoint_interval == 0:
                state.save_weights(directory.path(f"epoch_{epoch + 1}.pth"), cfg.train.save_optimizer == "all")
            done = epoch + 1 == cfg.train.epochs or (max_iters is not None and state.iteration >= max_iters)
            if done or (epoch + 1) % cfg.train.eval_interval == 0:
                evaluated = state.evaluated_model()
                dist.broadcast_buffers(evaluated)  # every rank evaluates rank 0's BN statistics, the checkpoint's
                metrics, detections = evaluate(evaluated, postprocessor, val_loader, val_set.cat_ids,
                                               build_evaluator(val_set, cfg.eval.backend), device, precision,
                                               cfg.train.channels_last)
                if main_process:
                    history.append({"epoch": epoch + 1, "iteration": state.iteration, **metrics})
                    logger.info(f"epoch {epoch + 1}: bbox AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f}")
                    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                        if metrics[key] is not None:
                            writer.add_scalar(f"val/{key}", metrics[key], state.iteration)
                    write_json(os.path.join(cfg.work_dir, "metrics.json"), {"final": metrics, "history": history})
                if not done and stop.requested():  # signalled during evaluation: last.pth is this epoch's end
                    stop_run(f"{directory.last} holds iteration {state.iteration}")
            if done:
                break

    if main_process:
        if detections is not None:
            write_json(os.path.join(cfg.work_dir, "detections.json"), detections)
        writer.close()
        if metrics is not None:
            logger.info(f"final bbox AP {metrics['AP']:.4f} ({cfg.name}, {state.iteration} iterations); "
                        f"eval.py reproduces it from {directory.last}")
    dist.cleanup()


if __name__ == "__main__":
    run_cli(main)
