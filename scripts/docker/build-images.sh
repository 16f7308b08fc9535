#!/usr/bin/env bash
# Build fleetdeck's two images from compose/ without a registry:
#   fleetdeck/sampleapp:dev  from compose/Dockerfile.sampleapp (context compose/)
#   fleetdeck/fleetdeck:dev  from compose/Dockerfile.fleetdeck (context: the repository root)
# Each context is streamed as a filtered tar, so .venv, data/ and run/ never reach the daemon, and the host's CA
# bundle is added to it for pip (TLS-intercepting proxies). Builds use --network host (no bridge exists here).
# The base image comes from ensure-base-image.sh. Docker's layer cache makes a rebuild with no change take seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DOCKER=/usr/bin/docker
CA_DIR=/etc/ssl/certs
CA_FILE=ca-certificates.crt
SAMPLEAPP_TAG="${FLEETDECK_SAMPLEAPP_IMAGE:-fleetdeck/sampleapp:dev}"
FLEETDECK_TAG="${FLEETDECK_IMAGE:-fleetdeck/fleetdeck:dev}"
EXCLUDES=(--exclude=.venv --exclude=.git --exclude=data --exclude=run --exclude=__pycache__ --exclude='*.pyc'
    --exclude=node_modules --exclude=.pytest_cache --exclude=.ruff_cache)

log() { echo "build-images: $*" >&2; }

ca_args=()
[[ -f $CA_DIR/$CA_FILE ]] && ca_args=(-C "$CA_DIR" "$CA_FILE")

build() { # tag dockerfile-in-context context-dir
    local tag=$1 dockerfile=$2 context=$3
    log "building $tag from $dockerfile"
    local started=$SECONDS
    tar -c "${EXCLUDES[@]}" -C "$context" . "${ca_args[@]}" |
        "$DOCKER" build --quiet --network host -t "$tag" -f "$dockerfile" - >/dev/null
    log "built $tag in $((SECONDS - started)) s"
}

want=("${@:-sampleapp fleetdeck}")
for name in ${want[*]}; do
    case $name in
    sampleapp) build "$SAMPLEAPP_TAG" Dockerfile.sampleapp "$ROOT/compose" ;;
    fleetdeck) build "$FLEETDECK_TAG" compose/Dockerfile.fleetdeck "$ROOT" ;;
    *) log "unknown image '$name' (sampleapp | fleetdeck)"; exit 2 ;;
    esac
done
