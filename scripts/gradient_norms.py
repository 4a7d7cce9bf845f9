"""Replay one of compare_torchvision.py's runs of our models and print, every iteration, the losses, the gradient
norm of each branch (before any clipping) and the classification logits' range: where a loss spike comes from.

    .venv/bin/python scripts/gradient_norms.py --model gfl --data ../shared/datasets/raccoon --iters 150 \
        --short-side 320 --max-size 427 --threads 1 --seed 1 --ours-config gfl=gfl_r50.yaml

(`--ours-config gfl=gfl_r50.yaml`: the reference GFL without gfl_r18_scratch.yaml's clip, whose spikes at
iterations 119, 127 and 137 of seed 1 this command shows: README, "From scratch on real photographs".)

Same data order, flips, initialisation and SGD schedule as compare_torchvision.py with the same arguments (one
thread gives the same losses to the printed digit), including the model's config (`--ours-config`, `--set`);
the config's optim.grad_clip is applied after the norms are taken. No evaluation.
"""
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import compare_torchvision as compare  # noqa: E402

from data.build import build_dataset  # noqa: E402

BRANCHES = {"backbone": ("backbone.",), "fpn": ("fpn.",), "cls_tower": ("head.cls_tower",),
            "cls_out": ("head.cls_out",), "reg_tower": ("head.reg_tower",), "reg_out": ("head.reg_out",),
            "other_head": ("head.",)}


def branch_norms(model):
    """L2 norm of the gradients of each branch (a parameter counts in the first branch whose prefix it has)."""
    squares = dict.fromkeys(BRANCHES, 0.0)
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            continue
        branch = next(b for b, prefixes in BRANCHES.items() if name.startswith(prefixes))
        squares[branch] += float(parameter.grad.double().pow(2).sum())
    return {branch: value ** 0.5 for branch, value in squares.items()}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    model_name = "gfl"
    if "--model" in argv:
        index = argv.index("--model")
        model_name = argv[index + 1]
        del argv[index:index + 2]
    extra = [] if "--out" in argv else ["--out", os.devnull]   # compare_torchvision requires it; nothing is written
    args = compare.parse_args(argv + extra + ["--models", model_name, "--eval-at", ""])
    torch.set_num_threads(args.threads or torch.get_num_threads())
    data_cfg = compare.data_config(args)
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        train_set = build_dataset(data_cfg, train=True)
    torch.manual_seed(args.seed)   # as compare_torchvision.train_and_evaluate, so the same initial weights
    detector = compare.build(model_name, args, train_set.num_classes)
    print(f"{model_name}: {detector.description}", flush=True)
    parameters = [p for p in detector.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    detector.model.train()
    detector.criterion.train()
    for iteration, (images, targets) in enumerate(compare.batches(train_set, data_cfg, args.seed, args.iters)):
        for group in optimizer.param_groups:
            group["lr"] = compare.warmup_constant_lr(iteration, args)
        outputs = detector.model(images)
        losses = detector.criterion(outputs, targets)
        loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = branch_norms(detector.model)
        total = sum(v * v for v in norms.values()) ** 0.5
        if detector.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, detector.grad_clip)
        optimizer.step()
        logits = outputs.cls_logits.detach()
        print(f"{iteration + 1} lr {optimizer.param_groups[0]['lr']:.5f} "
              + " ".join(f"{k}={float(v.detach()):.4f}" for k, v in losses.items())
              + f" | grad total {total:.2f} " + " ".join(f"{k} {v:.2f}" for k, v in norms.items())
              + f" | logits max {float(logits.max()):.2f} mean {float(logits.mean()):.2f} "
              f"min {float(logits.min()):.2f}", flush=True)


if __name__ == "__main__":
    main()
