#!/usr/bin/env bash
# Everything issue 27 asks a GPU to show, in one command of at most ~8 minutes on an H200:
#
#   scripts/gpu_acceptance.sh              # on the GPU machine; reports in $OUT (device call) or results/
#   scripts/gpu_acceptance.sh --dry-run    # the same steps on the CPU, seconds-sized (CI: tests/test_gpu_acceptance.py)
#
# On the device (no network; python3 3.12 with torch 2.11): build .whl/ first where pip works
# (scripts/gpu_wheels.sh), then one call with carry [".whl"] and this command, e.g. with timeout_s 600:
#   scripts/gpu_acceptance.sh
# The wheels are installed as the device README says (pip --no-index --no-deps --target /tmp/site), only when
# this python cannot import optuna and mlflow already (a CI venv can). The repository goes on PYTHONPATH (no
# pip install -e; the CLI runs as python3 -m sweeper.cli). Studies, databases and MLflow stores go to a temp
# folder, never into the repository. Output: gpu_acceptance.txt (the report: PASS / FAIL / SKIP per check,
# figures, a summary, the bench tables), gpu_acceptance.log (everything printed), bench_*.txt. Exit 1 if a
# check failed; a failed check never stops the ones after it. PYTHON picks the interpreter (default python3).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
DRY=0
for arg in "$@"; do
  [[ $arg == --dry-run ]] && DRY=1
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_acceptance.XXXXXX")
if [[ -n ${OUT:-} ]]; then
  OUTDIR=$OUT
elif (( DRY )); then
  OUTDIR=$WORK/out  # a dry run by hand or in CI leaves the repository's results/ alone
else
  OUTDIR=$ROOT/results
fi
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

acceptance() {
  echo "gpu_acceptance: repository $ROOT, studies in $WORK, reports in $OUTDIR"
  if ! "$PY" -c "import optuna, mlflow" 2>/dev/null; then
    if [[ ! -d $ROOT/.whl ]]; then
      echo "FAIL: $PY cannot import optuna and mlflow, and there is no .whl/ (scripts/gpu_wheels.sh builds it)"
      return 2
    fi
    echo "installing $(ls "$ROOT"/.whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$ROOT"/.whl/*.whl || return 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  cd "$WORK" && "$PY" "$ROOT/scripts/gpu_acceptance.py" --root "$ROOT" --work "$WORK" --out-dir "$OUTDIR" "$@"
}

acceptance "$@" 2>&1 | tee "$OUTDIR/gpu_acceptance.log"
exit "${PIPESTATUS[0]}"
