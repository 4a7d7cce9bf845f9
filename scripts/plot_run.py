"""Overlay the training curves of one or more run directories: loss terms, learning rate and validation AP.

    .venv/bin/python scripts/plot_run.py work_dirs/sweep/shapes_gfl_r18-loss_box=giou-seed=0 \\
        work_dirs/sweep/shapes_gfl_r18-loss_box=eiou-seed=0 --out curves.png --smooth 0.6

Sources, chosen for what survives interrupted and resumed runs:
* loss terms and lr: the TensorBoard scalars under <run>/tb/ (train/loss*, train/lr; every log interval).
  A resumed run appends a new event file; points that the crashed run logged beyond the checkpoint it was
  resumed from are dropped (a step logged again replaces every later point recorded before it), so each
  curve is the history of the weights that were kept. log.txt carries the same numbers as text, but also
  those orphaned lines.
* AP: <run>/metrics.json's "history" (AP, AP50, ... per evaluation), which train.py truncates on resume.
"""
import argparse
import json
import os
import sys

from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.errors import UserError, run_cli  # noqa: E402

AP_KEYS = ("AP", "AP50", "AP75")


class RunError(UserError):
    """A run directory without the files to plot."""


def drop_orphans(events):
    """[(wall_time, step, value)] of one scalar -> sorted [(step, value)] of the surviving history.

    In the order of writing, a step that is not larger than the last one kept starts a resumed history:
    every point kept so far at that step or later belongs to the abandoned one and is dropped.
    """
    kept = []
    for _, step, value in sorted(events):
        while kept and kept[-1][0] >= step:
            kept.pop()
        kept.append((step, value))
    return kept


def read_scalars(work_dir):
    """{tag: [(step, value)]} of every TensorBoard scalar in <work_dir>/tb (all event files)."""
    tb_dir = os.path.join(work_dir, "tb")
    if not os.path.isdir(tb_dir):
        raise RunError(f"{work_dir}: no tb/ folder (is it a train.py run directory?)")
    # Resumed histories are resolved by drop_orphans: the accumulator's own purge only reacts to TensorFlow's
    # session-start events, which torch's SummaryWriter does not write.
    accumulator = EventAccumulator(tb_dir, size_guidance={SCALARS: 0}, purge_orphaned_data=False)
    accumulator.Reload()
    return {tag: drop_orphans([(event.wall_time, event.step, event.value) for event in accumulator.Scalars(tag)])
            for tag in accumulator.Tags()[SCALARS]}


def read_history(work_dir):
    """The evaluations of metrics.json's "history" (each a dict with 'iteration', 'AP', ...), [] without one."""
    path = os.path.join(work_dir, "metrics.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f).get("history", [])


def smooth(values, weight):
    """TensorBoard's exponential moving average (weight 0: the raw values)."""
    smoothed, last = [], None
    for value in values:
        last = value if last is None else weight * last + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def run_labels(work_dirs):
    """Each run's folder name, or its whole path where two runs share a name."""
    names = [os.path.basename(os.path.normpath(work_dir)) for work_dir in work_dirs]
    return [name if names.count(name) == 1 else work_dir for name, work_dir in zip(names, work_dirs)]


def plot_runs(work_dirs, out, smoothing=0.0):
    """One PNG: a panel per loss term (the union over runs), the learning rate and the validation AP."""
    runs = [(label, read_scalars(work_dir), read_history(work_dir))
            for label, work_dir in zip(run_labels(work_dirs), work_dirs)]
    loss_tags = sorted({tag for _, scalars, _ in runs for tag in scalars if tag.startswith("train/loss")},
                       key=lambda tag: (tag != "train/loss", tag))  # the total first
    if not loss_tags:
        raise RunError(f"{work_dirs[0]}: tb/ holds no train/loss scalars")
    panels = loss_tags + ["train/lr", "val"]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows), dpi=80)
    axes_list = figure.subplots(rows, columns, squeeze=False).ravel()
    colours = [f"C{index % 10}" for index in range(len(runs))]
    for axes, panel in zip(axes_list, panels):
        for (label, scalars, history), colour in zip(runs, colours):
            if panel == "val":
                for key, style in zip(AP_KEYS, ("-", "--", ":")):
                    points = [(entry["iteration"], entry[key]) for entry in history if entry.get(key) is not None]
                    if points:
                        steps, values = zip(*points)
                        axes.plot(steps, values, style, marker="o", color=colour,
                                  label=f"{label} {key}" if len(runs) > 1 else key)
            elif scalars.get(panel):
                steps, values = zip(*scalars[panel])
                axes.plot(steps, values if panel == "train/lr" else smooth(values, smoothing), color=colour,
                          label=label)
        axes.set(title="validation AP" if panel == "val" else panel.split("/", 1)[1], xlabel="iteration")
        axes.grid(alpha=0.3)
        if panel == "val" and not any(history for _, _, history in runs):
            axes.text(0.5, 0.5, "no evaluation yet", ha="center", transform=axes.transAxes)
        elif axes.has_data() and (panel == "val" or panel == panels[0]):
            axes.legend(fontsize=7)
    for axes in axes_list[len(panels):]:
        axes.set_visible(False)
    figure.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    figure.savefig(out)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dirs", nargs="+", metavar="WORK_DIR", help="train.py run directories")
    parser.add_argument("--out", default=os.path.join("work_dirs", "run_curves.png"), help="PNG to write")
    parser.add_argument("--smooth", type=float, default=0.0,
                        help="exponential moving average weight of the loss curves, 0 (raw) to <1")
    args = parser.parse_args()
    if not 0 <= args.smooth < 1:
        parser.error("--smooth must be in [0, 1)")
    print(plot_runs(args.work_dirs, args.out, args.smooth))


if __name__ == "__main__":
    run_cli(main)
