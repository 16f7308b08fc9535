#!/usr/bin/env bash
# Stop the dockerd that ensure-dockerd.sh started (by its recorded PID), and only that one.
# A daemon that was already running before ensure-dockerd.sh is left alone: no PID file was written for it.
set -euo pipefail

PIDFILE="${FLEETDECK_DOCKERD_PIDFILE:-/run/fleetdeck-dockerd.pid}"

if [[ ! -f $PIDFILE ]]; then
    echo "stop-dockerd: no $PIDFILE, we started no dockerd; nothing to stop" >&2
    exit 0
fi
pid="$(cat "$PIDFILE")"
if kill -0 "$pid" 2>/dev/null; then
    # SIGTERM lets dockerd stop its containers and the containerd it manages before it exits
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop-dockerd: dockerd $pid ignored SIGTERM for 30 s; sending SIGKILL" >&2
        kill -KILL "$pid"
    fi
fi
rm -f "$PIDFILE"
echo "stop-dockerd: stopped dockerd $pid" >&2
