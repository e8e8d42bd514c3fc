#!/usr/bin/env bash
# Runs ON the device machine (repo root is the working dir there): issue 9's `short` tier of
# `figkd study` on the uint8 shards carried by earlier calls, resumable across calls while the
# machine stays warm.  See tools/device/README.md for the call sequence.
#
# Knobs (environment; the defaults are the device run, the CPU dry run overrides them):
#   TIER=short  PARALLEL=6  AMP=bf16  LIMIT=540 (s, the study stops itself before the 600 s cap)
#   SHARDS=.device/tiny32   STUDY_OUT=.device/study   (both git-ignored, kept while warm)
#   STUDY_ARGS="--epochs 2 --seeds 0 ..."   extra `figkd study` options (none on the device)
#   OVERRIDES="train.channels_last=true teacher.cache=auto"   key=value for every run
#   PY=python3   the interpreter (the device image's, which has torch)
set -u -o pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
TIER=${TIER:-short}
PARALLEL=${PARALLEL:-6}
AMP=${AMP:-bf16}
LIMIT=${LIMIT:-540}
SHARDS=${SHARDS:-.device/tiny32}
STUDY_OUT=${STUDY_OUT:-.device/study}
STUDY_ARGS=${STUDY_ARGS:-}
OVERRIDES=${OVERRIDES:-train.channels_last=true teacher.cache=auto}
OUT=${OUT:-.device/out}
mkdir -p "$OUT" "$STUDY_OUT"
LOG=$STUDY_OUT/device.log
started=$(date +%s)

# PyWavelets travels as a wheel in .whl/ (carried by the first call); install it once per machine.
if ! "$PY" -c "import pywt" 2>/dev/null; then
  if [ ! -d /tmp/site/pywt ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "short_tier: cannot install .whl/*.whl (carry .whl)"; exit 2; }
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}   # figkd from the travelled tree
export FIGKD_CACHE=${FIGKD_CACHE:-$PWD/.device/cache}  # decoded shards + uint8 caches, kept while warm
export PYTHONUNBUFFERED=1

# All parts there?  The reader names the missing part files; stop before starting anything.
if ! "$PY" - "$SHARDS" <<'PY' 2>&1 | tee -a "$LOG"
import sys
from figkd.data.shards import find_shards
try:
    for split in ("train", "test"):
        find_shards(sys.argv[1], split)
except FileNotFoundError as error:
    sys.exit(str(error).splitlines()[0])
print("short_tier: shards complete in", sys.argv[1])
PY
then
  echo "short_tier: shards incomplete; carry the missing parts (see tools/device/README.md)"
  exit 3
fi

common=(--tier "$TIER" --dataset uint8-shards --data-root "$SHARDS" --out "$STUDY_OUT" --amp "$AMP")
# shellcheck disable=SC2206
extra=($STUDY_ARGS)
# shellcheck disable=SC2206
items=($OVERRIDES)
{ echo "== $(date -u +%FT%TZ) short_tier: ${common[*]} --parallel $PARALLEL ${extra[*]} ${items[*]} (limit ${LIMIT}s)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader; } | tee -a "$LOG"

# timeout signals the whole process group: the study and its run subprocesses stop together;
# every run keeps its last epoch checkpoint and the next call resumes it.
timeout --kill-after=20 "$LIMIT" "$PY" -m figkd study "${common[@]}" --parallel "$PARALLEL" \
  "${extra[@]}" "${items[@]}" 2>&1 | tee -a "$LOG"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "== short_tier: stopped at the ${LIMIT}s limit; call again to resume" | tee -a "$LOG"
fi
# The table of whatever has finished so far (a full run wrote it already; this is cheap).
"$PY" -m figkd study "${common[@]}" "${extra[@]}" "${items[@]}" --report-only >/dev/null 2>>"$LOG"
"$PY" -m figkd study "${common[@]}" "${extra[@]}" "${items[@]}" --plan > "$OUT/plan.txt" 2>&1

dir=$STUDY_OUT/$TIER
for f in study.md study.json report.csv report.md; do
  [ -f "$dir/$f" ] && cp "$dir/$f" "$OUT/$f"
done
tail -n 200 "$LOG" > "$OUT/device_log_tail.txt"
# Every run's config, metrics and summary (no checkpoints, no TensorBoard): small evidence.
( cd "$STUDY_OUT" && find "$TIER" \( -name checkpoints -o -name tensorboard -o -name logs -o -name data \) -prune -o -type f -print \
    | tar -czf - -T - ) > "$OUT/runs_nockpt.tar.gz" 2>/dev/null
failed=$(grep -c '"status": "failed"' "$dir/study.json" 2>/dev/null)
echo "== short_tier: exit $status after $(( $(date +%s) - started )) s; ${failed:-0} failed run(s) in study.json" | tee -a "$LOG"
exit "$status"
