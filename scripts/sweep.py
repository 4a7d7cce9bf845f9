"""Run a grid of training runs (x seeds) and compare them: results.md, results.csv, runs.csv and results.png.

    # a box-loss ablation, two seeds each: mean and std per row, bar chart with error bars
    python scripts/sweep.py --configs shapes_gfl_r18.yaml --grid model.loss_box.type=giou,diou,ciou,eiou,focal_eiou \\
        --seeds 0,1 --out-dir work_dirs/sweep_box -- train.max_iters=200
    # the three detectors on the shapes set, same budget
    python scripts/sweep.py --configs shapes_retinanet_r18.yaml shapes_atss_r18.yaml shapes_gfl_r18.yaml
    # each run on 8 GPUs under torchrun; or print the commands for a cluster scheduler instead
    python scripts/sweep.py --configs gfl_r50.yaml --grid model.loss_box.type=giou,diou --nproc 8
    python scripts/sweep.py --configs gfl_r50.yaml --grid model.loss_box.type=giou,diou --dry-run

Every run writes <out-dir>/<run name>/ (train.py's run directory) and is started with `--resume auto`, so
re-running the same command skips finished runs (those with detections.json and metrics.json, which train.py
writes when a run ends), resumes interrupted ones from their last.pth and starts the rest. Ctrl-C or SIGTERM
to the sweep stops the current run the way train.py does (it saves last.pth) and starts no other; a second
Ctrl-C quits the run at once. --dry-run prints the commands of the runs not finished (each resumable the same
way) and, when some are finished, writes the report of those.

The report (also printed) has one row per config x grid combination: the mean over seeds of AP, AP50, AP75,
APs, APm, APl (and APr, APc, APf when the metrics have them), with the sample standard deviation when there
are several seeds, the best mean of each column in bold; training minutes (wall time of train.py, summed over
its attempts, as measured by the sweep: '-' for a run it did not time, '>=' when an attempt was killed before
it could be timed) and the model's parameter count.
"""
import argparse
import csv
import itertools
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
LVIS_COLUMNS = ["APr", "APc", "APf"]
TIME_FILE = "sweep_time.json"  # in each run directory: wall seconds of every train.py attempt the sweep ran


def runs(configs, grid, seeds=None):
    """(name, row name, config, overrides) for every config x grid combination x seed.

    grid: ["dotted.key=v1,v2", ...]; seeds: None (the configs' own seed) or a list of ints (train.seed=S,
    run name suffix -seed=S). A grid key ending in .type is named by its section (model.loss_box.type ->
    loss_box), any other by its last part.
    """
    keys = [item.split("=", 1)[0] for item in grid]
    values = [item.split("=", 1)[1].split(",") for item in grid]
    for config in configs:
        for combination in itertools.product(*values):
            overrides = [f"{key}={value}" for key, value in zip(keys, combination)]
            row = os.path.splitext(os.path.basename(config))[0] + "".join(
                f"-{key.split('.')[-2] if key.endswith('.type') else key.split('.')[-1]}={value}"
                for key, value in zip(keys, combination))
            for seed in seeds if seeds is not None else [None]:
                if seed is None:
                    yield row, row, config, overrides
                else:
                    yield f"{row}-seed={seed}", row, config, overrides + [f"train.seed={seed}"]


def parse_grid(items):
    """Check --grid items: KEY=V1[,V2...] with a dotted key and no empty value."""
    for item in items:
        key, _, values = item.partition("=")
        if not key or "." not in key or not values or "" in values.split(","):
            sys.exit(f"error: --grid {item!r}: expected dotted.key=value1,value2,...")
    return items


def parse_seeds(text):
    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        sys.exit(f"error: --seeds {text!r}: expected integers separated by commas, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        sys.exit(f"error: --seeds {text!r} repeats a seed")
    return seeds


def is_finished(work_dir):
    """train.py writes detections.json only when a run ends (metrics.json after every evaluation)."""
    return all(os.path.isfile(os.path.join(work_dir, name)) for name in ("metrics.json", "detections.json"))


def launcher(args):
    if args.nproc:
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        base = [torchrun] if os.path.isfile(torchrun) else [sys.executable, "-m", "torch.distributed.run"]
        return base + ["--standalone", f"--nproc_per_node={args.nproc}"]
    return shlex.split(args.launcher) if args.launcher else [sys.executable]


def train_command(launch, config, work_dir, overrides):
    return launch + [os.path.join(ROOT, "train.py"), "--config", config, "--work-dir", work_dir, "--resume", "auto",
                     *overrides]


# ----------------------------------------------------------------------------------------------- running
class Interrupts:
    """SIGINT / SIGTERM to the sweep: SIGTERM to the running train.py (it saves last.pth and exits), no next run.

    A Ctrl-C at the terminal reaches train.py itself too; the SIGTERM sent after it is one train.py ignores.
    """

    def __init__(self):
        self.signum, self.process = None, None

    def __enter__(self):
        self.previous = {signum: signal.signal(signum, self.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame):
        self.signum = signum
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


def read_times(work_dir):
    path = os.path.join(work_dir, TIME_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)["attempts"]


def write_times(work_dir, attempts):
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, TIME_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"attempts": attempts}, f, indent=1)
    os.replace(path + ".tmp", path)


