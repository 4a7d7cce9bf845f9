"""scripts/benchmark_data.py: one worker's images/s on real JPEGs (coco128) at COCO's 1333x800, by stage."""
import os
import re
import subprocess
import sys

from conftest import missing_shared_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO128 = os.path.join(ROOT, "..", "shared", "datasets", "coco128")


def test_data_benchmark_times_every_stage_on_coco128():
    if not os.path.isdir(COCO128):
        missing_shared_data(f"{COCO128} not found")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_data.py"), "--images", "3"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "3 training images resized to 800 short side, at most 1333" in lines[0] and "capability" in lines[0]
    rows = [re.fullmatch(r"(.+?)\s+([\d.]+) ms/image\s+([\d.]+) images/s per worker", line) for line in lines[1:]]
    assert len(rows) == 5 and all(rows)
    for row in rows:          # images/s is the inverse of ms/image; both are rounded to 0.1, so compare intervals
        milliseconds, per_second = float(row.group(2)), float(row.group(3))
        assert 1000 / (per_second + 0.0501) <= milliseconds + 0.0501
        assert 1000 / (per_second - 0.0501) >= milliseconds - 0.0501
    assert rows[0].group(1).startswith("whole __getitem__") and "decode_image" in rows[2].group(1)
