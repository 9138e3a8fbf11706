#!/bin/sh
# Every GPU figure of BENCHMARKS.md in one run, on a host with a CUDA device (after `make
# setup`, which installs torch's CUDA build where nvidia-smi answers):
#
#   sh benchmarks/gpu.sh [OUT_DIR]          (PY=/other/python to use another interpreter)
#
# from any folder; OUT_DIR and PY are read relative to it, the default PY is the repository's
# .venv/bin/python.
#
# Steps, cheapest first, each into its own file in OUT_DIR (default gpu-results/):
#   device.txt        torch, its CUDA version, the card, and nvidia-smi's header
#   tests_cuda.txt    the CUDA tests (pytest -m cuda)
#   bench_bn.txt      the op against ATen/cuDNN, the copy and the card's peak bandwidth
#   lenet_gpu.txt     LeNet-BN examples/s with Fashion-MNIST resident on the device
#   resnet_gpu.txt    a ResNet-18 CIFAR training step: torch, bnlab, bnlab fused
# A step writes NAME.partial while it runs and renames it NAME.txt when it ends, so a run cut
# short keeps every finished file and the partial output of the one it was in; steps.txt
# records each step's exit status and seconds. A step is stopped after STEP_LIMIT seconds
# (default 600) where `timeout` exists. Without a CUDA device it stops with one line.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd) || exit 1
PY=${PY:-$ROOT/.venv/bin/python}
OUT=${1:-gpu-results}
LIMIT=${STEP_LIMIT:-600}
# Paths given relative to where the script was started; then work from the repository root.
case $OUT in /*) ;; *) OUT="$PWD/$OUT" ;; esac
case $PY in /*) ;; */*) PY="$PWD/$PY" ;; esac
cd "$ROOT" || exit 1

if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu.sh: no Python at $PY; run \`make setup\` first (or set PY)"; exit 1
fi
why=$("$PY" -c 'import torch
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} sees no CUDA device here")' 2>&1 | tail -n 1)
case $why in
  '') ;;
  "torch "*) echo "gpu.sh: $why; run it on a GPU host after \`make setup\` (it installs the CUDA build)"
             exit 1 ;;
  *) echo "gpu.sh: $PY cannot run torch ($why); run \`make setup\` first (or set PY)"; exit 1 ;;
esac
mkdir -p "$OUT" || exit 1
: > "$OUT/steps.txt"
failed=0

limited() {  # limited SECONDS COMMAND...: COMMAND under `timeout` where it exists
  seconds=$1; shift
  if command -v timeout >/dev/null 2>&1; then timeout "$seconds" "$@"; else "$@"; fi
}

step() {  # step NAME COMMAND...: run COMMAND into OUT/NAME.partial, then rename it NAME.txt
  name=$1; shift
  echo "gpu.sh: $name ..."
  start=$(date +%s)
  limited "$LIMIT" "$@" > "$OUT/$name.partial" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "gpu.sh: $name ended with exit status $rc (124: stopped after $LIMIT s); incomplete" \
      >> "$OUT/$name.partial"
    failed=1
  fi
  mv "$OUT/$name.partial" "$OUT/$name.txt"
  echo "$name rc=$rc seconds=$(( $(date +%s) - start ))" >> "$OUT/steps.txt"
  tail -n 3 "$OUT/$name.txt"
}

step device "$PY" -c 'import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "device", torch.cuda.get_device_name())'
if command -v nvidia-smi >/dev/null 2>&1; then
  limited 60 nvidia-smi 2>&1 | head -n 12 >> "$OUT/device.txt"
fi
step tests_cuda "$PY" -m pytest -q -m cuda tests
step bench_bn "$PY" -u benchmarks/bench_bn.py --device cuda --reps 10
step lenet_gpu "$PY" -u benchmarks/bench_gpu_lenet.py --epochs 3
step resnet_gpu "$PY" -u benchmarks/bench_resnet.py --device cuda --reps 20
echo "gpu.sh: done; results in $OUT/ (steps.txt: exit status and seconds of each step)"
exit "$failed"
