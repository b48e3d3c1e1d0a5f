#!/bin/sh
# Makes the Debian base images the Dockerfile starts from, where no container registry can
# be reached: one debootstrap tree of bookworm (minbase, the same suite as the registry's
# images), imported into the engine's local store under every name given
# (e.g. debian:bookworm debian:bookworm-slim). Names already in the store are left alone.
#   ENGINE=podman scripts/base-image.sh debian:bookworm debian:bookworm-slim
set -eu

engine="${ENGINE:-podman}"
missing=""
for name in "$@"; do
    if ! "$engine" image inspect "$name" >/dev/null 2>&1; then
        missing="$missing $name"
    fi
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "base-image: run as root (debootstrap needs it)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || "$(dirname "$0")/install-runsc.sh"

tree=$(mktemp -d /var/tmp/base-image.XXXXXX)
trap 'rm -rf "$tree"' EXIT
echo "base-image: debootstrap of bookworm for$missing, about a minute"
debootstrap --variant=minbase bookworm "$tree/root" >"$tree/log" 2>&1 \
    || { tail -20 "$tree/log" >&2; exit 1; }
# As in the registry's images: no build machine's identity, no package caches.
: >"$tree/root/etc/hostname"
: >"$tree/root/etc/resolv.conf"
rm -rf "$tree/root/var/cache/apt/archives"/*.deb "$tree/root/var/lib/apt/lists"/*
for name in $missing; do
    tar -C "$tree/root" --numeric-owner -c . | "$engine" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$name" >/dev/null
    echo "base-image: $name imported"
done
