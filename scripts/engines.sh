#!/usr/bin/env bash
# Install (when missing) and start the container engines the tests use: the Docker engine (dockerd)
# and Podman's Docker-compatible API service, then import the busybox test image into both.
# Idempotent: an engine that already answers is left alone. Needs root (as CI runs).
#
#   scripts/engines.sh            docker + podman
#   ENGINES=docker scripts/engines.sh
#
# Facts behind it: ../shared/ENVIRONMENT.md (no registry reachable; podman needs ulimits).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINES="${ENGINES:-docker podman}"
LOGDIR="${LOGDIR:-/var/log}"
PODMAN_SOCK="${PODMAN_SOCK:-/run/podman/podman.sock}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/services/executor/tests/images/podman-containers.conf}"

need=()
command -v busybox >/dev/null && ! ldd "$(command -v busybox)" >/dev/null 2>&1 || need+=(busybox-static)
[[ " $ENGINES " == *" docker "* ]] && ! command -v dockerd >/dev/null && need+=(docker.io)
[[ " $ENGINES " == *" podman "* ]] && ! command -v podman >/dev/null && need+=(podman)
# podman's --init (the backend runs every job under an init) needs catatonit, only a Recommends
[[ " $ENGINES " == *" podman "* ]] && [ ! -x /usr/libexec/podman/catatonit ] && need+=(catatonit)
command -v debootstrap >/dev/null || need+=(debootstrap)  # base images without a registry
command -v docker-compose >/dev/null || need+=(docker-compose)  # `config -q` checks the compose file
if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

wait_for() {  # wait_for SECONDS WHAT CMD...: poll until CMD succeeds
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "$what did not come up in time" >&2
            return 1
        fi
        sleep 0.5
    done
}

if [[ " $ENGINES " == *" docker "* ]]; then
    if ! docker info >/dev/null 2>&1; then
        echo "== starting dockerd (log: $LOGDIR/dockerd.log)"
        (cd / && exec nohup dockerd >"$LOGDIR/dockerd.log" 2>&1) &  # from /, as podman below
        wait_for 60 dockerd docker info
    fi
    echo "docker: $(docker version --format '{{.Server.Version}}')"
fi

if [[ " $ENGINES " == *" podman "* ]]; then
    if ! curl -sf --unix-socket "$PODMAN_SOCK" http://d/_ping >/dev/null 2>&1; then
        echo "== starting podman system service on $PODMAN_SOCK (log: $LOGDIR/podman.log)"
        mkdir -p "$(dirname "$PODMAN_SOCK")"
        # started from /: conmon inherits the service's working directory and fails every container
        # ("Failed to get working directory") once the clone it was started from is removed
        (cd / && exec nohup podman system service --time=0 "unix://$PODMAN_SOCK" >"$LOGDIR/podman.log" 2>&1) &
        wait_for 60 "podman service" curl -sf --unix-socket "$PODMAN_SOCK" http://d/_ping
    fi
    echo "podman: $(podman version --format '{{.Server.Version}}' 2>/dev/null || podman --version)"
fi

# shellcheck disable=SC2086
bash services/executor/tests/images/build_busybox.sh $ENGINES
