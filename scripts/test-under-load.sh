#!/usr/bin/env bash
# Runs CI (.ci/run) on a fresh clone of this repository N times in a row (default 3) while
# stress-ng keeps both cores busy: the test suite must pass on a loaded machine, every time.
# Needs root (as the tests do) and stress-ng (installed with apt-get when missing).
set -euo pipefail
runs="${1:-3}"
here="$(cd "$(dirname "$0")/.." && pwd)"
command -v stress-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq stress-ng; }
clone="$(mktemp -d /tmp/fc-run-load.XXXXXX)"
git clone -q "$here" "$clone"
stress-ng --cpu "$(nproc)" --timeout 4h >/dev/null 2>&1 &
stress=$!
trap 'kill $stress 2>/dev/null || true; rm -rf "$clone"' EXIT
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if ! (cd "$clone" && CI=true bash .ci/run >"$clone.run$i.log" 2>&1); then
    echo "run $i FAILED after $(( $(date +%s) - start )) s; log: $clone.run$i.log"
    exit 1
  fi
  echo "run $i passed in $(( $(date +%s) - start )) s: $(grep -E '^Tests:' "$clone.run$i.log")"
done
