#!/bin/sh
# Installs the pinned runsc from Debian's bookworm-backports (Debian 12's own is too old:
# DESIGN.md section 5) and debootstrap. Backports is enabled by adding the suite to the
# machine's existing Debian source, so no mirror address is written anywhere.
set -eu

RUNSC_VERSION="${RUNSC_VERSION:-0.0~20240729.0-4~bpo12+2}"

have_pinned_runsc() {
    [ "$(dpkg-query -W -f='${Version}' runsc 2>/dev/null || true)" = "$RUNSC_VERSION" ]
}

if have_pinned_runsc && command -v debootstrap >/dev/null; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-runsc: run as root (runsc and debootstrap are installed with apt-get)" >&2
    exit 1
fi

sources=/etc/apt/sources.list.d/debian.sources
if [ -f "$sources" ]; then
    if ! grep -q 'bookworm-backports' "$sources"; then
        sed -i '0,/^Suites: bookworm bookworm-updates$/s//Suites: bookworm bookworm-updates bookworm-backports/' "$sources"
    fi
elif [ -f /etc/apt/sources.list ] && ! grep -q 'bookworm-backports' /etc/apt/sources.list; then
    mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list)
    echo "deb $mirror bookworm-backports main" >> /etc/apt/sources.list
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q debootstrap
apt-get install -y -q -t bookworm-backports "runsc=$RUNSC_VERSION"
runsc --version
