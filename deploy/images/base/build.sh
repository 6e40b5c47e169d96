#!/usr/bin/env bash
# Build trainyard/python-base:bookworm: Debian bookworm with python3 (3.11), tini and CA
# certificates, trusting this machine's extra CAs (/usr/local/share/ca-certificates/*.crt) so that
# pip/uv/apt inside `docker build` work behind a TLS-inspecting proxy.
#
#   deploy/images/base/build.sh [--force]
#
# Two ways, the first that works:
#   1. pull debian:bookworm-slim and add python3 etc. with apt (deploy/images/base/Dockerfile);
#   2. no registry reachable: debootstrap a minbase rootfs from the Debian mirror this machine
#      uses (/etc/apt/sources.list*) and `docker import` it (~65 s).
# Skips everything when the image already exists (unless --force).
set -euo pipefail
cd "$(dirname "$0")"

IMAGE="${BASE_IMAGE:-trainyard/python-base:bookworm}"
SUITE=bookworm
PACKAGES=python3,tini,ca-certificates
DOCKER="${DOCKER:-docker}"

if [ "${1:-}" != "--force" ] && $DOCKER image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base: $IMAGE exists, not rebuilt (--force rebuilds)"
    exit 0
fi

ctx="$(mktemp -d)"
rootfs=""
cleanup() {
    rm -rf "$ctx"
    [ -z "$rootfs" ] || rm -rf "$rootfs"
}
trap cleanup EXIT
mkdir -p "$ctx/ca"
cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true

debian_mirror() {  # the Debian mirror this machine's apt uses (active *.list / *.sources files only)
    local files=() m
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    m="$(grep -hE '^\s*(URIs:|deb )' "${files[@]}" 2>/dev/null | grep -oE 'https?://[^ ]+' \
        | grep -E '/debian/?$' | head -n1 || true)"
    echo "${m:-http://deb.debian.org/debian}"
}

if timeout 60 $DOCKER pull -q "debian:${SUITE}-slim" >/dev/null 2>&1; then
    echo "base: building $IMAGE from debian:${SUITE}-slim"
    cp Dockerfile "$ctx/Dockerfile"
    $DOCKER build -q -t "$IMAGE" --build-arg "DEBIAN_IMAGE=debian:${SUITE}-slim" "$ctx" >/dev/null
else
    mirror="$(debian_mirror)"
    echo "base: no registry reachable; debootstrap $SUITE from $mirror (about a minute)"
    command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$ctx/debootstrap.log" 2>&1 \
        || { tail -n 30 "$ctx/debootstrap.log" >&2; exit 1; }
    cp "$ctx"/ca/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    # an image is no place for apt's lists, caches, docs or man pages
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/tmp/*
    # the mirror apt-get uses in `docker build` (debootstrap wrote one line for the main suite)
    printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$SUITE" "$mirror" "$SUITE" \
        >"$rootfs/etc/apt/sources.list"
    tar -C "$rootfs" -c . | $DOCKER import \
        -c 'ENV LANG=C.UTF-8' \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        -c 'LABEL org.opencontainers.image.title=trainyard-python-base' \
        -c "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase: python3, tini, CA certificates\"" \
        -c 'CMD ["python3"]' - "$IMAGE" >/dev/null
fi
echo "base: $IMAGE $($DOCKER image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
