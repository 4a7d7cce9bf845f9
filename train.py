"""Train a dense detector (RetinaNet, ATSS, GFL), evaluating on the val split with COCOeval.

    python train.py --config shapes_gfl_r18.yaml                       # one process
    torchrun --nproc_per_node=8 train.py --config gfl_r50.yaml         # one node, 8 GPUs
    python train.py --config gfl_r50.yaml optim.lr=0.02 data.batch_size=4   # dotted overrides

Writes work_dirs/<config name>/ (or --work-dir): config.yaml, run_info.json (precision, machine), log.txt,
metrics.json, detections.json, tb/, checkpoints/ (last.pth with optimizer state, epoch_N.pth weights).
The config, its files and the resume checkpoint are checked before anything is written; a directory
holding another config's run is refused. Ctrl-C / SIGTERM saves last.pth at the current iteration and
prints the command that resumes it.
"""
import argparse
import json
import logging
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
from detector.checkpoint import load_state, save_checkpoint
from detector.config import config_to_dict, dump_config, load_config
from detector.cpu import describe_cpu, keep_freed_memory
from detector.engine import build_optimizer, evaluate, train_one_epoch
from detector.errors import run_cli
from detector.interrupt import StopOnSignal
from detector.precision import choose_precision
from detector.run_dir import check_config, check_resume, check_run_dir, write_run_info

