#!/usr/bin/env bash
# Runs ON the device machine: one-shot timing of the 240-epoch recipe on 50,000 32x32 images
# (fast path + teacher cache + bf16 + channels_last, with and without torch.compile), GPU
# utilisation sampled with nvidia-smi.  ~3 min on an H200 (estimate); run with timeout_s 300.
# CPU check: PY=.venv/bin/python TP_ARGS="--images 512 --epochs 2" bash tools/device/throughput.sh
set -u -o pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT=${OUT:-.device/out}
mkdir -p "$OUT"
if ! "$PY" -c "import pywt" 2>/dev/null; then
  if [ ! -d /tmp/site/pywt ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "throughput: cannot install .whl/*.whl (carry .whl)"; exit 2; }
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# shellcheck disable=SC2086
timeout --kill-after=10 "${TP_LIMIT:-270}" "$PY" tools/device/throughput.py --out "$OUT" ${TP_ARGS:-}
status=$?
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1
exit $status
