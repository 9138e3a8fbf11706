#!/bin/sh
# Which torch build `make setup` installs: prints the arguments of `pip install` on one line.
#
#   sh tools/torch_pip.sh TORCH VERSION
#
# TORCH is one of
#   auto     the CUDA build where `nvidia-smi` answers with a driver that a CUDA wheel of this
#            torch runs on; the CPU build everywhere else (no nvidia-smi, or one that fails)
#   cpu      the CPU build: `torch==VERSION` from the configured package sources, as always
#   cuda     the CUDA build; an error when nvidia-smi does not answer or the driver is too old
#   cuXYZ    that CUDA wheel index of PyTorch's (e.g. cu128), without asking nvidia-smi
# VERSION is the pinned torch version (the Makefile's TORCH_VERSION).
#
# A CUDA build is pinned with its local label (torch==2.13.0+cu130), so pip replaces a CPU
# build already in the venv instead of taking it as the pin satisfied. The wheel index is the
# newest one in TORCH_CUDA_INDEXES whose CUDA version the driver supports (nvidia-smi's header
# says "CUDA Version: 12.8"); a 12.x driver older than every 12.x wheel gets the oldest 12.x
# wheel, which CUDA's minor-version compatibility lets it run. Notes go to stderr, one line.
set -u
INDEXES=${TORCH_CUDA_INDEXES:-"cu126 cu128 cu130"}
URL=${TORCH_CUDA_URL:-https://download.pytorch.org/whl}

die() { echo "torch_pip.sh: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: sh tools/torch_pip.sh auto|cpu|cuda|cuXYZ VERSION"
mode=$1 version=$2
case $version in
  ''|*[!0-9.]*) die "VERSION must be a release like 2.13.0, got '$version'" ;;
esac

cuda_pin() {  # index tag -> the pip arguments
  echo "torch==$version+$1 --index-url $URL/$1"
}

# The driver's CUDA version as "MAJOR MINOR"; "absent" without nvidia-smi; "fails" when it
# exits non-zero (no driver loaded, no device) or prints no CUDA version.
driver_cuda() {
  command -v nvidia-smi >/dev/null 2>&1 || { echo absent; return 0; }
  out=$(nvidia-smi 2>/dev/null) || { echo fails; return 0; }
  v=$(printf '%s\n' "$out" |
      sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' | sed -n 1p)
  echo "${v:-fails}"
}

# "MAJOR MINOR" -> the index tag to use, or nothing when no wheel runs on that driver.
pick_index() {
  drv=$(( $1 * 100 + $2 )) best='' oldest_same_major=''
  for tag in $INDEXES; do
    case $tag in
      cu[0-9][0-9][0-9]) ;;
      *) die "TORCH_CUDA_INDEXES holds '$tag'; each entry is a tag like cu128" ;;
    esac
    digits=${tag#cu}
    major=${digits%?} minor=${digits#"${digits%?}"}
    need=$(( major * 100 + minor ))
    if [ "$need" -le "$drv" ]; then best=$tag; fi
    if [ "$major" -eq "$1" ] && [ -z "$oldest_same_major" ]; then oldest_same_major=$tag; fi
  done
  echo "${best:-$oldest_same_major}"
}

case $mode in
  cpu) echo "torch==$version" ;;
  cu[0-9][0-9][0-9]) cuda_pin "$mode" ;;
  auto|cuda)
    set -- $(driver_cuda)
    if [ "$1" = absent ] || [ "$1" = fails ]; then
      why="nvidia-smi is missing"
      [ "$1" = fails ] && why="nvidia-smi is present but fails or reports no CUDA version"
      [ "$mode" = cuda ] && die "TORCH=cuda, but $why; install or load the NVIDIA driver, or run \`make setup TORCH=cpu\`"
      [ "$1" = fails ] && echo "torch_pip.sh: $why; installing the CPU build" >&2
      echo "torch==$version"; exit 0
    fi
    tag=$(pick_index "$1" "$2") || exit 2
    if [ -z "$tag" ]; then
      msg="the NVIDIA driver supports CUDA $1.$2, older than every CUDA wheel of torch $version ($INDEXES)"
      [ "$mode" = cuda ] && die "$msg; update the driver, or run \`make setup TORCH=cpu\`"
      echo "torch_pip.sh: $msg; installing the CPU build (update the driver for the GPU)" >&2
      echo "torch==$version"; exit 0
    fi
    cuda_pin "$tag" ;;
  *) die "TORCH must be auto, cpu, cuda or a CUDA index tag like cu128, got '$mode'" ;;
esac
