#!/usr/bin/env bash
# Create .venv in the checkout and install qtnb with its dev tools. Re-running is cheap: it reinstalls only when
# pyproject.toml changed. torch comes first, pinned, because it is a CPU build on this machine's disk; an unpinned
# torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.qtnb-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then exit 0; fi
log=$(mktemp)
run() { if ! "$@" >>"$log" 2>&1; then echo "install failed: $*" >&2; grep -v "is ignored: it is neither" "$log" | tail -40 >&2; exit 1; fi; }
[ -x .venv/bin/python ] || run "$PY" -m venv .venv
echo "installing qtnb into .venv (first time: a few minutes)..." >&2
run .venv/bin/python -m pip install -q --upgrade pip
run .venv/bin/python -m pip install -q torch==2.13.0
run .venv/bin/python -m pip install -q -e ".[dev,mlflow]"
echo "$want" > "$stamp"
rm -f "$log"
