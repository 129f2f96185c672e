#!/usr/bin/env bash
# Make sure a Docker engine is installed and answering, for the container
# sandboxes and their tests.
#
# The engine is started without any network of its own (no bridge, no
# iptables, no forwarding, no masquerading): sandboxes always run with
# `--network none`, and images are built offline, so the engine never needs
# one. Safe to re-run: it installs only what is missing and starts dockerd
# only when `docker info` does not answer. The engine is left running.
set -euo pipefail

LOG=/var/log/jupyter-cma-dockerd.log
WAIT_SECONDS=60

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "docker-engine.sh: $1 needs root; run: sudo $0" >&2
    exit 1
  fi
}

# --- packages -----------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
installed=""
if ((${#missing[@]})); then
  # De-duplicate (docker.io may be listed twice).
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  need_root "installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
  installed="installed ${missing[*]}; "
fi

# --- engine -------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  echo "docker-engine.sh: ${installed}engine already running ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi

need_root "starting dockerd"
# A stale pidfile from an engine that died would make dockerd refuse to start.
if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid
fi

setsid nohup dockerd \
  --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
  >>"$LOG" 2>&1 </dev/null &

for ((i = 0; i < WAIT_SECONDS; i++)); do
  if docker info >/dev/null 2>&1; then
    echo "docker-engine.sh: ${installed}started dockerd ($(docker version --format '{{.Server.Version}}'), no bridge network; log $LOG)"
    exit 0
  fi
  sleep 1
done

echo "docker-engine.sh: dockerd did not answer 'docker info' within ${WAIT_SECONDS}s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
