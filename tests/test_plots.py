"""scripts/plot_run.py (resumed TensorBoard histories, the overlay PNG) and scripts/plot_losses.py (its PNGs)."""
import importlib.util
import json
import os
import subprocess
import sys

from PIL import Image
from torch.utils.tensorboard import SummaryWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("plot_run", os.path.join(ROOT, "scripts", "plot_run.py"))
plot_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_run)


def test_drop_orphans_keeps_the_resumed_history():
    # first attempt logged steps 10..40, was resumed from a checkpoint at step 20 and logged 30, 40, 50 again
    events = [(1.0, 10, 1.0), (2.0, 20, 2.0), (3.0, 30, 3.0), (4.0, 40, 4.0),
              (9.0, 30, 30.0), (10.0, 40, 40.0), (11.0, 50, 50.0)]
    assert plot_run.drop_orphans(events) == [(10, 1.0), (20, 2.0), (30, 30.0), (40, 40.0), (50, 50.0)]
    assert plot_run.drop_orphans(list(reversed(events)))[-1] == (50, 50.0)  # the order of writing, not of listing


def fake_run(work_dir, attempts, history):
    """A run directory as train.py leaves it: one tb event file per attempt, metrics.json."""
    for index, points in enumerate(attempts):
        writer = SummaryWriter(os.path.join(work_dir, "tb"), filename_suffix=f".{index}")
        for step, loss in points:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/loss_cls", loss / 2, step)
            writer.add_scalar("train/lr", 0.001, step)
        writer.close()
    with open(os.path.join(work_dir, "metrics.json"), "w") as f:
        json.dump({"final": history[-1], "history": history}, f)


def test_plot_run_reads_resumed_runs_and_overlays_them(tmp_path):
    first, second = str(tmp_path / "giou"), str(tmp_path / "eiou")
    fake_run(first, [[(1, 3.0), (50, 2.0), (100, 1.5)], [(50, 1.9), (100, 1.4), (150, 1.2)]],
             [{"epoch": 1, "iteration": 150, "AP": 0.2, "AP50": 0.4, "AP75": 0.1}])
    fake_run(second, [[(1, 3.1), (50, 2.2)]], [{"epoch": 1, "iteration": 50, "AP": 0.1, "AP50": 0.3, "AP75": None}])
    scalars = plot_run.read_scalars(first)
    assert [step for step, _ in scalars["train/loss"]] == [1, 50, 100, 150]
    assert [round(value, 4) for _, value in scalars["train/loss"]] == [3.0, 1.9, 1.4, 1.2]
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_run.py"), first, second,
                             "--out", str(out), "--smooth", "0.5"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:  # 4 panels: loss, loss_cls, lr, val -> 3 columns x 2 rows at 80 dpi
        assert image.size == (int(3 * 4.6 * 80), int(2 * 3.4 * 80))


def test_plot_run_without_tensorboard_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_run.py"), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path}: no tb/ folder " \
                                                               "(is it a train.py run directory?)"


def test_smooth_is_tensorboards_moving_average():
    assert plot_run.smooth([1.0, 3.0, 3.0], 0.5) == [1.0, 2.0, 2.5]
    assert plot_run.smooth([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_plot_losses_writes_every_figure(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_losses.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["distribution_focal.png", "equalized_focal.png", "focal_l1.png",
                                            "focal_vs_cross_entropy.png", "iou_losses.png", "quality_focal.png"]
    with Image.open(tmp_path / "iou_losses.png") as image:
        assert image.size == (3 * 5 * 80, int(3.8 * 80))