def run_attempt(command, work_dir, interrupts):
    """Run train.py once, recording its wall time (None until it ends); returns its exit status."""
    attempts = read_times(work_dir) + [{"command": shlex.join(command), "seconds": None}]
    write_times(work_dir, attempts)
    started = time.time()
    interrupts.process = subprocess.Popen(command)
    try:
        returncode = interrupts.process.wait()
    finally:
        attempts[-1]["seconds"] = round(time.time() - started, 3)
        attempts[-1]["returncode"] = interrupts.process.returncode
        write_times(work_dir, attempts)
        interrupts.process = None
    return returncode


# ----------------------------------------------------------------------------------------------- report
def run_result(work_dir):
    """Final metrics (plus 'iteration') and training seconds of a finished run; seconds None if not timed,
    and 'complete' False when an attempt was killed before the sweep could time it."""
    with open(os.path.join(work_dir, "metrics.json")) as f:
        content = json.load(f)
    metrics = dict(content["final"], iteration=content["history"][-1]["iteration"] if content.get("history") else None)
    attempts = read_times(work_dir)
    seconds = sum(attempt["seconds"] or 0 for attempt in attempts) if attempts else None
    return {"metrics": metrics, "seconds": seconds,
            "complete": all(attempt["seconds"] is not None for attempt in attempts)}


def count_parameters(work_dir):
    """Parameters of the run's model, built from its config.yaml on the meta device (no memory, no weights),
    with the class count of its checkpoint; None when either file is missing."""
    checkpoint_path = os.path.join(work_dir, "checkpoints", "last.pth")
    config_path = os.path.join(work_dir, "config.yaml")
    if not (os.path.isfile(checkpoint_path) and os.path.isfile(config_path)):
        return None
    import torch
    sys.path.insert(0, ROOT)
    from detector import build_model
    from detector.config import load_config
    classes = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True).get("classes")
    if not classes:
        return None
    cfg = load_config(config_path)
    cfg.model.backbone.pretrained = None
    with torch.device("meta"):
        model = build_model(cfg.model, len(classes["cat_ids"]))
    return sum(parameter.numel() for parameter in model.parameters())


