#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, check notebooks and qtnb/ agree and are clean,
# run the notebooks (nbdev-test), then pytest. Exits non-zero on any failure, including "no tests ran".
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh || exit 1
bash scripts/install.sh || exit 1
bin=.venv/bin
snapshot() { git status --porcelain -- nbs qtnb; git diff -- nbs qtnb | sha256sum; }
before=$(snapshot)
"$bin/nbdev-export" || { echo "FAIL: nbdev-export errored"; exit 1; }
"$bin/nbdev-clean" || { echo "FAIL: nbdev-clean errored"; exit 1; }
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev-export or nbdev-clean changed files: run them and commit the result"
  git status --porcelain -- nbs qtnb
  exit 1
fi
# byte-compile qtnb and the tests once: an editable install has no .pyc, and with PYTHONDONTWRITEBYTECODE set
# (as on these machines) every kernel, worker and command would compile the modules again
"$bin/python" -m compileall -q qtnb tests > /dev/null || { echo "FAIL: compileall"; exit 1; }
echo "== nbdev-test"
# one process per notebook, two at a time: nbdev-test's own workers are reused across notebooks, so a model class a
# notebook defines in __main__ (and registers) would leak into the next notebook that process runs
ls nbs/*.ipynb | xargs -P 2 -n 1 "$bin/nbdev-test" || { echo "FAIL: nbdev-test"; exit 1; }
echo "== pytest"
# three workers, a test file each: most slow tests wait on kernels and subprocesses, so 2 cores keep 3 busy
"$bin/python" -m pytest -n 3 --dist loadfile --durations=40 "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "FAIL: pytest collected no tests"; exit 1; fi
exit $rc
