#!/usr/bin/env bash
# Runs HERE after a short_tier.sh call: merges the state it returned into the mirror
# .device/state (which the next session's calls carry out again) and unpacks the tables into
# .device/results/<UTC time>/.  Nothing here is committed (.device/ is git-ignored).
#   bash tools/device/collect.sh /work/.device/<...>   # the reply's files_at folder
# Knobs: PY=.venv/bin/python  MIRROR=.device/state  CARRY_MIB=63 (warn above: repo + mirror
# must stay under a call's 64 MiB)
set -eu -o pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
FROM=${1:?usage: bash tools/device/collect.sh FILES_AT (the folder the device reply names)}
MIRROR=${MIRROR:-.device/state}
CARRY_MIB=${CARRY_MIB:-63}
[ -d "$FROM" ] || { echo "collect: no folder $FROM"; exit 2; }

dest=.device/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$dest"
[ -f "$FROM/study.md" ] && cp "$FROM/study.md" "$dest/"
[ -f "$FROM/results.tar.gz" ] && tar -xzf "$FROM/results.tar.gz" -C "$dest"
echo "collect: tables and run records in $dest"

if [ -f "$FROM/state/state.json" ]; then
  "$PY" -m figkd state import "$FROM/state" "$MIRROR"   # checks every part and file SHA-256
else
  echo "collect: no state/ in $FROM (the call stopped before exporting?); $MIRROR unchanged"
fi
[ -d "$MIRROR" ] || exit 0
"$PY" -m figkd state show "$MIRROR"
repo_kib=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- | tail -1 | cut -f1)
mirror_kib=$(du -sk "$MIRROR" | cut -f1)
total_mib=$(( (repo_kib + mirror_kib) / 1024 ))
echo "collect: $MIRROR is $(( mirror_kib / 1024 )) MiB; with the repo a call carries ${total_mib} MiB"
if [ "$total_mib" -gt "$CARRY_MIB" ]; then
  echo "collect: WARNING: over ${CARRY_MIB} MiB; delete the least advanced killed runs from $MIRROR"
  echo "         (their last.pt) before the next session, or they will not travel"
fi
echo "next session: after the data calls, run(carry=[\"$MIRROR\"], timeout_s=600, command=\"bash tools/device/short_tier.sh\")"
