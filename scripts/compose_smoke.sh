#!/usr/bin/env bash
# Docker Compose smoke test, with faults inside the stack. On the images of docker/compose.local.yaml
# (built here; scripts/docker_setup.sh prepares the machine): PostgreSQL + PgBouncer + MLflow server + 3 workers
# (every study connection through PgBouncer, checked) run studies/digits_smoke.yaml, while
#   1. kill:    `docker kill` of one worker container mid-trial, after the trial's first checkpoints (the study
#               checkpoints every epoch, in the study's MLflow run): another worker fails the trial by heartbeat
#               and it is run again (same parameters), resuming from the killed try's newest checkpoint;
#   2. restart: `docker compose restart postgres` mid-study: the workers wait for the database and carry on;
#   3. stop:    `docker compose stop worker` mid-trial (SIGTERM): each worker queues its trial again and
#               exits 0 within its stop grace period, each trial checkpointed at the step it reached; then
#               `docker compose start worker` finishes the study, each stopped trial resuming from there.
# Trial counts are printed before and after each fault. At the end: exactly the budget of finished trials,
# none RUNNING or WAITING, no trial finished twice (a retry and its original), every failed trial retried
# (or an untrained surplus), trials from all 3 worker containers, and an MLflow run for every finished trial;
# the killed trial's retry resumed its checkpoint (resumed_from): the epochs trained for it in all are at most its
# epochs + one checkpoint interval (printed against what restarting it would have cost), and each trial stopped
# by SIGTERM was resumed too; no checkpoint file is left in the MLflow artifact volume;
# the study's end steps run once, by one worker: its test score, best_model and refit_model (once each) in
# MLflow, the study run FINISHED; and no container shows the database password on a command line.
#
# Env: SKIP_BUILD=1 reuses the images; KEEP=1 leaves the stack up; MLFLOW_PORT (default 15123) publishes the
#      MLflow UI on 127.0.0.1; SMOKE_TIMEOUT (s, default 600) bounds the whole test.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
project=sweeper-smoke
name=digits-smoke
workers=3
export POSTGRES_PASSWORD="smoke-$RANDOM$RANDOM"
export SWEEPER_STUDY_FILE=studies/digits_smoke.yaml SWEEPER_STUDY_NAME=$name
export MLFLOW_PORT=${MLFLOW_PORT:-15123}
# Short heartbeats so that the killed worker's trial is failed and retried within seconds.
export SWEEPER_HEARTBEAT=2 SWEEPER_HEARTBEAT_GRACE=6 SWEEPER_DB_RETRY_S=120
export MLFLOW_WORKERS=1 OMP_NUM_THREADS=1   # a small machine: one MLflow server process, one torch thread a worker
deadline=$((SECONDS + ${SMOKE_TIMEOUT:-600}))
# --env-file /dev/null: a user's docker/.env does not change what is tested
compose=(docker compose --env-file /dev/null -p "$project" -f docker/compose.yaml -f docker/compose.local.yaml)

log() { printf '[smoke %4ss] %s\n' "$((SECONDS - start))" "$*"; }
fail() { log "FAILED: $*" >&2; exit 1; }
left() { [ $SECONDS -lt $deadline ] || fail "over the time limit (SMOKE_TIMEOUT) while: $*"; }

docker compose version >/dev/null 2>&1 || { echo "no Docker Compose v2: run scripts/docker_setup.sh" >&2; exit 2; }
docker image inspect sweeper-base:bookworm >/dev/null 2>&1 \
  || { echo "missing image sweeper-base:bookworm: run scripts/docker_setup.sh" >&2; exit 2; }

if [ -z "${SKIP_BUILD:-}" ]; then
  ls docker/wheels/torch-*.whl >/dev/null 2>&1 \
    || { echo "no torch wheel in docker/wheels/: run scripts/docker_setup.sh" >&2; exit 2; }
  "${compose[@]}" --progress plain build >/tmp/sweeper-smoke-build.log 2>&1 \
    || { tail -40 /tmp/sweeper-smoke-build.log; fail "image build (log: /tmp/sweeper-smoke-build.log)"; }
  log "images built (sweeper:local, sweeper-postgres:local, sweeper-pgbouncer:local)"
