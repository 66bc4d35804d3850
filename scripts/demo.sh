#!/usr/bin/env bash
# The demo: `qtnb run train` on the bundled S&P 500 data with the defaults, on a CPU, end to end: the train pipeline
# notebook runs headlessly with papermill into runs/<run_id>/ and the command prints where the notebook, the metrics
# and the model are. Extra arguments go to `qtnb run train` (e.g. -p model lstm -p num_epochs 20).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/qtnb run train --name demo "$@"
