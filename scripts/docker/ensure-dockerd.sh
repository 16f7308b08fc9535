#!/usr/bin/env bash
# Make sure a Docker daemon answers on /var/run/docker.sock, installing Debian's docker.io, docker-compose and
# debootstrap when they are missing. When no daemon runs we start one ourselves and record its PID in
# $FLEETDECK_DOCKERD_PIDFILE so stop-dockerd.sh stops exactly that process (and nothing else) afterwards.
#
# The daemon runs with --bridge=none --iptables=false: every container here uses host networking, so no bridge,
# no NAT rules and no private-range addresses are created on this machine.
set -euo pipefail

PIDFILE="${FLEETDECK_DOCKERD_PIDFILE:-/run/fleetdeck-dockerd.pid}"
LOGFILE="${FLEETDECK_DOCKERD_LOG:-/var/log/fleetdeck-dockerd.log}"
SOCKET=/var/run/docker.sock
# the Debian client; /usr/local/bin may hold a newer static client that also works, but this one matches dockerd
DOCKER=/usr/bin/docker

log() { echo "ensure-dockerd: $*" >&2; }

install_packages() {
    local missing=()
    [[ -x /usr/sbin/dockerd ]] || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

daemon_answers() { [[ -S $SOCKET ]] && "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_packages

if daemon_answers; then
    log "dockerd already answers on $SOCKET"
    exit 0
fi

# a stale socket or pid file from a daemon that died would stop the new one from starting
if [[ -e /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
fi
[[ -S $SOCKET ]] && rm -f "$SOCKET"

log "starting dockerd (log: $LOGFILE)"
mkdir -p "$(dirname "$LOGFILE")"
# setsid: the daemon must not die with the test process group that started it; we stop it by PID instead
setsid /usr/sbin/dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --host "unix://$SOCKET" >>"$LOGFILE" 2>&1 </dev/null &
echo $! >"$PIDFILE"

for _ in $(seq 1 120); do
    if daemon_answers; then
        log "dockerd $("$DOCKER" version --format '{{.Server.Version}}') is up (pid $(cat "$PIDFILE"))"
        exit 0
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        log "dockerd exited during start-up; last lines of $LOGFILE:"
        tail -n 20 "$LOGFILE" >&2
        rm -f "$PIDFILE"
        exit 1
    fi
    sleep 0.5
done
log "dockerd did not answer within 60 s; last lines of $LOGFILE:"
tail -n 20 "$LOGFILE" >&2
exit 1
