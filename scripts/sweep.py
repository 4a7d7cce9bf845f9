"""Run a grid of training runs and write one comparison table (markdown) from their metrics.json.

    # the three detectors on the shapes set, same budget
    python scripts/sweep.py --configs shapes_retinanet_r18.yaml shapes_atss_r18.yaml shapes_gfl_r18.yaml
    # a loss ablation: one run per value, every other setting fixed
    python scripts/sweep.py --configs shapes_gfl_r18.yaml --grid model.loss_box.type=giou,ciou,eiou,focal_eiou
    # with torchrun, and overrides applied to every run
    python scripts/sweep.py --configs gfl_r50.yaml --grid model.loss_box.type=giou,diou \
        --launcher "torchrun --nproc_per_node=8" -- train.epochs=12

Each run writes to <out-dir>/<run name>/ (metrics.json, log.txt, ...); the table goes to
<out-dir>/table.md and is printed. A run whose metrics.json already exists is not trained again
(delete its folder to redo it); one without it starts, or resumes the last.pth an interrupted run left.
"""
import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def runs(configs, grid):
    """(name, config, overrides) for every config x every combination of the grid values."""
    keys = [item.split("=", 1)[0] for item in grid]
    values = [item.split("=", 1)[1].split(",") for item in grid]
    for config in configs:
        for combination in itertools.product(*values):
            overrides = [f"{key}={value}" for key, value in zip(keys, combination)]
            suffix = "".join(f"-{key.split('.')[-2] if key.endswith('.type') else key.split('.')[-1]}={value}"
                             for key, value in zip(keys, combination))
            yield os.path.splitext(os.path.basename(config))[0] + suffix, config, overrides


def format_table(rows):
    lines = ["| run | " + " | ".join(COLUMNS) + " | iterations | minutes |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for name, metrics, minutes in rows:
        cells = [f"{100 * metrics[c]:.1f}" if metrics.get(c) is not None and metrics[c] >= 0 else "-" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {metrics.get('iteration', '-')} | {minutes} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--grid", nargs="*", default=[], help="dotted.key=value1,value2,...")
    parser.add_argument("--out-dir", default=os.path.join("work_dirs", "sweep"))
    parser.add_argument("--launcher", default=shlex.quote(sys.executable),
                        help="e.g. 'torchrun --nproc_per_node=8'")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides for every run (after --)")
    args = parser.parse_args()

    rows = []
    for name, config, overrides in runs(args.configs, args.grid):
        work_dir = os.path.join(args.out_dir, name)
        metrics_path = os.path.join(work_dir, "metrics.json")
        minutes = "-"
        if not os.path.isfile(metrics_path):
            # --resume auto: a run interrupted earlier (Ctrl-C saves last.pth) continues where it stopped
            command = shlex.split(args.launcher) + [os.path.join(ROOT, "train.py"), "--config", config,
                                                     "--work-dir", work_dir, "--resume", "auto",
                                                     *overrides, *args.overrides]
            print("$", " ".join(shlex.quote(part) for part in command), flush=True)
            started = time.time()
            if subprocess.run(command).returncode != 0:
                sys.exit(f"error: run {name} failed; see {work_dir}/log.txt")
            minutes = f"{(time.time() - started) / 60:.1f}"
        with open(metrics_path) as f:
            content = json.load(f)
        final = dict(content["final"], iteration=content["history"][-1]["iteration"])
        rows.append((name, final, minutes))
    table = format_table(rows)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
