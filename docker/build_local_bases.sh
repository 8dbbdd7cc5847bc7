#!/bin/bash
# Build the local base image, for machines that cannot pull from Docker Hub:
#   sweeper-base:bookworm   a minimal Debian bookworm root file system (debootstrap --variant=minbase + docker
#                           import) with Python 3.11 (venv) and PostgreSQL 15: the one base of the worker /
#                           MLflow image (docker/Dockerfile) and of the PostgreSQL stand-in (docker/local/).
# Needs root, debootstrap and a Debian mirror; about a minute on 2 cores. Skipped when the image exists
# (REBUILD=1 builds it again). Usage: docker/build_local_bases.sh [MIRROR]
# scripts/docker_setup.sh calls it; docker/compose.local.yaml builds the images on top of it.
set -euo pipefail
cd "$(dirname "$0")/.."
mirror=${1:-http://deb.debian.org/debian}
image=${SWEEPER_BASE_IMAGE:-sweeper-base:bookworm}
packages=python3,python3-venv,ca-certificates,postgresql

if [ -z "${REBUILD:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image: already built"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install debootstrap" >&2; exit 2; }
start=$SECONDS
rootfs=$(mktemp -d /var/tmp/sweeper-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -20 "$rootfs.log"; echo "debootstrap failed (log: $rootfs.log)" >&2; exit 1; }
rm -f "$rootfs.log"
# What an image does not need: package caches and lists, docs, translations, the cluster Debian's
# postinst made (the stand-in initialises its own in $PGDATA).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
  "$rootfs"/usr/share/man "$rootfs"/usr/share/locale "$rootfs"/var/lib/postgresql/* "$rootfs"/etc/postgresql/*
tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' -m "debootstrap --variant=minbase bookworm + $packages" \
  - "$image" >/dev/null
echo "$image: built in $((SECONDS - start))s"