def summarise(rows):
    """rows: {row name: [run result, ...]} -> list of dicts: row, seeds, <metric> mean, <metric>_std (None with
    one seed), minutes mean, minutes_complete, parameters, iteration."""
    columns = columns_of(rows)
    summary = []
    for row, results in rows.items():
        entry = {"row": row, "seeds": len(results), "iteration": results[0]["metrics"].get("iteration"),
                 "parameters": results[0].get("parameters")}
        for column in columns:
            values = [result["metrics"].get(column) for result in results]
            values = [value for value in values if value is not None and value >= 0]  # -1: no GT in that range
            entry[column] = statistics.fmean(values) if values else None
            entry[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
        times = [result["seconds"] for result in results if result["seconds"] is not None]
        entry["minutes"] = statistics.fmean(times) / 60 if len(times) == len(results) else None
        entry["minutes_complete"] = all(result["complete"] for result in results)
        summary.append(entry)
    return summary


def columns_of(rows):
    present = {key for results in rows.values() for result in results for key in result["metrics"]}
    return COLUMNS + [column for column in LVIS_COLUMNS if column in present]


def format_table(summary, columns):
    """Markdown: AP in %, mean +- std over seeds; in bold, the best mean of each metric column (every mean
    that shows the same digits as the best)."""
    best = {column: max((f"{100 * entry[column]:.1f}" for entry in summary if entry[column] is not None),
                        key=float, default=None) for column in columns}
    several = max(entry["seeds"] for entry in summary) > 1
    header = ["run", *columns] + (["seeds"] if several else []) + ["iterations", "minutes", "parameters"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        cells = []
        for column in columns:
            value, std = entry[column], entry[f"{column}_std"]
            if value is None:
                cells.append("-")
                continue
            mean = f"{100 * value:.1f}"
            cell = mean + (f" ± {100 * std:.1f}" if std is not None else "")
            cells.append(f"**{cell}**" if len(summary) > 1 and mean == best[column] else cell)
        minutes = "-" if entry["minutes"] is None else \
            ("" if entry["minutes_complete"] else ">=") + f"{entry['minutes']:.1f}"
        parameters = "-" if entry["parameters"] is None else f"{entry['parameters'] / 1e6:.2f}M"
        iteration = "-" if entry["iteration"] is None else str(entry["iteration"])
        row = [entry["row"], *cells] + ([str(entry["seeds"])] if several else []) + [iteration, minutes, parameters]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_csv(path, records, fields):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def plot_chart(summary, rows, path, metrics=("AP", "AP50", "AP75")):
    """Grouped bars of the mean per row; with several seeds, sample-std error bars and each seed as a dot."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(max(5.0, 1.3 * len(summary) + 1.5), 3.8), dpi=80)
    axes = figure.subplots()
    width = 0.8 / len(metrics)
    for index, metric in enumerate(metrics):
        positions = [row + (index - (len(metrics) - 1) / 2) * width for row in range(len(summary))]
        means = [100 * (entry[metric] or 0) for entry in summary]
        errors = [100 * (entry[f"{metric}_std"] or 0) for entry in summary]
        several = any(entry["seeds"] > 1 for entry in summary)
        axes.bar(positions, means, width, yerr=errors if several else None, capsize=3, label=metric,
                 color=f"C{index}")
        if several:
            for position, entry in zip(positions, summary):
                values = [100 * result["metrics"][metric] for result in rows[entry["row"]]
                          if result["metrics"].get(metric) is not None]
                axes.plot([position] * len(values), values, "k.", markersize=4)
    names = [entry["row"] for entry in summary]
    prefix = os.path.commonprefix(names)
    prefix = prefix[:prefix.rfind("-") + 1] if len(names) > 1 else ""  # the part every row shares, up to a '-'
    axes.set_xticks(range(len(summary)), [name[len(prefix):] for name in names], rotation=15 if prefix else 20,
                    ha="right", fontsize=8)
    seeds = max(entry["seeds"] for entry in summary)
    axes.set(xlabel=prefix.rstrip("-"), ylabel="box AP (%)",
             title=f"mean over {seeds} seeds, error bars: std" if seeds > 1 else "box AP")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def write_report(out_dir, plan):
    """Report of the finished runs in `plan` ([(name, row, work_dir)]): results.md, results.csv, runs.csv and
    results.png in out_dir; returns the markdown table (None when no run is finished)."""
    rows, run_records, parameters = {}, [], {}
    for name, row, work_dir in plan:
        if not is_finished(work_dir):
            continue
        result = run_result(work_dir)
        if row not in parameters:
            parameters[row] = count_parameters(work_dir)
        result["parameters"] = parameters[row]
        rows.setdefault(row, []).append(result)
        run_records.append({"run": name, "row": row, **{k: v for k, v in result["metrics"].items()
                                                          if k != "per_class"},
                            "minutes": None if result["seconds"] is None else round(result["seconds"] / 60, 2),
                            "parameters": result["parameters"]})
    if not rows:
        return None
    columns = columns_of(rows)
    summary = summarise(rows)
    table = format_table(summary, columns)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    write_csv(os.path.join(out_dir, "results.csv"), summary,
              ["row", "seeds"] + [name for column in columns for name in (column, f"{column}_std")]
              + ["iteration", "minutes", "parameters"])
    write_csv(os.path.join(out_dir, "runs.csv"), run_records,
              ["run", "row"] + columns + ["iteration", "minutes", "parameters"])
    plot_chart(summary, rows, os.path.join(out_dir, "results.png"))
    return table


# ----------------------------------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--grid", nargs="+", action="extend", default=[],
                        help="dotted.key=value1,value2,... (several, after one --grid or each after its own)")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2: each row trained once per seed")
    parser.add_argument("--out-dir", default=os.path.join("work_dirs", "sweep"))
    parser.add_argument("--nproc", type=int, help="processes per run, under torchrun --standalone")
    parser.add_argument("--launcher", help="any other launcher, e.g. 'srun python' (default: this Python)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of the unfinished runs only")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides for every run (after --)")
    args = parser.parse_args()
    if args.nproc is not None and (args.nproc < 1 or args.launcher):
        parser.error("--nproc takes a positive count and replaces --launcher")
    seeds = parse_seeds(args.seeds) if args.seeds else None
    plan = [(name, row, os.path.join(args.out_dir, name), config, overrides + args.overrides)
            for name, row, config, overrides in runs(args.configs, parse_grid(args.grid), seeds)]
    launch = launcher(args)

    pending = [run for run in plan if not is_finished(run[2])]
    print(f"# {len(plan)} runs: {len(plan) - len(pending)} finished, {len(pending)} to run", flush=True)
    if args.dry_run:
        for _, _, work_dir, config, overrides in pending:
            print(shlex.join(train_command(launch, config, work_dir, overrides)))
    else:
        with Interrupts() as interrupts:
            for name, _, work_dir, config, overrides in pending:
                command = train_command(launch, config, work_dir, overrides)
                print("$", shlex.join(command), flush=True)
                returncode = run_attempt(command, work_dir, interrupts)
                if interrupts.signum is not None:
                    print(f"# {signal.Signals(interrupts.signum).name}: stopped at {name}; "
                          "run the same command again to resume", file=sys.stderr)
                    sys.exit(128 + interrupts.signum)
                if returncode != 0:
                    sys.exit(f"error: run {name} failed (exit status {returncode}); see {work_dir}/log.txt")
    table = write_report(args.out_dir, [(name, row, work_dir) for name, row, work_dir, _, _ in plan])
    if table is not None:
        print(table)
        print(f"# -> {args.out_dir}/results.md, results.csv, runs.csv, results.png")


if __name__ == "__main__":
    main()
