#!/usr/bin/env bash
# Runs ON the device machine, right after short_tier.sh: returns the next bundle of the
# study's state that the study call could not return ($OUT takes 64 MiB a call).  short_tier.sh
# leaves the bundles in $OUTBOX (bundle-00 already went back with it); call this again, back to
# back, while it says bundles are left.  Each bundle imports on its own (collect.sh).
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUTBOX=${OUTBOX:-.device/outbox}
OUT=${OUT:-.device/out}
next=$(ls -d "$OUTBOX"/bundle-* 2>/dev/null | sort | head -n 1)
if [ -z "$next" ]; then
  echo "fetch: no bundle left in $OUTBOX (all returned, or the machine is a fresh one)"
  exit 0
fi
mkdir -p "$OUT/state"
mv "$next"/* "$OUT/state/" && rmdir "$next"
left=$(ls -d "$OUTBOX"/bundle-* 2>/dev/null | wc -l)
echo "fetch: returning $(basename "$next") ($(du -sk "$OUT/state" | awk '{printf "%.1f", $1/1024}') MiB); $left bundle(s) left$( [ "$left" -gt 0 ] && echo ': call fetch.sh again')"
