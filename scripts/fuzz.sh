#!/usr/bin/env bash
# The long fuzz run (issue 21): every target of tests/fuzz/targets.py, at least 1M executions
# each. Per target: a coverage-guided atheris phase grows a working corpus from the committed
# seeds (tests/fuzz/corpus/<target>/), then an uninstrumented phase (several times faster)
# mutates that corpus for the rest of the executions. Nothing stops at a finding: counts per
# signature, and the first input of each, go to $OUT (default bench/results/fuzz-work/), and
# bench/fuzz/summarize.py writes the table to bench/results/<date>-fuzz.md.
#
#   bash scripts/fuzz.sh                       # all targets, 100k guided + 900k unguided each
#   bash scripts/fuzz.sh codec policy          # some targets
#   GUIDED=200000 TOTAL=2000000 JOBS=2 bash scripts/fuzz.sh
#
# Needs atheris (requirements-test.txt). Runs JOBS targets at a time (default 1: the machine is shared).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GUIDED=${GUIDED:-100000}
TOTAL=${TOTAL:-1000000}
SEED=${SEED:-1}
JOBS=${JOBS:-1}
OUT=${OUT:-bench/results/fuzz-work}
# The project's virtual environment when scripts/install.sh --test made one, else python3.
venv="${JITGATE_VENV:-$PWD/.venv}"
PY=python3
if [ -x "$venv/bin/python" ]; then PY="$venv/bin/python"; fi
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <("$PY" -c "from tests.fuzz.targets import TARGETS; print('\n'.join(TARGETS))")
fi
mkdir -p "$OUT/logs"
run_target() {
  local t=$1
  "$PY" bench/fuzz/run.py "$t" --runs "$GUIDED" --seed "$SEED" --out "$OUT" >"$OUT/logs/$t-guided.log" 2>&1
  "$PY" bench/fuzz/run.py "$t" --runs "$((TOTAL - GUIDED))" --seed "$SEED" --out "$OUT" --unguided \
    >"$OUT/logs/$t-unguided.log" 2>&1
  echo "$t done"
}
export -f run_target
export GUIDED TOTAL SEED OUT PY
printf '%s\n' "${TARGETS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_target {}'
"$PY" bench/fuzz/summarize.py "$OUT"