fi

cleanup() {
  rc=$?
  if [ $rc -ne 0 ]; then
    "${compose[@]}" ps -a || true
    "${compose[@]}" logs --no-color --tail 25 || true
  fi
  [ -n "${KEEP:-}" ] || "${compose[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  echo "compose smoke: $([ $rc -eq 0 ] && echo PASSED || echo FAILED) in $((SECONDS - start))s"
}
trap cleanup EXIT

# --- study queries, through psql in the postgres container ----------------------------------------
sql() { "${compose[@]}" exec -T postgres psql -qtAX -U sweeper -d sweeper -F ' ' -c "$1" 2>/dev/null; }
in_study="from trials t join studies s using (study_id) where s.study_name = '$name'"
counts() {  # e.g. "COMPLETE=5 FAIL=1 RUNNING=2"
  sql "select coalesce(string_agg(state || '=' || n, ' ' order by state), 'none') from
       (select t.state::text as state, count(*) as n $in_study group by t.state) c" || echo "(database down)"
}
n_state() { sql "select count(*) $in_study and t.state::text = '$1'" || echo -1; }
n_finished() { sql "select count(*) $in_study and t.state::text in ('COMPLETE', 'PRUNED')" || echo -1; }
running() {  # "number host" of each RUNNING trial
  sql "select t.number, trim(both '\"' from a.value_json) from trials t join studies s using (study_id)
       join trial_user_attributes a on a.trial_id = t.trial_id and a.key = 'host'
       where s.study_name = '$name' and t.state::text = 'RUNNING' order by t.number" || true
}
state_of() { sql "select t.state::text $in_study and t.number = $1" || true; }
retry_of() {  # "number state" of the retry of trial $1
  sql "select t.number, t.state::text from trials t join studies s using (study_id)
       join trial_system_attributes a on a.trial_id = t.trial_id and a.key = 'failed_trial'
       where s.study_name = '$name' and a.value_json = '$1' order by t.number limit 1" || true
}
budget=$(sed -n 's/^trials: *\([0-9]*\).*/\1/p' "$SWEEPER_STUDY_FILE")
epochs=$(sed -n 's/^  epochs: *\([0-9]*\).*/\1/p' "$SWEEPER_STUDY_FILE")
every=$(sed -n 's/^  checkpoint_every: *\([0-9]*\).*/\1/p' "$SWEEPER_STUDY_FILE")
[ -n "$epochs" ] && [ -n "$every" ] || fail "$SWEEPER_STUDY_FILE needs train.epochs and a numeric train.checkpoint_every"
live_workers() { "${compose[@]}" ps -q --status running worker; }
# a trial seen RUNNING on the same container twice, a second apart: "number host"
mid_trial() {
  local a b both
  while left "waiting for a trial mid-run"; do
    a=$(running); sleep 1; b=$(running)
    [ "$(n_finished)" -lt "$budget" ] || fail "the study finished before the fault: make its trials longer"
    both=$(comm -12 <(sort <<<"$a") <(sort <<<"$b") | sed -n '/./{p;q}' || true)
    [ -z "$both" ] || { echo "$both"; return 0; }
  done
}

