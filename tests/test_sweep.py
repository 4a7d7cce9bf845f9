"""scripts/sweep.py: the grid expands to one run per combination and the table reads metrics.json."""
import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "scripts", "sweep.py"))
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def test_grid_expands_every_combination():
    runs = list(sweep.runs(["configs/a.yaml", "b.yaml"], ["model.loss_box.type=giou,ciou", "optim.lr=0.1,0.2"]))
    assert len(runs) == 8
    name, config, overrides = runs[1]
    assert config == "configs/a.yaml"
    assert overrides == ["model.loss_box.type=giou", "optim.lr=0.2"]
    assert name == "a-loss_box=giou-lr=0.2"


def test_table_from_existing_runs(tmp_path):
    for name, ap in (("shapes_retinanet_r18", 0.5), ("shapes_gfl_r18", 0.6875)):
        os.makedirs(tmp_path / name)
        final = {"AP": ap, "AP50": 0.9, "AP75": 0.7, "APs": -1.0, "APm": 0.5, "APl": None}
        with open(tmp_path / name / "metrics.json", "w") as f:
            json.dump({"final": final, "history": [{"iteration": 42, **final}]}, f)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sweep.py"), "--configs",
                             "shapes_retinanet_r18.yaml", "shapes_gfl_r18.yaml", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, check=True)
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[2] == "| shapes_retinanet_r18 | 50.0 | 90.0 | 70.0 | - | 50.0 | - | 42 | - |"
    assert table[3].startswith("| shapes_gfl_r18 | 68.8 |")
    assert result.stdout.strip().splitlines() == table
