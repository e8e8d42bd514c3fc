#!/usr/bin/env bash
# Runs ON the device machine: starts short_tier.sh in a process session of its own, so that the
# study outlives this call, and follows it for up to WAIT s (attach.sh).  The device tool ends
# the processes a call leaves behind, except those of a new session (setsid), which run on
# until the machine goes back; so one study can use the whole session, without the per-call
# 600 s cap cutting it in two: one start-up (imports, state import, cache) and one export
# instead of two, and no run loses an unfinished epoch half-way.
#
#   BUDGET=<lease.budget_left_s of the last reply> bash tools/device/detach.sh
#
# The study's limit is BUDGET - RESERVE.  The default, 170 s: in session 2 a study call ran
# 37-47 s past its limit (stopping the runs, tables, export), and the three fetch calls with
# the gaps between calls took ~53 s; the rest is margin for this call's own transfer and the
# gap before it, and for a slower export.  LIMIT=<s> sets the limit directly.
# Then call `bash tools/device/attach.sh` back to back until it returns the results (it says
# "still running" otherwise), then fetch.sh as before.  Other knobs (PARALLEL, STUDY_ARGS,
# OVERRIDES, PY, ...) pass through to short_tier.sh; SCRIPT replaces it (tests).
set -u -o pipefail
cd "$(dirname "$0")/../.."
JOB=${JOB:-.device/job}
RESERVE=${RESERVE:-170}
SCRIPT=${SCRIPT:-tools/device/short_tier.sh}
if [ -f "$JOB/pid" ] && [ ! -f "$JOB/status" ] && kill -0 "$(cat "$JOB/pid")" 2>/dev/null; then
  echo "detach: a study is already running (pid $(cat "$JOB/pid")); call attach.sh to follow it"
  exit 3
fi
if [ -z "${LIMIT:-}" ]; then
  if [ -z "${BUDGET:-}" ]; then
    echo "detach: give BUDGET=<budget_left_s of the last device reply> (or LIMIT=<study seconds>)"
    exit 2
  fi
  LIMIT=$(( BUDGET - RESERVE ))
fi
if [ "$LIMIT" -lt 60 ]; then
  echo "detach: a ${LIMIT} s study is too short to train (BUDGET - RESERVE < 60): fetch and give back"
  exit 2
fi
if ! command -v setsid >/dev/null; then
  # No setsid (util-linux) on this image: the study cannot outlive the call, so run it in the
  # foreground within the call's 600 s cap, as sessions 1-2 did (then LIMIT=<B-120> again).
  echo "detach: no setsid here; running short_tier.sh in this call (LIMIT=$(( LIMIT < 540 ? LIMIT : 540 )) s)"
  exec env LIMIT=$(( LIMIT < 540 ? LIMIT : 540 )) bash "$SCRIPT"
fi
rm -rf "$JOB"
mkdir -p "$JOB/out"
# The job records its own pid (setsid may fork, so $! need not be it) and writes its exit
# status last, atomically: attach.sh's sign that the outputs are complete.
setsid env LIMIT="$LIMIT" OUT="$JOB/out" JOB="$JOB" SCRIPT="$SCRIPT" bash -c \
  'echo $$ > "$JOB/pid"; bash "$SCRIPT"; echo $? > "$JOB/status.tmp" && mv "$JOB/status.tmp" "$JOB/status"' \
  > "$JOB/log" 2>&1 < /dev/null &
for _ in $(seq 50); do [ -s "$JOB/pid" ] && break; sleep 0.2; done
echo "detach: started $SCRIPT with LIMIT=${LIMIT} s in its own session (pid $(cat "$JOB/pid" 2>/dev/null))"
exec env JOB="$JOB" bash tools/device/attach.sh
