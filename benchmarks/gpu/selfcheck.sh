#!/usr/bin/env bash
# The CPU self-check of the GPU bundle, so that a lent GPU is never spent on an import error:
# a bare venv of the device's Python (3.12) holding only the packages the device image is
# assumed to have (benchmarks/gpu/image.txt: torch 2.13.0, numpy, ...), the bundle from
# prepare.sh, and run.sh in that venv on the CPU with a tiny model (DEVICE=cpu SIZE=tiny).
# Exits 0 only when every step passed and every figure is in results.json (summary.py).
# 5-15 minutes on 2 shared cores, the venv included (its torch is a CUDA build of several GB,
# downloaded once into pip's cache).
#
#   bash benchmarks/gpu/selfcheck.sh                # work files in a new temporary folder
#   WORK=/tmp/gpucheck bash benchmarks/gpu/selfcheck.sh   # keep (and reuse) the venv there
#   bash benchmarks/gpu/selfcheck.sh --find-python  # print the python3.12 it would use
#
# Variables: BASE_PYTHON (the python3.12 to build the venv from; found on PATH or in pyenv),
# HOST_PYTHON (this machine's Python with pip, for prepare.sh; default python), WORK, OUT,
# SHARED (../shared), DOCS (1), TRAIN_SECONDS (10).
set -euo pipefail
cd "$(dirname "$0")/../.."

find_python() {
  local candidate
  for candidate in "${BASE_PYTHON:-}" python3.12 \
    "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12; do
    if [[ -n $candidate ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' \
      >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  echo "no python3.12 here (set BASE_PYTHON)" >&2
  return 3
}

if [[ ${1:-} == --find-python ]]; then
  find_python
  exit
fi
BASE_PYTHON=$(find_python) || exit 3
WORK=${WORK:-$(mktemp -d)}
OUT=${OUT:-$WORK/out}
VENV=$WORK/venv
if [[ ! -x $VENV/bin/python ]]; then
  "$BASE_PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r benchmarks/gpu/image.txt
fi
PY=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
  PYTHON=${HOST_PYTHON:-python} GPU_DIR="$WORK/bundle" bash benchmarks/gpu/prepare.sh
DEVICE=cpu SIZE=tiny DOCS=${DOCS:-1} TRAIN_SECONDS=${TRAIN_SECONDS:-10} \
  PYTHON="$VENV/bin/python" BUNDLE="$WORK/bundle" OUT="$OUT" bash benchmarks/gpu/run.sh
