#!/usr/bin/env bash
# The GPU path in one short run (<= 8 minutes on one modern GPU): the CUDA tests, a 50-iteration GFL R50
# training at 1333x800 with automatic mixed precision on the embedded shapes set (upscaled to COCO's input
# size), its evaluation, and scripts/benchmark.py for GFL and RetinaNet R50 at 1333x800 (img/s for training
# and for inference). Without a CUDA GPU it says so and exits 0.
#
#     bash scripts/gpu_check.sh                 # uses .venv/bin/python if present, else python3
#     PYTHON=python bash scripts/gpu_check.sh   # a cluster's own environment
#
# Everything it writes goes to work_dirs/gpu_check/ (and datasets/shapes/ on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null \
        || echo 'torch not importable')): skipped"
    exit 0
fi
OUT=work_dirs/gpu_check
mkdir -p "$OUT"
"$PY" - <<'EOF'
import torch
properties = torch.cuda.get_device_properties(0)
print(f"gpu_check: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, sm_{properties.major}{properties.minor}, "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")
EOF

echo "== 1. CUDA tests"
"$PY" -m pytest -q tests/test_cuda.py

echo "== 2. GFL R50 at 1333x800, AMP (train.amp=auto), 50 iterations on the shapes set, then evaluation"
start=$(date +%s)
"$PY" train.py --config gfl_r50.yaml --work-dir "$OUT/gfl_r50_shapes" data.dataset=shapes \
    model.backbone.pretrained=null data.batch_size=2 data.workers=4 optim.base_batch_size=16 \
    optim.warmup_iters=20 train.max_iters=50 train.log_interval=10 train.channels_last=true
echo "gpu_check: training + evaluation took $(( $(date +%s) - start )) s"

echo "== 3. benchmark.py at 1333x800 (800 x 1216 padded), batch 2, train.amp=auto"
for config in gfl_r50.yaml retinanet_r50.yaml; do
    "$PY" scripts/benchmark.py --config "$config" --height 800 --width 1216 --batch-size 2 --iters 20 \
        train.channels_last=true
done
