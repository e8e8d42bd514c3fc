#!/usr/bin/env bash
# Runs ON the device machine (repo root is the working dir there): issue 9's `short` tier of
# `figkd study` on the uint8 shards carried by earlier calls, resumable across calls while the
# machine stays warm.  See tools/device/README.md for the call sequence.
#
# Knobs (environment; the defaults are the device run, the CPU dry run overrides them):
#   TIER=short  PARALLEL=12  AMP=bf16  LIMIT=540 (s, the study stops itself before the 600 s cap)
#   MPS=auto   start NVIDIA MPS (kernels of the parallel runs share the GPU instead of taking
#              turns: benchmarks/results/gpu_concurrency.md) when a client can use it; MPS=off
#   SHARDS=.device/tiny32   STUDY_OUT=.device/study   (both git-ignored, kept while warm)
#   STUDY_ARGS="--epochs 2 --seeds 0 ..."   extra `figkd study` options (none on the device)
#   FIRST="kd figkd"   `figkd study --first`: these methods' distilled runs go first, the
#              others join once they have all ended, so a session cut short brings back
#              whole rows (the checkout holding the mirror may not last: README); FIRST= off
#   OVERRIDES="train.channels_last=true teacher.cache=auto teacher.cache_batch_size=1024"
#              key=value for every run (the cache's build batch: 4x the eval batch, unmeasured)
#   PY=python3   the interpreter (the device image's, which has torch)
#   FINISH_ONLY=1  skip the study: only the tables and the state export of what the study
#                  folder holds (attach.sh uses it when a detached study died mid-way)
#   STATE_IN=.device/state   a carried `figkd state` folder to continue from (if present)
#   RECORDS=docs/results/short_tier_runs   finished runs' committed text records (`figkd state
#              records`, written by collect.sh): imported too, so a new checkout, which has
#              no mirror, still skips the students whose teacher it retrains bit for bit
#   DETERMINISTIC=on   `figkd study --deterministic-teacher --replace-stale`: the teacher
#              trains deterministically (warn-only), so the records' pinned teacher SHA-256
#              can be met again; a record pinned to another teacher is set aside and
#              retrained.  off: neither (records of another teacher then fail, named)
#   STATE_MIB=230  the whole state the mirror will hold (it travels out again over several
#                  calls: tools/device/calls.py); BUNDLE_MIB=58: one bundle per call back, the
#                  first in $OUT/state, the others left in OUTBOX=.device/outbox for fetch.sh
set -u -o pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
TIER=${TIER:-short}
PARALLEL=${PARALLEL:-12}
MPS=${MPS:-auto}
AMP=${AMP:-bf16}
LIMIT=${LIMIT:-540}
SHARDS=${SHARDS:-.device/tiny32}
STUDY_OUT=${STUDY_OUT:-.device/study}
STUDY_ARGS=${STUDY_ARGS:-}
OVERRIDES=${OVERRIDES:-train.channels_last=true teacher.cache=auto teacher.cache_batch_size=1024}
FIRST=${FIRST-kd figkd}
OUT=${OUT:-.device/out}
STATE_IN=${STATE_IN:-.device/state}
RECORDS=${RECORDS:-docs/results/short_tier_runs}
DETERMINISTIC=${DETERMINISTIC:-on}
STATE_MIB=${STATE_MIB:-230}
BUNDLE_MIB=${BUNDLE_MIB:-58}
OUTBOX=${OUTBOX:-.device/outbox}
mkdir -p "$OUT" "$STUDY_OUT"
LOG=$STUDY_OUT/device.log
started=$(date +%s)
FINISH_ONLY=${FINISH_ONLY:-0}
# Seconds since the start, in the log: where a call's time goes (set-up, study, export).
stamp() { echo "short_tier: +$(( $(date +%s) - started )) s $*" | tee -a "$LOG"; }

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

# MLKD's batched strong view on this GPU against the CPU (a few seconds; reports only)
[ "$FINISH_ONLY" = 1 ] || timeout 60 "$PY" tools/device/check_strong_view.py 2>&1 | tail -n 3 | tee -a "$LOG"
# Could a later session (a new checkout) retrain the teacher bit for bit? (seconds; reports only)
[ "$FINISH_ONLY" = 1 ] || timeout 90 "$PY" tools/device/check_determinism.py 2>&1 | tail -n 3 | tee -a "$LOG"

# Progress of earlier sessions (carried from here by collect.sh's mirror): run by run, the
# further-along copy wins, so importing again on a warm machine changes nothing.
if [ -d "$STATE_IN" ]; then
  "$PY" -m figkd state import "$STATE_IN" "$STUDY_OUT" 2>&1 | tee -a "$LOG" \
    || { echo "short_tier: importing $STATE_IN failed (see above)"; exit 4; }
fi
# Then the committed records (finished runs only, no weights: a teacher's cannot import).
if [ -d "$RECORDS" ]; then
  "$PY" -m figkd state import "$RECORDS" "$STUDY_OUT" 2>&1 | tee -a "$LOG" \
    || { echo "short_tier: importing $RECORDS failed (see above)"; exit 4; }
fi

# NVIDIA MPS: without it the parallel runs' kernels take turns on the GPU.  Started only when
# a client can use it (a probe under a timeout); otherwise the study runs as before.
mps_env=()
stamp "set up"
if [ "$FINISH_ONLY" = 1 ]; then
  MPS=off
