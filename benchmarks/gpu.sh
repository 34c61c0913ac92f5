#!/usr/bin/env bash
# The GPU benchmarks in one run, sized to finish within 10 minutes: batchfind's whole
# answer beside Lightning's binsearch on ResNet-50 and BERT-base, with no cap (the whole card),
# every answer re-checked in brand-new processes, batchfind's reports kept (docs/benchmarks.md).
#
#   bash benchmarks/gpu.sh [OUT]
#
# Where pydantic is missing (a GPU machine without internet), the wheels in .whl/ are installed first;
# docs/benchmarks.md says how to fetch them.
set -o pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# Every dependency imports (pydantic needs a recent typing-extensions) before any time is spent.
python3 -c "import batchfind.config, batchfind.probing" || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$out/gpu.txt"
timeout 540 python3 benchmarks/vs_peers.py --device cuda --memory-limit none --peers lightning-binsearch \
  --keep "$out" configs/resnet50.yaml configs/bert-base.yaml 2>&1 | tee "$out/vs_peers.txt"
