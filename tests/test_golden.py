"""Run ../shared/golden/check_golden.py with tests/golden_adapter.py (float64 and float32).

The golden folder is <repo root>/../shared/golden, or the FOCALDET_GOLDEN environment variable;
the tests skip when it is absent (and fail under CI=true, where ../shared is always there).
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTER = os.path.join(ROOT, 'tests', 'golden_adapter.py')

LOSS_FILES = ('sigmoid_focal_loss,quality_focal_loss,distribution_focal_loss,iou_loss,giou_loss,'
              'diou_loss,ciou_loss,eiou_loss,focal_eiou_loss,bbox_overlaps,equalized_focal_loss,'
              'efl_grad_collect')
ASSIGNER_FILES = 'atss_assigner,max_iou_assigner'


def _run_golden(golden, files, dtype):
    script = os.path.join(golden, 'check_golden.py')
    result = subprocess.run([sys.executable, script, ADAPTER, '--golden', golden, '--dtype', dtype,
                             '--files', files], capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = result.stdout.strip().splitlines()
    last = lines[-1] if lines else ''
    failures = '\n'.join(line for line in lines if not line.startswith('PASS')) + result.stderr[-2000:]
    match = re.fullmatch(r'golden: (\d+)/(\d+) cases match', last)
    assert match and match.group(1) == match.group(2) and int(match.group(2)) > 0, failures
    assert result.returncode == 0, failures


@pytest.mark.parametrize('dtype', ['float64', 'float32'])
def test_golden_losses_and_overlaps(golden_dir, dtype):
    _run_golden(golden_dir, LOSS_FILES, dtype)


@pytest.mark.parametrize('dtype', ['float64', 'float32'])
def test_golden_assigners(golden_dir, dtype):
    _run_golden(golden_dir, ASSIGNER_FILES, dtype)
