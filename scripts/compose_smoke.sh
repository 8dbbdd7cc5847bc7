#!/usr/bin/env bash
# Docker Compose smoke test: build the images from local bases, bring up PostgreSQL + MLflow,
# create studies/digits_smoke.yaml, run it with 3 workers, and check that the trials came from
# 3 distinct worker containers and that MLflow holds a run for each trial; then tear everything down.
#
# Needs: docker with compose v2, the local base images (docker/build_local_bases.sh) and a CPU torch
# wheel in docker/wheels/ (e.g. `pip download torch --no-deps -d docker/wheels`).
# Env: SKIP_BUILD=1 reuses sweeper:local; CA_BUNDLE=/path/ca.crt for a TLS-intercepting proxy;
#      KEEP=1 leaves the stack up; BUILD_DOCKER=/usr/bin/docker picks a docker CLI that can use BuildKit
#      (a CLI >= 23 needs the buildx plugin for it; Debian's docker.io 20.10 CLI has it built in).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
project=sweeper-smoke
export POSTGRES_PASSWORD="smoke-$RANDOM$RANDOM"
export SWEEPER_STUDY_FILE=studies/digits_smoke.yaml SWEEPER_STUDY_NAME=digits-smoke
export MLFLOW_PORT=${MLFLOW_PORT:-15123}
workers=3
compose=(docker compose -p "$project" -f docker/compose.yaml -f docker/compose.local.yaml)

for img in sweeper-base:bookworm sweeper-postgres:local; do
  docker image inspect "$img" >/dev/null 2>&1 || { echo "missing image $img: run docker/build_local_bases.sh" >&2; exit 2; }
done

if [ -z "${SKIP_BUILD:-}" ]; then
  ls docker/wheels/torch-*.whl >/dev/null 2>&1 \
    || { echo "no torch wheel in docker/wheels/: pip download torch --no-deps -d docker/wheels" >&2; exit 2; }
  secret=()
  ca=${CA_BUNDLE:-${PIP_CERT:-}}
  [ -n "$ca" ] && secret=(--secret "id=ca,src=$ca")
  # --network host: the daemon may have no default bridge (dockerd --bridge=none)
  DOCKER_BUILDKIT=1 "${BUILD_DOCKER:-docker}" build --network host "${secret[@]}" -f docker/Dockerfile \
    --build-arg BASE_IMAGE=sweeper-base:bookworm -t sweeper:local . >/tmp/sweeper-smoke-build.log 2>&1 \
    || { tail -30 /tmp/sweeper-smoke-build.log; exit 1; }
  echo "built sweeper:local in $((SECONDS - start))s"
fi

cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then "${compose[@]}" logs --tail 40 || true; fi
  [ -n "${KEEP:-}" ] || "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  echo "compose smoke: $([ $rc -eq 0 ] && echo PASSED || echo FAILED) in $((SECONDS - start))s"
}
trap cleanup EXIT

"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
up=$SECONDS
"${compose[@]}" up -d --no-build --scale worker=$workers

# wait until every worker container has exited
deadline=$((SECONDS + 300))
while [ -n "$("${compose[@]}" ps -q --status running worker)" ] || [ -z "$("${compose[@]}" ps -aq worker)" ]; do
  [ $SECONDS -lt $deadline ] || { echo "workers still running after 300s" >&2; exit 1; }
  sleep 3
done
echo "stack up and study run in $((SECONDS - up))s"

hosts=()
for c in $("${compose[@]}" ps -aq worker); do
  code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
  [ "$code" = 0 ] || { echo "worker $c exited with $code" >&2; docker logs --tail 30 "$c"; exit 1; }
  hosts+=("$(docker inspect -f '{{.Config.Hostname}}' "$c")")
done
[ ${#hosts[@]} -eq $workers ] || { echo "expected $workers workers, found ${#hosts[@]}" >&2; exit 1; }

# check from inside the compose network, with the study storage and MLflow the workers used
"${compose[@]}" run --rm --no-deps -T -e SWEEPER_STUDY_NAME --entrypoint python3 create - "${hosts[@]}" <<'PY'
import os, sys
import optuna
from mlflow import MlflowClient
from sweeper.study.record import FINISHED, StudyRecord

name, workers = os.environ["SWEEPER_STUDY_NAME"], set(sys.argv[1:])
study = optuna.load_study(study_name=name, storage=os.environ["SWEEPER_STORAGE"])
finished = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
budget = StudyRecord.open(name, os.environ["SWEEPER_STORAGE"]).budget
assert len(finished) >= budget, f"{len(finished)} finished trials, budget {budget}"
trial_hosts = {t.user_attrs.get("host") for t in study.get_trials(deepcopy=False)}
assert trial_hosts == workers, f"trials came from {trial_hosts}, worker containers are {workers}"
client = MlflowClient()
exp = client.get_experiment_by_name(name)
assert exp is not None, f"no MLflow experiment {name!r}"
runs = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'trial'", max_results=1000)
run_hosts = {r.data.tags.get("sweeper.host") for r in runs}
assert len(runs) >= len(finished), f"{len(runs)} MLflow trial runs for {len(finished)} finished trials"
assert run_hosts == workers, f"MLflow runs came from {run_hosts}, worker containers are {workers}"
print(f"ok: {len(finished)} trials from {len(workers)} containers {sorted(workers)}, {len(runs)} MLflow runs")
PY