# --- up --------------------------------------------------------------------------------------------
"${compose[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
up=$SECONDS
"${compose[@]}" up -d --scale worker=$workers 2>&1 | grep -vE '^ *(Container|Network|Volume) |IPv4 forwarding is disabled' || true
mapfile -t ids < <("${compose[@]}" ps -aq worker)
[ ${#ids[@]} -eq $workers ] || fail "expected $workers worker containers, found ${#ids[@]}"
log "stack up in $((SECONDS - up))s: postgres, pgbouncer, mlflow, $workers workers ($(docker inspect -f '{{.Config.Hostname}}' "${ids[@]}" | tr '\n' ' '))budget $budget"

# --- no secret on any command line: docker inspect (Path, Args, Cmd, Entrypoint) and every process (docker top)
no_password_on_command_lines() {
  local c seen=0
  for c in $("${compose[@]}" ps -aq); do
    docker inspect -f '{{.Path}} {{join .Args " "}} {{join .Config.Cmd " "}} {{join .Config.Entrypoint " "}}' "$c" \
      | grep -qF "$POSTGRES_PASSWORD" && fail "the database password is on the command line of container ${c:0:12}"
    if [ "$(docker inspect -f '{{.State.Running}}' "$c")" = true ]; then
      docker top "$c" -o pid,args | grep -qF "$POSTGRES_PASSWORD" \
        && fail "the database password is in a process's arguments in container ${c:0:12} (docker top)"
    fi
    seen=$((seen + 1))
  done
  log "no password in the command line of any of $seen containers (docker inspect) nor of their processes (docker top)"
}
no_password_on_command_lines

# --- the workers reach the study database through PgBouncer only --------------------------------------
through_pgbouncer() {
  local ip others
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$("${compose[@]}" ps -q pgbouncer)" | awk '{print $1}')
  others=$(sql "SELECT count(*) FROM pg_stat_activity WHERE datname = 'sweeper' AND backend_type = 'client backend'
                AND pid <> pg_backend_pid() AND client_addr IS DISTINCT FROM '$ip'::inet")
  [ "$others" = 0 ] || fail "$others connections to the study database do not come from PgBouncer ($ip)"
  log "every connection to the study database comes from PgBouncer ($ip): $(sql "SELECT count(*) FROM
       pg_stat_activity WHERE datname = 'sweeper' AND client_addr = '$ip'::inet") server connections"
}
through_pgbouncer

# --- fault 1: docker kill of a worker container mid-trial, after its checkpoints ----------------------
# A RUNNING trial that reported 2 epochs or more (so its checkpoint after epoch 1 is written: a save follows
# its epoch's report) and has 2 or more left: "number host epochs-reported".
checkpointed_trial() {
  local found
  while left "waiting for a trial with a checkpoint mid-run"; do
    [ "$(n_finished)" -lt "$budget" ] || fail "the study finished before the kill: make its trials longer"
    found=$(sql "select t.number, trim(both '\"' from a.value_json), (select count(*) from trial_intermediate_values v
                 where v.trial_id = t.trial_id) from trials t join studies s using (study_id) join trial_user_attributes a
                 on a.trial_id = t.trial_id and a.key = 'host' where s.study_name = '$name' and t.state::text = 'RUNNING'
                 order by t.number" | awk -v lo=$((every + 1)) -v hi=$((epochs - 2)) '$3 >= lo && $3 <= hi' | head -n1 || true)
    [ -z "$found" ] || { echo "$found"; return 0; }
    sleep 0.5
  done
}
found=$(checkpointed_trial)
read -r k_trial k_host k_epochs <<<"$found"
log "kill: before $(counts)"
docker kill "$k_host" >/dev/null
t_kill=$SECONDS
log "kill: docker kill $k_host (SIGKILL) while it ran trial #$k_trial, $k_epochs of its $epochs epochs reported (checkpoint every $every)"
while [ "$(state_of "$k_trial")" != FAIL ]; do left "trial #$k_trial to fail by heartbeat"; sleep 1; done
log "kill: trial #$k_trial failed by heartbeat $((SECONDS - t_kill))s after the kill (grace ${SWEEPER_HEARTBEAT_GRACE}s)"
while [ -z "$(retry_of "$k_trial")" ]; do left "a retry of trial #$k_trial"; sleep 1; done
log "kill: retried as trial $(retry_of "$k_trial" | sed 's/ / (/;s/$/)/') by the other workers; after $(counts)"
log "kill: container $k_host: $(docker inspect -f '{{.State.Status}}, exit {{.State.ExitCode}}, restarts {{.RestartCount}}' "$k_host") (docker kill is a manual stop: no restart)"

# --- fault 2: restart PostgreSQL mid-study --------------------------------------------------------
found=$(mid_trial)
read -r r_trial _ <<<"$found"
fin=$(n_finished)
log "restart: before $(counts) (trial #$r_trial running)"
t=$SECONDS
"${compose[@]}" restart postgres 2>&1 | grep -v '^ *Container' || true
log "restart: docker compose restart postgres took $((SECONDS - t))s"
while [ "$(n_finished)" -le "$fin" ]; do left "a trial to finish after the database restart"; sleep 1; done
for c in "${ids[@]}"; do
  [ "$c" = "$(docker inspect -f '{{.Id}}' "$k_host")" ] && continue
  s=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$c")
  [ "$s" = "running 0" ] || [ "$s" = "exited 0" ] || fail "worker ${c:0:12} is '$s' after the database restart"
done
log "restart: workers carried on; after $(counts)"

# --- fault 3: docker compose stop worker (SIGTERM) mid-trial ---------------------------------------
stopped=0
for attempt in 1 2 3; do  # again if, by chance, no trial was running at the SIGTERM
  found=$(mid_trial)
  mapfile -t live < <(live_workers)
  before_fail=$(n_state FAIL) before_waiting=$(n_state WAITING)
  log "stop: before $(counts) (${#live[@]} workers running)"
  t=$SECONDS
  "${compose[@]}" stop worker 2>&1 | grep -v '^ *Container' || true
  stop_s=$((SECONDS - t))
  grace=$(docker inspect -f '{{.Config.StopTimeout}}' "${live[0]}")
  for c in "${live[@]}"; do
    code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
    [ "$code" = 0 ] || { docker logs --tail 20 "$c"; fail "worker ${c:0:12} exited $code on SIGTERM"; }
    log "stop: worker ${c:0:12} exited 0: $(docker logs "$c" 2>&1 | grep -E 'queued again|worker ran' | tail -n2 | tr '\n' ' ')"
  done
  [ "$stop_s" -lt "$grace" ] || fail "docker compose stop took ${stop_s}s, not under the ${grace}s grace"
  running_now=$(n_state RUNNING)
  stopped=$(( $(n_state FAIL) - before_fail )) requeued=$(( $(n_state WAITING) - before_waiting ))
  log "stop: all stopped in ${stop_s}s (grace ${grace}s); after $(counts)"
  [ "$running_now" = 0 ] || fail "$running_now trial(s) left RUNNING after the stop"
  [ "$requeued" = "$stopped" ] || fail "$stopped trial(s) stopped (FAIL), $requeued queued again (WAITING)"
  "${compose[@]}" start worker 2>&1 | grep -v '^ *Container' || true
  log "stop: docker compose start worker: $(live_workers | wc -l) workers running again"
  [ "$stopped" -eq 0 ] || break
  log "stop: no trial was running at the SIGTERM (attempt $attempt); once more"
done
[ "$stopped" -ge 1 ] || fail "no trial was running at any of 3 stops"
log "stop: the $stopped trial(s) running at SIGTERM failed and were queued again with the same parameters"

# --- the end of the study -------------------------------------------------------------------------
while [ -n "$(live_workers)" ]; do left "the workers to finish the study"; sleep 2; done
log "study done; all workers exited; $(counts)"
hosts=()
for c in "${ids[@]}"; do
  code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
  [ "$code" = 0 ] || { docker logs --tail 30 "$c"; fail "worker ${c:0:12} exited with $code"; }
  hosts+=("$(docker inspect -f '{{.Config.Hostname}}' "$c")")
  log "worker ${c:0:12}: exit 0, $(docker logs "$c" 2>&1 | grep -c 'worker ran') run(s): $(docker logs "$c" 2>&1 | grep -o 'worker ran [0-9]* trial(s)' | tr '\n' ' ')"
done

enders=0
for c in "${ids[@]}"; do enders=$((enders + $(docker logs "$c" 2>&1 | grep -c 'running the end steps' || true))); done
[ "$enders" = 1 ] || fail "$enders worker runs ran the study's end steps, not exactly one"
log "the end steps (test score, best model, refit) ran in one worker: $(for c in "${ids[@]}"; do
  docker logs "$c" 2>&1 | grep -q 'running the end steps' && docker inspect -f '{{.Config.Hostname}}' "$c"; done)"
no_password_on_command_lines

# --- resumed trials: resumed_from of each retry, epochs reported by each try (trial_intermediate_values) ------
rows_of() { sql "select count(*) from trial_intermediate_values v join trials t using (trial_id) join studies s
                 using (study_id) where s.study_name = '$name' and t.number = $1"; }
resumed_of() {  # "trial epoch step" of trial $1's resumed_from; empty when it started from scratch
  sql "select a.value_json::jsonb->>'trial', a.value_json::jsonb->>'epoch', a.value_json::jsonb->>'step'
       from trial_user_attributes a join trials t using (trial_id) join studies s using (study_id)
       where s.study_name = '$name' and t.number = $1 and a.key = 'resumed_from'" || true
}
retries_of() {  # the numbers of every later try of first try $1, oldest first
  sql "select t.number from trials t join studies s using (study_id) join trial_system_attributes a
       on a.trial_id = t.trial_id and a.key = 'failed_trial' where s.study_name = '$name' and a.value_json = '$1'
       order by t.number"
}
next_try() {  # the number of the try that retried trial $1 (the last of its retry_history)
  sql "select t.number from trials t join studies s using (study_id) join trial_system_attributes a
       on a.trial_id = t.trial_id and a.key = 'retry_history' where s.study_name = '$name'
       and (a.value_json::jsonb->>-1)::int = $1 order by t.number limit 1"
}
seconds_of() { sql "select round(extract(epoch from t.datetime_complete - t.datetime_start)::numeric, 1) $in_study and t.number = $1"; }
# epochs trained for the trial, over all its tries: each try's reported epochs less those it resumed with
mapfile -t k_retries < <(retries_of "$k_trial")
[ ${#k_retries[@]} -ge 1 ] || fail "trial #$k_trial (killed) was never retried"
k_first=${k_retries[0]} k_last=${k_retries[-1]}
read -r from_trial from_epoch from_step <<<"$(resumed_of "$k_first")"
[ "$from_trial" = "$k_trial" ] \
  || fail "the killed trial #$k_trial's retry #$k_first did not resume its checkpoint (resumed_from: '${from_trial:-none}')"
k_rows=$(rows_of "$k_trial") total=$(rows_of "$k_trial") chain="#$k_trial"
for r in "${k_retries[@]}"; do
  read -r _ e _ <<<"$(resumed_of "$r")"
  total=$((total + $(rows_of "$r") - ${e:-0})) chain+=" -> #$r"
done
final_epochs=$(rows_of "$k_last") final_state=$(state_of "$k_last")
restart=$((k_rows + final_epochs))
[ "$total" -le $((final_epochs + every)) ] \
  || fail "the killed trial #$k_trial was trained $total epochs in all ($chain), over its $final_epochs + $every (one checkpoint interval)"
retry_s=$(seconds_of "$k_first")
per_epoch=$(awk -v s="$retry_s" -v n=$(( $(rows_of "$k_first") - from_epoch )) 'BEGIN { if (n > 0) printf "%.1f", s / n; else print "?" }')
log "resume (kill): trial #$k_trial, killed after $k_rows reported epochs, was resumed by its retry #$k_first from its checkpoint at epoch $from_epoch (step $from_step); tries $chain ($final_state)"
log "resume (kill): epochs trained for trial #$k_trial in all: $total with resume (<= $final_epochs + $every) vs $restart restarting it ($k_rows + $final_epochs): $((restart - total)) epoch(s) saved, ~$(awk -v p="$per_epoch" -v n=$((restart - total)) 'BEGIN { printf "%.0f", p * n }')s at the retry's ${per_epoch}s an epoch (the retry ran ${retry_s}s for its $(( $(rows_of "$k_first") - from_epoch )) epochs)"

# each trial stopped by SIGTERM: its retry continued its checkpoint (taken at the step the stop reached)
mapfile -t stopped_trials < <(sql "select t.number from trials t join studies s using (study_id) join trial_user_attributes a
  on a.trial_id = t.trial_id and a.key = 'end_reason' where s.study_name = '$name' and t.state::text = 'FAIL'
  and a.value_json like '%SIGTERM%queued again%' order by t.number")
[ ${#stopped_trials[@]} -ge 1 ] || fail "no trial ended as stopped by SIGTERM and queued again"
for s_trial in "${stopped_trials[@]}"; do
  r=$(next_try "$s_trial") s_rows=$(rows_of "$s_trial")
  [ -n "$r" ] || fail "trial #$s_trial (stopped) was never retried"
  read -r from_trial from_epoch from_step <<<"$(resumed_of "$r")"
  if [ "$from_trial" = "$s_trial" ]; then
    log "resume (stop): trial #$s_trial, stopped by SIGTERM after $s_rows reported epochs, was resumed by its retry #$r ($(state_of "$r")) from its checkpoint at epoch $from_epoch, step $from_step"
  elif [ "$s_rows" = 0 ] && [ -z "$from_trial" ]; then
    log "resume (stop): trial #$s_trial was stopped before its training began (no epoch reported, nothing to checkpoint); its retry #$r started it"
  else
    fail "trial #$s_trial (stopped by SIGTERM after $s_rows reported epochs): its retry #$r did not resume its checkpoint (resumed_from: '${from_trial:-none}')"
  fi
done

# a checkpoint not written (e.g. while the database restarted: MLflow's server answers for the run from it) is a
# warning and training goes on: shown, not failed
ck_warn=$(for c in "${ids[@]}"; do docker logs "$c" 2>&1 | grep -E 'checkpoint.*not (written|readable)|written for another' || true; done)
log "checkpoint warnings in the worker logs: $(grep -c . <<<"$ck_warn" || true)"
[ -z "$ck_warn" ] || sed 's/^/    /' <<<"$ck_warn"

# a finished trial deletes its checkpoints (and its earlier tries'): none left in the MLflow artifact volume
left_over=$("${compose[@]}" exec -T mlflow find /mlartifacts -path '*/checkpoints/*' -type f 2>&1) \
  || fail "could not list /mlartifacts in the mlflow container: $left_over"
[ -z "$left_over" ] || fail "checkpoint files left in the MLflow artifacts after the study: $(tr '\n' ' ' <<<"$left_over")"
log "no checkpoint file left in the MLflow artifact volume (/mlartifacts/*/*/artifacts/checkpoints/)"

# Checked from inside the compose network, with the study storage and MLflow server the workers used.
"${compose[@]}" run --rm --no-deps -T -e SWEEPER_STUDY_NAME -e SWEEPER_STUDY_FILE --entrypoint python3 create - "${hosts[@]}" <<'PY'
import collections, os, sys, warnings

import optuna, yaml
from mlflow import MlflowClient
from optuna.storages import RetryFailedTrialCallback as Retry
from optuna.trial import TrialState as S

warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the retry helpers
name, workers = os.environ["SWEEPER_STUDY_NAME"], set(sys.argv[1:])
budget = yaml.safe_load(open(os.environ["SWEEPER_STUDY_FILE"]))["trials"]
trials = optuna.load_study(study_name=name, storage=os.environ["SWEEPER_STORAGE"]).get_trials(deepcopy=False)
state = collections.Counter(t.state.name for t in trials)
finished = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
problems = []
if len(finished) != budget:
    problems.append(f"{len(finished)} finished trials, budget {budget}")
for s in ("RUNNING", "WAITING"):
    if state[s]:
        problems.append(f"{state[s]} trial(s) left {s}")
root = {t.number: (Retry.retry_history(t) or [t.number])[0] for t in trials}
twice = [r for r, n in collections.Counter(root[t.number] for t in finished).items() if n > 1]
if twice:
    problems.append(f"trials finished twice (original and retry): {twice}")
# a retry's failed_trial is its chain's first trial; retry_history lists every trial it retries (a retry of a retry)
retried = {n for t in trials for n in Retry.retry_history(t)}
surplus = [t.number for t in trials if t.state == S.FAIL and "budget" in str(t.user_attrs.get("end_reason", ""))]
lost = [t.number for t in trials if t.state == S.FAIL and t.number not in retried and t.number not in surplus]
if lost:
    problems.append(f"failed trials never retried: {lost}")
if surplus:
    problems.append(f"surplus trials created past the budget: {surplus}")
by_params = collections.defaultdict(set)  # a retry repeats its original's parameters; nothing else may
for t in trials:
    if t.params:
        by_params[tuple(sorted(t.params.items()))].add(root[t.number])
repeated = sorted(sorted(r) for r in by_params.values() if len(r) > 1)
if repeated:
    problems.append(f"workers trained identical parameters in separate trials: {repeated}")
hosts = collections.Counter(t.user_attrs.get("host") for t in finished)
if set(t.user_attrs.get("host") for t in trials if t.state != S.WAITING) != workers:
    problems.append(f"trials came from {set(hosts)}, worker containers are {workers}")
client = MlflowClient()
exp = client.get_experiment_by_name(name)
runs = client.search_runs([exp.experiment_id], "tags.`sweeper.role` = 'trial'", max_results=1000) if exp else []
by_number = collections.defaultdict(list)
for r in runs:
    by_number[int(r.data.tags["optuna.trial_number"])].append(r)
missing = [t.number for t in finished if [r.info.status for r in by_number[t.number]] not in (["FINISHED"], ["KILLED"])]
if missing:
    problems.append(f"finished trials without exactly one ended MLflow run: {missing}")
print(f"trials: {dict(state)}; finished {len(finished)} = budget {budget}; failed {state['FAIL']}: "
      f"{len(retried)} retried (same parameters), {len(surplus)} untrained surplus")
print(f"finished trials per worker container: {dict(hosts)}")
print(f"MLflow: {len(runs)} trial runs; {len(finished) - len(missing)} of the {len(finished)} finished trials have their run")
# the end of the study, once: its test score and best model, the refit, the study run ended
from sweeper.study.record import StudyRecord

record = StudyRecord.open(name, os.environ["SWEEPER_STORAGE"])
best = record.best_trial()
test, refit, end = record.result("test", best), record.result("refit", best), record.end_state()
if (end or {}).get("state") != "done":
    problems.append(f"the end steps are not done: {end}")
if not test or test.get("model") != "selected":
    problems.append(f"no test score of the selected network: {test}")
if record.spec.refit and not refit:
    problems.append("no refit result")
parent = record.parent_run_id
models = sorted((m.name, str(m.status), m.tags.get("sweeper.trial")) for m in client.search_logged_models(
    [exp.experiment_id], filter_string=f"source_run_id = '{parent}'"))
want = [("best_model", "READY", str(best.number))] + ([("refit_model", "READY", str(best.number))] if record.spec.refit else [])
if models != want:
    problems.append(f"logged models of the study run: {models}, not {want}")
for metric in ["best.test_accuracy"] + (["refit.test_accuracy"] if record.spec.refit else []):
    if len(client.get_metric_history(parent, metric)) != 1:
        problems.append(f"{metric} logged {len(client.get_metric_history(parent, metric))} times, not once")
if client.get_run(parent).info.status != "FINISHED":
    problems.append(f"the study run is {client.get_run(parent).info.status}, not FINISHED")
acc = lambda r: f"{r['test_accuracy']:.4f}" if r else "none"
print(f"end: best trial #{best.number} ({best.value:.4f}), test accuracy {acc(test)} ({(test or {}).get('model')} "
      f"network), refit {acc(refit)}; logged models {models}")
if problems:
    sys.exit("FAILED: " + "; ".join(problems))
PY
log "what the stack leaves behind, as 'docker compose run --rm create status $name' prints it:"
"${compose[@]}" run --rm --no-deps -T create status "$name" 2>/dev/null | sed 's/^/    /'
log "checks passed: budget exact, no surplus, no repeated parameters, nothing lost, duplicated or left RUNNING, every trial in MLflow, killed and stopped trials resumed from their checkpoints (none left), the study ended once (test score, best_model, refit), no password on a command line"
