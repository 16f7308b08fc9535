#!/usr/bin/env bash
# Build the base image our Dockerfiles start FROM when no registry can be reached: a minimal Debian bookworm made
# with debootstrap (python3 + venv, nginx, curl, CA certificates), imported with `docker import`.
# It is tagged fleetdeck/base:bookworm and python:3.11-slim-bookworm (the FROM of the shipped Dockerfiles; Debian 12's
# python3 is 3.11 too), so `docker-compose build` works unchanged offline. Skipped when the tag already exists.
set -euo pipefail

TAG="${FLEETDECK_BASE_IMAGE:-fleetdeck/base:bookworm}"
ALIASES=(python:3.11-slim-bookworm)
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER=/usr/bin/docker
INCLUDE=python3,python3-venv,python3-pip,ca-certificates,nginx,curl,procps,tini

log() { echo "ensure-base-image: $*" >&2; }

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1 && [[ ${1:-} != --force ]]; then
    for alias in "${ALIASES[@]}"; do
        "$DOCKER" image inspect "$alias" >/dev/null 2>&1 || "$DOCKER" tag "$TAG" "$alias"
    done
    log "$TAG exists; nothing to build (pass --force to rebuild)"
    exit 0
fi

command -v debootstrap >/dev/null || { apt-get update -q >/dev/null; apt-get install -y -q debootstrap >/dev/null; }

ROOTFS="$(mktemp -d /var/tmp/fleetdeck-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
log "debootstrap bookworm into $ROOTFS (this takes a minute or two)"
debootstrap --variant=minbase --include="$INCLUDE" bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
    tail -n 30 "$ROOTFS.log" >&2
    exit 1
}
rm -f "$ROOTFS.log"

# Trim what a container never needs: apt lists, docs, man pages, locales, caches.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
# python:3.11-slim puts `python` on PATH; scripts that say `python` should work on both bases
ln -sf python3 "$ROOTFS/usr/bin/python"
# the nginx package's default site listens on :80; our images bring their own config
rm -f "$ROOTFS/etc/nginx/sites-enabled/default"

log "importing as $TAG"
tar -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TAG" >/dev/null
for alias in "${ALIASES[@]}"; do
    "$DOCKER" tag "$TAG" "$alias"
done
log "built $TAG ($("$DOCKER" image inspect --format '{{.Size}}' "$TAG") bytes)"
