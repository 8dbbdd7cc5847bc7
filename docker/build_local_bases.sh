#!/bin/bash
# Build the base images locally, for machines that cannot pull from Docker Hub:
#   sweeper-base:bookworm    a Debian bookworm root file system (debootstrap + docker import)
#   sweeper-postgres:local   PostgreSQL on it, a stand-in for postgres:16 (docker/local/postgres.Dockerfile)
# Needs root, debootstrap and a Debian mirror. Usage: docker/build_local_bases.sh [MIRROR]
# BUILD_DOCKER=/usr/bin/docker: a docker CLI that can use BuildKit without the buildx plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
mirror=${1:-http://deb.debian.org/debian}
if ! docker image inspect sweeper-base:bookworm >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
  tar -C "$rootfs" -c . | docker import - sweeper-base:bookworm
  rm -rf "$rootfs"
fi
# --network host: the daemon may run without a default bridge (dockerd --bridge=none)
DOCKER_BUILDKIT=1 "${BUILD_DOCKER:-docker}" build --network host -f docker/local/postgres.Dockerfile -t sweeper-postgres:local .
