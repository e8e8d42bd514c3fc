#!/usr/bin/env bash
# Runs HERE (no GPU): packs Tiny-ImageNet-100 at 32x32 into .device/tiny32/p1, p2, ... (each
# part small enough to travel in one device call with the repo), fetches the PyWavelets wheel
# for the device's Python 3.12 into .whl/, and prints the device calls to make, in order.
#   bash tools/device/prepare.sh            # PY=.venv/bin/python, BUDGET_MIB=55 per call
set -eu -o pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
BUDGET_MIB=${BUDGET_MIB:-55}          # what one call may carry, repo included (hard cap 64)
SHARD_MIB=${SHARD_MIB:-12}            # shard size: small shards pack parts tightly
DATA=.device/tiny32

# 1. the wheel (device image has no PyWavelets)
if ! ls .whl/pywavelets-*cp312*manylinux*x86_64*.whl >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl PyWavelets==1.8.0
fi

# 2. the shards (pixels from the same uint8 cache the CPU study uses; see `figkd pack --help`)
if [ ! -f $DATA/pack.json ] || [ "${REPACK:-0}" = 1 ]; then
  rm -rf .device/pack $DATA
  "$PY" -m figkd pack tiny-imagenet --size 32 --out .device/pack --max-mib "$SHARD_MIB" --workers 2
  # 3. group the shards into parts that fit the per-call budget (the first also carries .whl)
  repo_kib=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- | tail -1 | cut -f1)
  whl_kib=$(du -ck .whl/*.whl | tail -1 | cut -f1)
  "$PY" - "$BUDGET_MIB" "$repo_kib" "$whl_kib" <<'PY'
import shutil, sys
from pathlib import Path
budget, repo, whl = (float(sys.argv[1]) * 1024, int(sys.argv[2]), int(sys.argv[3]))
src, dst = Path(".device/pack"), Path(".device/tiny32")
files = sorted(src.glob("*.npz"), key=lambda p: (p.name.startswith("test"), p.name))
parts, used = [[]], repo + whl
for f in files:
    kib = f.stat().st_size / 1024
    if parts[-1] and used + kib > budget:
        parts.append([]); used = repo
    if used + kib > budget:
        raise SystemExit(f"{f.name} alone exceeds the budget; lower SHARD_MIB")
    parts[-1].append(f); used += kib
for i, group in enumerate(parts, 1):
    (dst / f"p{i}").mkdir(parents=True, exist_ok=True)
    for f in group:
        shutil.move(str(f), dst / f"p{i}" / f.name)
shutil.move(str(src / "pack.json"), dst / "pack.json")
src.rmdir()
PY
fi

# 4. sizes and the call sequence
repo_mib=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- | tail -1 | awk '{printf "%.1f", $1/1024}')
parts=$(cd $DATA && ls -d p[0-9]* | sort -V)
echo
echo "repo (tracked + untracked-not-ignored): ${repo_mib} MiB; wheel: $(du -ck .whl/*.whl | tail -1 | awk '{printf "%.1f", $1/1024}') MiB"
for p in $parts; do echo "  $DATA/$p: $(du -sk $DATA/$p | awk '{printf "%.1f", $1/1024}') MiB ($(ls $DATA/$p | tr '\n' ' '))"; done
echo
"$PY" tools/device/calls.py
echo "The study stops itself at LIMIT = B - 170 s (detach.sh), and attach.sh returns study.md, results.tar.gz and state/ (bundle-00) in \$OUT."
