#!/usr/bin/env bash
# The demo: a real run on the bundled S&P 500 data, end to end, on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python scripts/demo.py "$@"
