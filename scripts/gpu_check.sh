#!/usr/bin/env bash
# The GPU checks of issue 13 in one run on a lent GPU machine (well under 6 minutes on an H200):
# the gpu-marked tests, then bench/gpu_sampling.py --quick. Run from the repository root; the
# machine's python3 has torch and transformers, and metricwise runs from src/.
#   PYTHONUNBUFFERED=1 bash scripts/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
status=0
timeout 180 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -o addopts="" || status=$?
# The quick cell with the phases that answer the floors (a compiled phase compiles in its
# warm-up, outside the timing); rows print as they finish, so a timeout keeps those done.
timeout 300 python3 bench/gpu_sampling.py --quick \
    --phases metricwise,every_step,static_eager,sdpa_torch,generate,generate_static || status=$?
exit $status
