#!/usr/bin/env bash
# Runs HERE after a session's device calls: merges the state they returned into the mirror
# .device/state (which the next session's calls carry out again), unpacks the tables into
# .device/results/<UTC time>/, and prints the next session's calls.  Give the files_at folder
# of the short_tier.sh call and of every fetch.sh call after it (each holds one bundle, which
# imports on its own, so a lapsed session still keeps the bundles it returned).
# The mirror is git-ignored (weights); what outlives the checkout is the finished runs' text
# records, refreshed into RECORDS (commit them: short_tier.sh imports them in any checkout).
#   bash tools/device/collect.sh /work/.device/<study call> /work/.device/<fetch call> ...
# Knobs: PY=.venv/bin/python  MIRROR=.device/state  RECORDS=docs/results/short_tier_runs
set -eu -o pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
MIRROR=${MIRROR:-.device/state}
RECORDS=${RECORDS:-docs/results/short_tier_runs}
[ $# -gt 0 ] || { echo "usage: bash tools/device/collect.sh FILES_AT [FILES_AT ...] (the folders the device replies name)"; exit 2; }

dest=.device/results/$(date -u +%Y%m%dT%H%M%SZ)
imported=0
for FROM in "$@"; do
  [ -d "$FROM" ] || { echo "collect: no folder $FROM"; exit 2; }
  if [ -f "$FROM/results.tar.gz" ]; then
    mkdir -p "$dest"
    [ -f "$FROM/study.md" ] && cp "$FROM/study.md" "$dest/"
    tar -xzf "$FROM/results.tar.gz" -C "$dest"
    echo "collect: tables and run records in $dest"
    "$PY" tools/device/progress.py "$dest/results" || true   # how far each run got
  fi
  if [ -f "$FROM/state/state.json" ]; then
    "$PY" -m figkd state import "$FROM/state" "$MIRROR"   # checks every part and file SHA-256
    imported=$((imported + 1))
  else
    echo "collect: no state/ in $FROM (the call stopped before exporting?)"
  fi
done
echo "collect: $imported bundle(s) imported into $MIRROR"
[ -d "$MIRROR" ] || exit 0
"$PY" -m figkd state show "$MIRROR"
echo "collect: $MIRROR is $(du -sk "$MIRROR" | awk '{printf "%.1f", $1/1024}') MiB"
if find "$MIRROR" -name summary.json -print -quit | grep -q .; then
  "$PY" -m figkd state records "$MIRROR" "$RECORDS"
  echo "collect: commit $RECORDS (finished runs' text records; a new checkout imports them)"
fi
if [ -f .device/tiny32/pack.json ]; then
  "$PY" tools/device/calls.py
else
  echo "next session: bash tools/device/prepare.sh prints the calls (it packs the data first)"
fi
