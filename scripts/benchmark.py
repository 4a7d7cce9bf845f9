"""Speed and memory of a config: training steps (model + criterion + optimizer) and inference (model + NMS).

    python scripts/benchmark.py --config shapes_gfl_r18.yaml                      # CPU, the demo's settings
    python scripts/benchmark.py --config shapes_gfl_r18.yaml train.channels_last=false train.amp=off
    python scripts/benchmark.py --config gfl_r50.yaml --height 800 --width 1216 --batch-size 2   # on a GPU

Inputs are random images of the given size with random ground-truth boxes (no dataset needed), so the
numbers measure the detector, not the data loader; the optimizer step is plain SGD whatever optim.type
says (AdamW's step costs a few ms more per iteration on the demo's 11.6M parameters). Prints one table
row per phase: milliseconds per iteration (median over --iters after --warmup), images per second,
peak memory (CUDA: allocated by torch in that phase; CPU: the process's peak resident set size in that phase,
VmHWM reset through /proc/self/clear_refs, or the peak so far where that file is not writable),
and beside every figure the machine it came from: precision (train.amp as resolved by
detector/precision.py), the CPU's instruction-set capability (ATen's; ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 emulates an AVX2-only CPU), a matmul probe in that precision right after the
phase (GFLOP/s: shared machines change speed minute to minute) and the CPU or GPU model.
The model is untrained, so few candidates pass the score threshold and inference holds little NMS work.

`--phases criterion,train` adds a `criterion` row, run first in the fresh process: the criterion's forward and
backward alone on random head outputs of the model's shapes (cls_logits [B, A, C] a leaf in the forward's
precision), with the peak memory above those inputs: what the loss path itself costs (with C = 1203 classes
every [B, A, C] temporary counts; README, "Memory with 1203 classes").

`--vs torchvision` times the config against torchvision's counterpart (RetinaNet for RetinaNet configs, FCOS for
ATSS and GFL; scripts/torchvision_models.py, built as its *_resnet50_fpn builder with weights=None) at the same
backbone depth, input size, batch, classes (`--classes`) and GT boxes per image (`--gts`): training steps, then
inference with post-processing, interleaved A B A B in one process, with medians, minima and the ratios
ours / theirs, the criterion alone, each model's peak memory (measured in its own fresh process) and the machine
facts; `--json FILE` writes them too. On CUDA the steps are timed with CUDA events and img/s is reported.

    python scripts/benchmark.py --config gfl_r50.yaml --vs torchvision --height 512 --width 512 --batch-size 2 \
        --gts 5 train.amp=off

`--phases` picks the phases there too (`--phases inference`: no training steps, criterion or peaks). With
`eval.compile=true` our inference runs eval.py's compiled module (inductor, frozen weights; its first warm-up call
compiles); `--compile-theirs` compiles torchvision's backbone and head the same way, so that the ratio compares
compiled with compiled.
"""
import argparse
import copy
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # scripts/: torchvision_models, also when imported

from torchvision_models import build_torchvision_detector, to_torchvision_inputs  # noqa: E402

from detector import build_criterion, build_model, build_postprocessor  # noqa: E402
from detector.config import load_config  # noqa: E402
from detector.cpu import cpu_capability, cpu_model, keep_freed_memory, matmul_gflops  # noqa: E402
from detector.engine import compiled, compiled_for_inference  # noqa: E402
from detector.precision import choose_precision  # noqa: E402


def random_batch(batch_size, height, width, num_classes, boxes_per_image, generator):
    """Images [B, 3, H, W] and collate-style targets with boxes of 10..min(H, W)/2 px."""
    images = torch.randn(batch_size, 3, height, width, generator=generator)
    sizes = 10 + torch.rand(batch_size, boxes_per_image, 2, generator=generator) * (min(height, width) / 2 - 10)
    corners = torch.rand(batch_size, boxes_per_image, 2, generator=generator) * (
        torch.tensor([width, height]) - sizes)
    targets = {
        "boxes": torch.cat([corners, corners + sizes], dim=-1),                      # [B, M, 4]
        "labels": torch.randint(num_classes, (batch_size, boxes_per_image), generator=generator),
        "valid": torch.ones(batch_size, boxes_per_image, dtype=torch.bool),
        "crowd": torch.zeros(batch_size, boxes_per_image, dtype=torch.bool),
        "image_sizes": torch.tensor([[height, width]] * batch_size),
        "pad_sizes": torch.tensor([[height, width]] * batch_size),
        "scale_factors": torch.ones(batch_size, 2, dtype=torch.float64),
    }
    return images, targets