logger = logging.getLogger("focaldet")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file, or a name inside configs/")
    parser.add_argument("--work-dir", help="run directory (default work_dirs/<config name>)")
    parser.add_argument("--resume", help="checkpoint to resume from, or 'auto' for <work-dir>/checkpoints/last.pth "
                                         "if it exists (else start fresh)")
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
    last = os.path.join(cfg.work_dir, "checkpoints", "last.pth")
    resume = args.resume
    if resume == "auto":
        resume = last if os.path.isfile(last) else None
        resume_note = f"--resume auto: found {last}" if resume else f"--resume auto: no {last}, starting fresh"
    checkpoint = check_resume(resume, cfg) if resume else None
    check_run_dir(cfg.work_dir, cfg)

    # --- processes and devices: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK ---------------------
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    rank, local_rank, world_size = dist.init_distributed("cuda" if use_cuda else "cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    main_process = rank == 0
    if not use_cuda:
        keep_freed_memory()  # glibc: no page faults on every step's fresh buffers (detector/cpu.py)
    os.makedirs(os.path.join(cfg.work_dir, "checkpoints"), exist_ok=True)
    setup_logging(cfg.work_dir, main_process)
    precision = choose_precision(cfg.train.amp, device)
    machine = torch.cuda.get_device_name(device) if use_cuda else describe_cpu(precision.name)
    if main_process:
        dump_config(cfg, os.path.join(cfg.work_dir, "config.yaml"))
        write_run_info(cfg.work_dir, {"precision": precision.name, "reason": precision.reason, "device": str(device),
                                      "machine": machine, "world_size": world_size, "torch": torch.__version__})
    random.seed(cfg.train.seed + rank)
    torch.manual_seed(cfg.train.seed + rank)
    logger.info(f"config {cfg.name}: {world_size} process(es) on {device} ({machine}), work dir {cfg.work_dir}")
    logger.info(f"precision {precision.name}: {precision.reason}")
    if args.resume == "auto":
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
    evaluator = build_evaluator(val_set)
    iters_per_epoch = len(train_loader)
    logger.info(f"train: {len(train_set)} images, {iters_per_epoch} iterations/epoch; val: {len(val_set)} images; "
                f"{train_set.num_classes} classes")

    # --- model, criterion, post-processor: three objects; DDP wraps only the model -------------------
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    model = build_model(cfg.model, train_set.num_classes).to(device, memory_format=memory_format)
    criterion = build_criterion(cfg.model, train_set.num_classes).to(device)
    postprocessor = build_postprocessor(cfg.model)
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info(f"model: {cfg.model.head.type} R{cfg.model.backbone.depth}, {num_parameters / 1e6:.2f}M parameters")
    if world_size > 1:
        # Frozen BN statistics never change: only BN that trains them needs rank 0's broadcast each step.
        trains_statistics = cfg.model.backbone.norm == "bn" and not cfg.model.backbone.norm_eval
        model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None,
                                        broadcast_buffers=trains_statistics)
    bare_model = model.module if world_size > 1 else model

    # Linear scaling rule: optim.lr is the rate at base_batch_size images per iteration.
    total_batch = cfg.data.batch_size * world_size
    base_lr = cfg.optim.lr * total_batch / cfg.optim.base_batch_size
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], base_lr, cfg.optim)
    scaler = precision.grad_scaler(device)
    logger.info(f"total batch {total_batch}: lr {base_lr:.4g} "
                f"(optim.lr {cfg.optim.lr} at batch {cfg.optim.base_batch_size})")

    # --- resume: weights, criterion statistics, optimizer, epoch and iteration ----------------------
    # A checkpoint records the epochs completed and, when saved mid-epoch (a signal, train.max_iters), the
    # steps already done in the next one (epoch_step): the resumed epoch starts at that batch.
    start_epoch, iteration, epoch_step, history = 0, 0, 0, []
    if checkpoint is not None:
        if checkpoint.get("classes") is not None:
            check_categories(train_set, checkpoint["classes"]["cat_ids"], None, f"checkpoint {resume}")
        load_state(bare_model, checkpoint["model"], resume)
        load_state(criterion, checkpoint["criterion"], resume, "criterion")
        load_state(optimizer, checkpoint["optimizer"], resume, "optimizer")
        start_epoch, iteration = checkpoint["epoch"], checkpoint["iteration"]
        epoch_step = checkpoint.get("epoch_step", 0)
        history = read_history(os.path.join(cfg.work_dir, "metrics.json"), iteration)
        logger.info(f"resumed from {resume}: epoch {start_epoch}, iteration {iteration}"
                    + (f" ({epoch_step} steps into epoch {start_epoch + 1})" if epoch_step else ""))
        del checkpoint

    def save(name, epoch, step, with_optimizer):
        save_checkpoint(os.path.join(cfg.work_dir, "checkpoints", name), bare_model, criterion,
                        optimizer if with_optimizer else None, epoch, iteration, config_to_dict(cfg), classes, step)

    writer = SummaryWriter(os.path.join(cfg.work_dir, "tb")) if main_process else None
    metrics, detections = None, None
    with StopOnSignal(device) as stop:
        for epoch in range(start_epoch, cfg.train.epochs):
            train_loader.batch_sampler.set_epoch(epoch, start_batch=epoch_step)
            epoch_start = iteration - epoch_step
            iteration, stopped = train_one_epoch(model, criterion, train_loader, optimizer, epoch, iteration,
                                                 base_lr, cfg, device, precision, scaler, writer,
                                                 cfg.train.max_iters, stop.requested)
            epoch_step = iteration - epoch_start
            finished = epoch_step >= iters_per_epoch  # every batch of this epoch trained
            if stopped:  # the same answer on every rank (all-reduced)
                if main_process:
                    save("last.pth", epoch, epoch_step, with_optimizer=True)
                    logger.warning(f"{stop.signal_name}: saved {last} at iteration {iteration}; resume with: "
                                   f"{resume_command(args, cfg.work_dir, world_size)}")
                    writer.close()
                dist.barrier()  # no rank exits (and has torchrun stop the others) before rank 0 has saved
                dist.cleanup()
                sys.exit(128 + stop.signum)
            done = epoch + 1 == cfg.train.epochs or (cfg.train.max_iters is not None
                                                     and iteration >= cfg.train.max_iters)
            if main_process:
                if finished:
                    save("last.pth", epoch + 1, 0, with_optimizer=True)
                    if (epoch + 1) % cfg.train.checkpoint_interval == 0:
                        save(f"epoch_{epoch + 1}.pth", epoch + 1, 0,
                             with_optimizer=cfg.train.save_optimizer == "all")
                else:  # train.max_iters ended it mid-epoch: --resume continues at the next batch
                    save("last.pth", epoch, epoch_step, with_optimizer=True)
            epoch_step = 0
            if done or (epoch + 1) % cfg.train.eval_interval == 0:
                dist.broadcast_buffers(bare_model)  # every rank evaluates rank 0's BN statistics, the checkpoint's
                metrics, detections = evaluate(bare_model, postprocessor, val_loader, val_set.cat_ids, evaluator,
                                               device, precision, cfg.train.channels_last)
                if main_process:
                    history.append({"epoch": epoch + 1, "iteration": iteration, **metrics})
                    logger.info(f"epoch {epoch + 1}: bbox AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f}")
                    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                        if metrics[key] is not None:
                            writer.add_scalar(f"val/{key}", metrics[key], iteration)
                    write_json(os.path.join(cfg.work_dir, "metrics.json"), {"final": metrics, "history": history})
                if not done and stop.requested():  # signalled during evaluation: last.pth is this epoch's end
                    if main_process:
                        logger.warning(f"{stop.signal_name}: {last} holds iteration {iteration}; resume with: "
                                       f"{resume_command(args, cfg.work_dir, world_size)}")
                        writer.close()
                    dist.barrier()
                    dist.cleanup()
                    sys.exit(128 + stop.signum)
            if done:
                break

    if main_process:
        if detections is not None:
            write_json(os.path.join(cfg.work_dir, "detections.json"), detections)
        writer.close()
        if metrics is not None:
            logger.info(f"final bbox AP {metrics['AP']:.4f} ({cfg.name}, {iteration} iterations); "
                        f"eval.py reproduces it from {last}")
    dist.cleanup()


if __name__ == "__main__":
    run_cli(main)
