#!/usr/bin/env bash
# Installs the Debian packages a fleetdeck target needs when they are missing.
#   scripts/ensure-system-packages.sh demo         -> nginx
#   scripts/ensure-system-packages.sh demo-express -> nginx, nodejs, npm (the Express sample app)
#   scripts/ensure-system-packages.sh test         -> nginx, chromium, wrk, docker.io, docker-compose, debootstrap,
#                                                     nodejs + npm (Node BullMQ, the Express app, PM2), poppler-utils,
#                                                     prometheus (bench_collectors.py compares against it)
# As root on Debian/Ubuntu it runs apt-get; elsewhere it names what is missing and exits non-zero.
set -euo pipefail
purpose="${1:-demo}"

# package name -> a file that proves it is installed
declare -A proof=(
  [nginx-light]=/usr/sbin/nginx
  [chromium]=/usr/bin/chromium
  [wrk]=/usr/bin/wrk
  [docker.io]=/usr/sbin/dockerd
  [docker-compose]=/usr/bin/docker-compose
  [debootstrap]=/usr/sbin/debootstrap
  [poppler-utils]=/usr/bin/pdftotext
  [nodejs]=/usr/bin/node
  [npm]=/usr/bin/npm
  [prometheus]=/usr/bin/prometheus
)
case "$purpose" in
  demo) wanted=(nginx-light) ;;
  demo-express) wanted=(nginx-light nodejs npm) ;;
  test) wanted=(nginx-light chromium wrk docker.io docker-compose debootstrap poppler-utils nodejs npm prometheus) ;;
  *) echo "usage: $0 demo|demo-express|test" >&2; exit 2 ;;
esac

missing=()
for package in "${wanted[@]}"; do
  [ -e "${proof[$package]}" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "fleetdeck needs these system packages for '$purpose': ${missing[*]}" >&2
  echo "Install them with your package manager (on Debian: sudo apt-get install ${missing[*]}) and run again." >&2
  exit 1
fi

echo "Installing system packages for '$purpose': ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the system nginx on port 80 after installing it; fleetdeck runs its own master instead.
if [ -e /run/nginx.pid ] && [[ " ${missing[*]} " == *" nginx-light "* ]]; then
  /usr/sbin/nginx -s quit 2>/dev/null || true
fi
# Debian's prometheus package enables a system service listening on every interface (:9090); the benchmark runs
# its own instance on loopback only, so the system one is stopped and disabled.
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
