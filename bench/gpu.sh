#!/usr/bin/env bash
# The four-minute GPU check of medclip, for a single-GPU machine WITHOUT a package index.
#
#   bash bench/gpu.sh WHEELS_DIR [extra gpu_bench.py flags]
#
# The machine has PyTorch, timm, transformers, peft, pandas, scikit-learn, safetensors, tqdm, PyYAML,
# matplotlib and tensorboard. This script
#   1. installs what is missing (monai, pydicom, ftfy, open_clip_torch, pytest, ...) from WHEELS_DIR only
#      (pip --no-index; the README says how to download them for that machine's Python), then the project
#      itself with `pip install --no-deps --no-build-isolation -e .`;
#   2. runs the tests marked `gpu` (tests/test_gpu.py);
#   3. prints one table (bench/gpu_bench.py): training step ViT-B/16 and RN50 at batch 256 bf16, ours vs
#      open_clip from the same weights (pairs/s, ratio, MFU); tiled vs dense loss at N=32768 and tiled at
#      N=65536 (time, memory); zero-shot and data-loader images/s on a synthetic demo corpus made here.
# Each step has its own time limit; the whole run stays under 4 minutes. Exit status: 0 only when the
# install, every gpu test and every table section succeeded.
set -uo pipefail

WHEELS="${1:-${MEDCLIP_WHEELS:-}}"
[ $# -gt 0 ] && shift
PY="${PYTHON:-python}"
cd "$(dirname "$0")/.." || exit 2
START=$SECONDS
STATUS=0

# module name -> wheel (distribution) name, for everything medclip, its tests and the benchmark import
NEEDED="monai:monai pydicom:pydicom ftfy:ftfy wcwidth:wcwidth regex:regex open_clip:open_clip_torch
torchvision:torchvision huggingface_hub:huggingface_hub pytest:pytest pluggy:pluggy iniconfig:iniconfig
pytest_timeout:pytest-timeout PIL:pillow"
MISSING=""
for pair in $NEEDED; do
  module="${pair%%:*}"
  "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" \
    || MISSING="$MISSING ${pair#*:}"
done

echo "== 1/3 install (missing:${MISSING:- nothing})"
if [ -n "$MISSING" ]; then
  if [ -z "$WHEELS" ] || [ ! -d "$WHEELS" ]; then
    echo "error: missing packages:$MISSING, and no wheels folder given (bash bench/gpu.sh WHEELS_DIR;" \
         "see the README section 'GPU check')" >&2
    exit 2
  fi
  # shellcheck disable=SC2086
  timeout 120 "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $MISSING || {
    echo "error: pip could not install$MISSING from $WHEELS (a wheel for this Python/platform is missing)" >&2
    exit 2
  }
fi
timeout 60 "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . || {
  echo "error: pip install --no-deps --no-build-isolation -e . failed" >&2
  exit 2
}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'" || exit 2

echo "== 2/3 gpu tests ($((SECONDS - START)) s so far)"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_gpu.py || { echo "gpu tests FAILED (exit $?)"; STATUS=1; }

LEFT=$((232 - (SECONDS - START)))
CAP=$(( (LEFT - 60) / 4 ))
[ "$CAP" -gt 25 ] && CAP=25
[ "$CAP" -lt 5 ] && CAP=5
echo "== 3/3 benchmark table ($((SECONDS - START)) s so far, ${CAP} s per section)"
WORK="$(mktemp -d)"
HF_HUB_OFFLINE=1 timeout "$((LEFT > 30 ? LEFT : 30))" "$PY" bench/gpu_bench.py --device cuda --cap "$CAP" \
  --work "$WORK" "$@" || { echo "benchmark FAILED or timed out (exit $?)"; STATUS=1; }
rm -rf "$WORK"
echo "== done in $((SECONDS - START)) s, exit $STATUS"
exit $STATUS