def random_head_outputs(model, batch_size, height, width, num_classes, box_channels, dtype, device, generator):
    """HeadOutputs of the model's shapes for a [B, 3, H, W] batch, with random leaf tensors (no forward pass)."""
    from detector.detector import HeadOutputs
    sizes = [(-(-height // stride), -(-width // stride)) for stride in model.anchor_generator.strides]
    anchors, strides, num_per_level = model.anchor_generator(sizes, device)
    num_anchors = anchors.shape[0]
    leaf = lambda *shape: (torch.randn(*shape, generator=generator) * 0.5).to(device, dtype).requires_grad_()  # noqa: E731
    cls_logits = leaf(batch_size, num_anchors, num_classes)
    with torch.no_grad():
        cls_logits -= 4.6  # the prior bias: p about 0.01, as a fresh head starts
    centerness = leaf(batch_size, num_anchors) if model.head.centerness_out is not None else None
    return HeadOutputs(cls_logits, leaf(batch_size, num_anchors, box_channels), centerness, anchors, strides,
                       num_per_level)


def time_once(function, device):
    """Seconds of one call of function(): CUDA events on a GPU, the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def timed(function, device, warmup, iters):
    """Median seconds of function() over iters calls, after warmup calls."""
    times = [time_once(function, device) for _ in range(warmup + iters)]
    return statistics.median(times[warmup:])


def _status_mib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_memory(device):
    """Start a phase's peak: CUDA's counter, or the CPU resident high-water mark (Linux clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident size
    except OSError:
        pass  # peak_memory_mib then reports the peak since the process started


def current_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _status_mib("VmRSS") or 0.0


def peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine_facts(device):
    """(model name, instruction-set capability) of the CPU, or of the GPU (name, 'sm_XY')."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return torch.cuda.get_device_name(device), f"sm_{major}{minor}"
    return cpu_model(), cpu_capability()


def matmul_probe(device, precision):
    """GFLOP/s of a matmul in the run's precision: 1024^2 on the CPU, 8192^2 on a GPU."""
    if device.type != "cuda":
        return matmul_gflops(precision)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    seconds = timed(lambda: a @ a, device, 2, 5)
    return 2 * 8192**3 / seconds / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch-size", type=int, help="default: data.batch_size")
    parser.add_argument("--height", type=int, help="default: data.train_crop[0], else max(data.train_short_sides)")
    parser.add_argument("--width", type=int, help="default: data.train_crop[1], else data.max_size")
    parser.add_argument("--num-classes", "--classes", type=int, default=80, dest="num_classes")
    parser.add_argument("--boxes-per-image", "--gts", type=int, default=8, dest="boxes_per_image",
                        help="ground-truth boxes per image")
    parser.add_argument("--vs", choices=["torchvision"], help="time against torchvision's counterpart, interleaved")
    parser.add_argument("--json", help="also write the --vs figures to this file")
    parser.add_argument("--compile-theirs", action="store_true",
                        help="with --vs and eval.compile=true: compile torchvision's backbone and head for inference "
                             "the same way")
    parser.add_argument("--memory-of", choices=["ours", "torchvision"], help=argparse.SUPPRESS)  # --vs's subprocess
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--phases", default="train,inference",
                        help="comma-separated, from criterion (run first), train, inference")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    args = parser.parse_intermixed_args()  # overrides may come before and after options
    phases = args.phases = args.phases.split(",")
    unknown = sorted(set(phases) - {"criterion", "train", "inference"})
    if unknown:
        parser.error(f"--phases: unknown {unknown}; valid: criterion, train, inference")

    cfg = load_config(args.config, args.overrides + ["model.backbone.pretrained=null"])
    if args.compile_theirs and not (args.vs and cfg.eval.compile):
        parser.error("--compile-theirs goes with --vs torchvision and eval.compile=true")
    if args.vs and not {"train", "inference"} & set(phases):
        parser.error("--vs times the train and inference phases: --phases must name at least one of them")
    use_cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if not use_cuda:
        keep_freed_memory()  # as train.py does on the CPU
    precision = choose_precision(cfg.train.amp, device)
    batch_size = args.batch_size or cfg.data.batch_size
    crop = cfg.data.train_crop
    height = args.height or (crop[0] if crop else max(cfg.data.train_short_sides))
    width = args.width or (crop[1] if crop else cfg.data.max_size)
    height, width = (-(-side // cfg.data.size_divisor) * cfg.data.size_divisor for side in (height, width))
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = build_model(cfg.model, args.num_classes).to(device, memory_format=memory_format)
    criterion = build_criterion(cfg.model, args.num_classes).to(device)
    postprocessor = build_postprocessor(cfg.model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images, targets = random_batch(batch_size, height, width, args.num_classes, args.boxes_per_image, generator)
    images = images.to(device, memory_format=memory_format)
    targets = {key: value.to(device) for key, value in targets.items()}
    scaler = precision.grad_scaler(device)
    if args.vs or args.memory_of:
        return versus_torchvision(args, cfg, device, precision, model, criterion, postprocessor, optimizer, scaler,
                                  images, targets)

    forward = compiled(model, cfg.train)  # train.compile: the first --warmup steps include the compilation
    inference_forward = compiled_for_inference(model, cfg) if cfg.eval.compile else forward  # eval.compile

    def train_step():
        with precision.autocast(device):
            outputs = forward(images)
        losses = criterion(outputs, targets)
        loss = sum(value for key, value in losses.items() if key.startswith("loss_"))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    @torch.no_grad()
    def inference_step():
        with precision.autocast(device):
            outputs = inference_forward(images)
        postprocessor(outputs, targets["image_sizes"], targets["scale_factors"])

    forward_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision.name, torch.float32)
    head_outputs = {}

    def criterion_step():
        losses = criterion(head_outputs["outputs"], targets)
        sum(value for key, value in losses.items() if key.startswith("loss_")).backward()

    machine, capability = machine_facts(device)
    print(f"{cfg.name}: {cfg.model.head.type} R{cfg.model.backbone.depth}, batch {batch_size} x {height}x{width}, "
          f"{device}, {torch.get_num_threads()} threads, channels_last {cfg.train.channels_last}")
    print(f"machine: {machine}, capability {capability}; precision {precision.name} ({precision.reason})")
    print(f"{'phase':<10} {'ms/iter':>9} {'images/s':>9} {'peak MiB':>9} {'precision':>9} {'capability':>12} "
          f"{'probe GFLOP/s':>13}  machine")
    for name, function, mode in (("criterion", criterion_step, True), ("train", train_step, True),
                                 ("inference", inference_step, False)):
        if name not in phases:
            continue
        model.train(mode)
        criterion.train(mode)
        note = ""
        if name == "criterion":  # first in the process, so no freed memory of another phase hides its peak
            head_outputs["outputs"] = random_head_outputs(model, batch_size, height, width, args.num_classes,
                                                          model.head.box_channels, forward_dtype, device,
                                                          generator)
        inputs_mib = current_memory_mib(device)
        reset_peak_memory(device)
        seconds = timed(function, device, args.warmup, args.iters)
        peak = peak_memory_mib(device)
        if name == "criterion":
            cls_logits = head_outputs.pop("outputs").cls_logits
            size_mib = cls_logits.numel() * cls_logits.element_size() / 2**20
            note = (f"  (+{peak - inputs_mib:.0f} MiB over its inputs; cls_logits {list(cls_logits.shape)} "
                    f"{str(cls_logits.dtype).replace('torch.', '')}, {size_mib:.0f} MiB)")
            del cls_logits
        probe = matmul_probe(device, precision.name)  # right after the phase: the machine's speed at that moment
        print(f"{name:<10} {seconds * 1000:>9.1f} {batch_size / seconds:>9.1f} {peak:>9.0f} "
              f"{precision.name:>9} {capability:>12} {probe:>13.0f}  {machine}{note}")


def our_steps(model, criterion, postprocessor, optimizer, scaler, precision, device, images, targets, forward=None,
              inference_forward=None):
    """(train step, inference step with post-processing, criterion forward + backward) of our detector.

    forward: what runs the model in training (train.compile's compiled module; default `model` itself);
    inference_forward: what runs it in inference (eval.compile's frozen module; default `forward`).
    """
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    inference_forward = forward if inference_forward is None else inference_forward

    def train():
        model.train()
        with precision.autocast(device):
            outputs = forward(images)
        losses = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(v for k, v in losses.items() if k.startswith("loss_"))).backward()
        scaler.step(optimizer)
        scaler.update()

    @torch.no_grad()
    def inference():
        model.eval()
        with precision.autocast(device):
            outputs = inference_forward(images)
        postprocessor(outputs, targets["image_sizes"], targets["scale_factors"])

    fixed = {}

    def criterion_only():
        if not fixed:  # head outputs, detached: the criterion's own cost (assignment to backward)
            with torch.no_grad(), precision.autocast(device):
                fixed["outputs"] = model.train()(images)
            outputs = fixed["outputs"]
            fixed["leaves"] = {key: getattr(outputs, key).detach().requires_grad_()
                               for key in ("cls_logits", "box_regression", "centerness")
                               if getattr(outputs, key) is not None}
        losses = criterion(dataclasses.replace(fixed["outputs"], **fixed["leaves"]), targets)
        sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    return train, inference, criterion_only


def torchvision_steps(cfg, num_classes, precision, device, images, targets, compile_inference=False):
    """(torchvision's name, train step, inference step) for the config's counterpart at the same depth and width.

    compile_inference: its inference runs a copy whose backbone (with FPN) and head are compiled as eval.compile
    compiles ours (inductor, frozen weights); its transform and post-processing stay eager, as our post-processor.
    """
    kind = "retinanet" if cfg.model.head.type == "retinanet" else "fcos"
    model = build_torchvision_detector(kind, cfg.model.backbone.depth, cfg.model.fpn.out_channels, num_classes,
                                       images.shape[-2], images.shape[-1], cfg.model.test.score_thr).to(device)
    compiled_copy = []   # compile_inference: built at the first inference call, from the weights trained by then

    def inference_model():
        if not compile_inference:
            return model
        if not compiled_copy:
            copied = copy.deepcopy(model).eval()
            copied.backbone = compiled_for_inference(copied.backbone, cfg)
            copied.head = compiled_for_inference(copied.head, cfg)
            compiled_copy.append(copied)
        return compiled_copy[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = precision.grad_scaler(device)
    image_list, target_list = to_torchvision_inputs(images.contiguous(), targets)

    def train():
        model.train()
        with precision.autocast(device):
            losses = model(image_list, target_list)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        scaler.step(optimizer)
        scaler.update()

    @torch.no_grad()
    def inference():
        detector = inference_model().eval()
        with precision.autocast(device):
            detector(image_list)
    name = f"torchvision {type(model).__name__} R{cfg.model.backbone.depth}"
    return name + (" (compiled for inference)" if compile_inference else ""), train, inference


def peak_in_subprocess(which):
    """Peak memory (MiB) of two training steps of `which` model alone, in a fresh process (this script, argv kept)."""
    argv, skip = [], False
    for token in sys.argv[1:]:   # all but --vs X, --json X (or --vs=X, --json=X) and --compile-theirs
        if skip or token.startswith(("--vs=", "--json=")) or token == "--compile-theirs":
            skip = False
            continue
        skip = token in ("--vs", "--json")
        if not skip:
            argv.append(token)
    result = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--memory-of", which],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def versus_torchvision(args, cfg, device, precision, model, criterion, postprocessor, optimizer, scaler, images,
                       targets):
    ours = our_steps(model, criterion, postprocessor, optimizer, scaler, precision, device, images, targets,
                     compiled(model, cfg.train), compiled_for_inference(model, cfg) if cfg.eval.compile else None)
    name, *theirs = torchvision_steps(cfg, args.num_classes, precision, device, images, targets,
                                      args.compile_theirs)
    if args.memory_of:  # the subprocess: two training steps of one model, then its peak
        reset_peak_memory(device)
        step = ours[0] if args.memory_of == "ours" else theirs[0]
        step(), step()
        print(json.dumps({"peak_mib": peak_memory_mib(device)}))
        return
    machine, capability = machine_facts(device)
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    print(f"{cfg.name} ({cfg.model.head.type} R{cfg.model.backbone.depth}) vs {name} (weights=None): batch {batch} x "
          f"{height}x{width}, {args.boxes_per_image} GTs/image, {args.num_classes} classes, {device}, "
          f"{torch.get_num_threads()} threads, precision {precision.name}")
    print(f"machine: {machine}, capability {capability}; ours compiled for training {cfg.train.compile}, for "
          f"inference {cfg.eval.compile} (backend {cfg.train.compile_backend})")
    figures = {"config": cfg.name, "torchvision": name, "batch": batch, "height": height, "width": width,
               "gts": args.boxes_per_image, "classes": args.num_classes, "precision": precision.name,
               "device": str(device), "machine": machine, "capability": capability, "phases": {},
               "ours_compiled": {"train": cfg.train.compile, "inference": cfg.eval.compile,
                                 "backend": cfg.train.compile_backend}}
    print(f"{'phase':<10} {'ours ms med/min':>16} {'theirs ms med/min':>18} {'ratio med':>9} {'ratio min':>9} "
          f"{'ours img/s':>10} {'theirs img/s':>12}")
    for phase, mine, other in (("train", ours[0], theirs[0]), ("inference", ours[1], theirs[1])):
        if phase not in args.phases:
            continue
        times = {"ours": [], "theirs": []}
        for step in range(args.warmup + args.iters):  # A B A B: both see the machine's same moments
            for key, function in (("ours", mine), ("theirs", other)):
                seconds = time_once(function, device)
                if step >= args.warmup:
                    times[key].append(seconds)
        median = {key: statistics.median(value) for key, value in times.items()}
        minimum = {key: min(value) for key, value in times.items()}
        row = {"ours_median_s": median["ours"], "ours_min_s": minimum["ours"], "theirs_median_s": median["theirs"],
               "theirs_min_s": minimum["theirs"], "ratio_median": median["ours"] / median["theirs"],
               "ratio_min": minimum["ours"] / minimum["theirs"], "ours_images_per_s": batch / median["ours"],
               "theirs_images_per_s": batch / median["theirs"]}
        figures["phases"][phase] = row
        print(f"{phase:<10} {1000 * median['ours']:>8.0f}/{1000 * minimum['ours']:<7.0f} "
              f"{1000 * median['theirs']:>9.0f}/{1000 * minimum['theirs']:<8.0f} {row['ratio_median']:>9.2f} "
              f"{row['ratio_min']:>9.2f} {row['ours_images_per_s']:>10.1f} {row['theirs_images_per_s']:>12.1f}")
    if "train" not in args.phases:  # the criterion's share and the peak memory are of training steps
        figures["probe_gflops"] = matmul_probe(device, precision.name)
        print(f"{precision.name} matmul probe {figures['probe_gflops']:.0f} GFLOP/s")
        write_json(args.json, figures)
        return
    seconds = timed(ours[2], device, args.warmup, args.iters)
    figures["criterion_s"] = seconds
    figures["criterion_share_of_train"] = seconds / figures["phases"]["train"]["ours_median_s"]
    print(f"criterion alone (assignment, targets, losses, backward): {1000 * seconds:.1f} ms = "
          f"{100 * figures['criterion_share_of_train']:.2f}% of our training step")
    figures["peak_mib"] = {"ours": peak_in_subprocess("ours"), "theirs": peak_in_subprocess("torchvision")}
    figures["probe_gflops"] = matmul_probe(device, precision.name)
    print(f"peak memory of two training steps, each alone in a fresh process: ours {figures['peak_mib']['ours']:.0f} "
          f"MiB, theirs {figures['peak_mib']['theirs']:.0f} MiB; {precision.name} matmul probe "
          f"{figures['probe_gflops']:.0f} GFLOP/s")
    write_json(args.json, figures)


def write_json(path, figures):
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
