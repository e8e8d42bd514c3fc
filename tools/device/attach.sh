#!/usr/bin/env bash
# Runs ON the device machine: follows the study detach.sh started, printing its new log lines,
# for up to WAIT s (default 560, under the 600 s cap).  When the study has ended (the job wrote
# its status) it puts the job's files into $OUT - study.md, results.tar.gz and state/ with
# bundle-00, as short_tier.sh returns them - and exits 0 (the study's own status is printed:
# 124 means it stopped at its limit, the normal case).  Still running: exits 0 and says "call
# attach.sh again".  If the job is gone without a status (killed), it exports what the study
# folder holds (short_tier.sh with FINISH_ONLY=1), so the session still brings its runs back.
set -u -o pipefail
cd "$(dirname "$0")/../.."
JOB=${JOB:-.device/job}
WAIT=${WAIT:-560}
OUT=${OUT:-.device/out}
SCRIPT=${SCRIPT:-tools/device/short_tier.sh}
if [ ! -f "$JOB/pid" ]; then
  echo "attach: no study was started on this machine (run detach.sh; a fresh machine has none)"
  exit 2
fi
start=$(date +%s)
shown=$(cat "$JOB/shown" 2>/dev/null || echo 0)
show_new() {  # the log lines not shown by an earlier call
  local total
  total=$(wc -l < "$JOB/log")
  if [ "$total" -gt "$shown" ]; then
    sed -n "$((shown + 1)),${total}p" "$JOB/log"
    shown=$total
    echo "$shown" > "$JOB/shown"
  fi
}
while [ ! -f "$JOB/status" ]; do
  show_new
  if ! kill -0 "$(cat "$JOB/pid")" 2>/dev/null; then
    sleep 2  # the status may land just after the process ends
    [ -f "$JOB/status" ] && break
    echo "attach: the study is gone without a status (killed?); exporting what it left"
    FINISH_ONLY=1 OUT="$JOB/out" bash "$SCRIPT" >> "$JOB/log" 2>&1
    echo "finish-only $?" > "$JOB/status"
    break
  fi
  if [ $(( $(date +%s) - start )) -ge "$WAIT" ]; then
    echo "attach: the study is still running after ${WAIT} s of this call: call attach.sh again"
    exit 0
  fi
  sleep 5
done
show_new
mkdir -p "$OUT"
cp -r "$JOB/out/." "$OUT/"
echo "attach: the study ended (status $(cat "$JOB/status")); its files are in \$OUT:" \
  "$(cd "$OUT" && find . -type f | sort | tr '\n' ' ')"
