#!/usr/bin/env bash
# A ~2 MB image with a shell for the container backend tests, built without any registry:
# Debian's static busybox in a rootfs of its own, imported into each engine given.
#
#   build_busybox.sh [docker] [podman]      (default: docker)
#
# Needs `apt-get install -y busybox-static`. Tag: trainyard-test/busybox:1 (override with IMAGE=).
set -euo pipefail

IMAGE="${IMAGE:-trainyard-test/busybox:1}"
ENGINES=("$@")
[ ${#ENGINES[@]} -eq 0 ] && ENGINES=(docker)

BUSYBOX="${BUSYBOX:-/bin/busybox}"
[ -x "$BUSYBOX" ] || { echo "$BUSYBOX not found: apt-get install -y busybox-static" >&2; exit 1; }
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "$BUSYBOX is dynamically linked: apt-get install -y busybox-static" >&2
    exit 1
fi

ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
mkdir -p "$ROOTFS"/{bin,tmp,etc,proc,sys,dev,trainyard/outputs}
chmod 1777 "$ROOTFS/tmp"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
for applet in $("$ROOTFS/bin/busybox" --list); do
    [ -e "$ROOTFS/bin/$applet" ] || ln -s busybox "$ROOTFS/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOTFS/etc/passwd"
echo "root:x:0:" >"$ROOTFS/etc/group"

for engine in "${ENGINES[@]}"; do
    tar -C "$ROOTFS" -c . | "$engine" import \
        -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
    echo "$engine: $IMAGE ($("$engine" image inspect --format '{{.Size}}' "$IMAGE") bytes)"
done
