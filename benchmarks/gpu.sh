#!/bin/sh
# Every GPU figure of BENCHMARKS.md in one short run, for a machine with a CUDA device (about
# 5 minutes on an H100): the CUDA tests, the op against ATen/cuDNN and the device's memory
# floor, and LeNet-BN training throughput with the dataset on the device.
#
#   PY=/path/to/python-with-CUDA-torch sh benchmarks/gpu.sh [OUT_DIR]
#
# PY must be a Python whose torch is a CUDA build and where bnlab is installed (make setup
# installs the CPU build; a GPU host needs torch's CUDA wheel instead). Each result goes to
# OUT_DIR (default gpu-results/) as it is produced, so a run cut short keeps what it finished.
set -u
PY=${PY:-.venv/bin/python}
OUT=${1:-gpu-results}
mkdir -p "$OUT"
if ! "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA device here'; print(torch.__version__, torch.cuda.get_device_name())" > "$OUT/device.txt" 2>&1; then
  tail -n 1 "$OUT/device.txt"; exit 1
fi
cat "$OUT/device.txt"
"$PY" -m pytest -q -m cuda tests > "$OUT/tests_cuda.txt" 2>&1; tail -n 3 "$OUT/tests_cuda.txt"
"$PY" benchmarks/bench_bn.py --device cuda --reps 10 > "$OUT/bench_bn_cuda.txt" 2>&1; cat "$OUT/bench_bn_cuda.txt"
"$PY" benchmarks/bench_gpu_lenet.py --epochs 3 > "$OUT/lenet_gpu.txt" 2>&1; cat "$OUT/lenet_gpu.txt"