fi
if [ "$MPS" = auto ] && command -v nvidia-cuda-mps-control >/dev/null; then
  mps_env=(CUDA_MPS_PIPE_DIRECTORY=/tmp/figkd-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/figkd-mps/log)
  mkdir -p /tmp/figkd-mps/pipe /tmp/figkd-mps/log
  env "${mps_env[@]}" nvidia-cuda-mps-control -d 2>/dev/null
  if env "${mps_env[@]}" timeout 60 "$PY" -c "import torch; torch.ones(1, device='cuda').add(1).item()" 2>/dev/null; then
    export "${mps_env[@]}"
    echo "short_tier: MPS on" | tee -a "$LOG"
  else
    echo quit | env "${mps_env[@]}" nvidia-cuda-mps-control 2>/dev/null
    mps_env=()
    echo "short_tier: MPS not usable here; the runs take turns on the GPU" | tee -a "$LOG"
  fi
fi
# GPU load every 5 s, returned with the results (how full the parallel runs keep the GPU)
if [ "$FINISH_ONLY" != 1 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 5 \
    > "$STUDY_OUT/gpu.csv" 2>/dev/null &
  smi=$!
fi

common=(--tier "$TIER" --dataset uint8-shards --data-root "$SHARDS" --out "$STUDY_OUT" --amp "$AMP")
# --deterministic-teacher changes the teacher's config (its folder): every call, the table
# and the plan included, must say it alike
[ "$DETERMINISTIC" = on ] && common+=(--deterministic-teacher)
run_only=()
[ "$DETERMINISTIC" = on ] && run_only=(--replace-stale)
# shellcheck disable=SC2206
extra=($STUDY_ARGS)
first=()
# shellcheck disable=SC2206
[ -n "$FIRST" ] && first=(--first $FIRST)   # before STUDY_ARGS, whose own --first wins
# shellcheck disable=SC2206
items=($OVERRIDES)  # KEY=VALUE words go first: after --seeds 0 1 they would be read as seeds
{ echo "== $(date -u +%FT%TZ) short_tier: ${common[*]} --parallel $PARALLEL ${first[*]} ${run_only[*]} ${extra[*]} ${items[*]} (limit ${LIMIT}s)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader; } | tee -a "$LOG"

# timeout signals the whole process group: the study and its run subprocesses stop together;
# every run keeps its last epoch checkpoint and the next call resumes it.
if [ "$FINISH_ONLY" = 1 ]; then
  status=0
  echo "== short_tier: FINISH_ONLY: no study, tables and export of $STUDY_OUT as it is" | tee -a "$LOG"
else
  timeout --kill-after=20 "$LIMIT" "$PY" -m figkd study "${items[@]}" "${common[@]}" \
    --parallel "$PARALLEL" "${first[@]}" "${run_only[@]}" "${extra[@]}" 2>&1 | tee -a "$LOG"
  status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "== short_tier: stopped at the ${LIMIT}s limit; call again to resume" | tee -a "$LOG"
  fi
fi
stamp "study ended"
# The table of whatever has finished so far (a full run wrote it already; this is cheap).
"$PY" -m figkd study "${items[@]}" "${common[@]}" --parallel "$PARALLEL" "${extra[@]}" --report-only >/dev/null 2>>"$LOG"
"$PY" -m figkd study "${items[@]}" "${common[@]}" --parallel "$PARALLEL" "${extra[@]}" --plan > "$OUT/plan.txt" 2>&1
stamp "tables written"

[ -n "${smi:-}" ] && kill "$smi" 2>/dev/null
[ ${#mps_env[@]} -gt 0 ] && { echo quit | nvidia-cuda-mps-control >/dev/null 2>&1; }

dir=$STUDY_OUT/$TIER
# At most 8 files come back: study.md, results.tar.gz, state/state.json + <= 4 parts.
[ -f "$dir/study.md" ] && cp "$dir/study.md" "$OUT/study.md"
# What the next session needs to continue (teacher.pt, killed runs' last.pt, every summary),
# cut into bundles of one call back each, the most valuable first: bundle-00 goes back now,
# fetch.sh returns the others (call it back to back while the machine is warm).
rm -rf "$OUTBOX"
"$PY" -m figkd state export "$STUDY_OUT" "$OUTBOX" --budget-mib "$STATE_MIB" --part-mib 15 \
  --bundle-mib "$BUNDLE_MIB" 2>&1 | tee -a "$LOG"
stamp "state exported"
OUTBOX=$OUTBOX OUT=$OUT bash tools/device/fetch.sh 2>&1 | tee -a "$LOG"
failed=$(grep -c '"status": "failed"' "$dir/study.json" 2>/dev/null)
echo "== short_tier: exit $status after $(( $(date +%s) - started )) s; ${failed:-0} failed run(s) in study.json" | tee -a "$LOG"
# Tables, the plan, the log, and every run's config/metrics/summary (no checkpoints).
pack=$(mktemp -d)
mkdir -p "$pack/results"
for f in study.json report.csv report.md; do [ -f "$dir/$f" ] && cp "$dir/$f" "$pack/results/"; done
[ -f "$STUDY_OUT/gpu.csv" ] && cp "$STUDY_OUT/gpu.csv" "$pack/results/"
mv "$OUT/plan.txt" "$pack/results/plan.txt"
tail -n 300 "$LOG" > "$pack/results/device_log_tail.txt"
# The runs' teacher-cache lines (build rate, pairs computed, seconds with the lock wait): the
# run logs themselves stay on the machine
grep -H "teacher cache" "$dir"/logs/*.log > "$pack/results/cache_log.txt" 2>/dev/null
( cd "$STUDY_OUT" && find "$TIER" \( -name checkpoints -o -name tensorboard -o -name logs -o -name data \) -prune -o -type f -print \
    | tar -cf - -T - ) | tar -xf - -C "$pack/results" 2>/dev/null
tar -czf "$OUT/results.tar.gz" -C "$pack" results && rm -rf "$pack"
exit "$status"
