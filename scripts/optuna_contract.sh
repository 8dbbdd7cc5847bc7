#!/usr/bin/env bash
# Optuna's own storage, study and trial tests (from the sdist of the installed Optuna version, fetched from
# PyPI, not kept in this repository) run with sweeper's storage in place of Optuna's RDBStorage, on SQLite
# and PostgreSQL, and once with Optuna's RDBStorage as the baseline. Only how the storage is built changes
# (scripts/optuna_contract_plugin.py); Optuna's assertions are its own. Exits non-zero when a test fails
# with sweeper's storage.
#   OPTUNA_CONTRACT_PG: the PostgreSQL server (a database is created and dropped there), default
#   postgresql+psycopg://postgres@127.0.0.1:5432/test; OPTUNA_CONTRACT_DBS: "sqlite postgresql" by default.
# On PostgreSQL the storage and trial tests run (the storage contract itself), not the study tests (optimize
# loops, samplers, dataframes over the same storage calls). The baseline and sweeper's run side by side, so
# on a 2-core machine the four runs take about as long as two. OPTUNA_CONTRACT_PG_ALL=1 runs the study tests
# on PostgreSQL too.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=$(python -c "import optuna; print(optuna.__version__)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download -q --no-deps --no-binary :all: "optuna==$version" -d "$work" 2>&1 | grep -v "^WARNING: Location" || true
tar -xzf "$work/optuna-$version.tar.gz" -C "$work"
python -c "import fakeredis" 2>/dev/null || python -m pip install -q fakeredis  # imported by optuna.testing.storages
cd "$work/optuna-$version"
# not RDB storage tests: the journal and gRPC storages, a test server given by URL, RDBStorage's own
# schema-upgrade and model tests (they build RDBStorage directly, from files of old schemas)
ignore=(--ignore=tests/storages_tests/journal_tests --ignore=tests/storages_tests/test_grpc.py
        --ignore=tests/storages_tests/test_with_server.py --ignore=tests/storages_tests/rdb_tests)
run() {  # run KIND DB DIRS...: one pytest run of Optuna's tests, its log in $work/KIND-DB.log
  local kind=$1 db=$2
  shift 2
  OPTUNA_CONTRACT_STORAGE=$kind OPTUNA_CONTRACT_DB=$db PYTHONPATH="$root/scripts${PYTHONPATH:+:$PYTHONPATH}" \
    python -m pytest -p optuna_contract_plugin -p no:cacheprovider --color=no -q -rfEs -W ignore "$@" "${ignore[@]}" \
    >"$work/$kind-$db.log" 2>&1
}
failed=0
for db in ${OPTUNA_CONTRACT_DBS:-sqlite postgresql}; do
  dirs=(tests/storages_tests tests/trial_tests)
  if [ "$db" = sqlite ] || [ -n "${OPTUNA_CONTRACT_PG_ALL:-}" ]; then dirs+=(tests/study_tests); fi
  # the baseline and sweeper's storage side by side (one core each): their databases are separate
  start=$SECONDS
  run optuna "$db" "${dirs[@]}" & pid_optuna=$!
  run sweeper "$db" "${dirs[@]}" & pid_sweeper=$!
  for kind in optuna sweeper; do
    rc=0
    pid_var=pid_$kind
    wait "${!pid_var}" || rc=$?
    log="$work/$kind-$db.log"
    summary=$(grep -E "(passed|failed|error).* in [0-9.]+s" "$log" | tail -n1 | sed -E 's/=+//g; s/^ +| +$//g')
    name=$([ "$kind" = optuna ] && echo "Optuna's RDBStorage" || echo "sweeper's storage")
    echo "optuna contract ($version), $name on $db (${dirs[*]}): ${summary:-no summary (exit $rc)} [$((SECONDS - start)) s]"
    grep -E "^(FAILED|ERROR) " "$log" | sed 's/^/    /' || true
    grep -E "^SKIPPED " "$log" | sed 's/^/    /' || true
    if [ "$kind" = sweeper ] && [ "$rc" -ne 0 ]; then failed=1; fi
  done
done
exit "$failed"
