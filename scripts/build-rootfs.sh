#!/bin/sh
# Builds the sandbox root filesystem: Debian bookworm (minbase) with Python, a non-root user
# and the preinstalled wheels of rootfs/requirements.txt, as pinned (with their hashes) in
# rootfs/requirements.lock. The build is keyed by a hash of this recipe and the lock; an
# unchanged recipe is not rebuilt. The identity is written beside the folder
# (DIR.identity), where the service reads it and records it with every checkpoint.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
dest="${1:-${SANDBOX_ROOTFS_DIR:-/var/lib/gvisor-sandbox/rootfs}}"
lock="$here/rootfs/requirements.lock"
identity=$(cat "$0" "$lock" | sha256sum | cut -c1-16)

# Up to date: complete (an interrupted swap or a half-removed folder is not) and of this recipe.
up_to_date() {
    [ -x "$dest/usr/bin/python3" ] && [ "$(cat "$dest.identity" 2>/dev/null || true)" = "$identity" ]
}

if up_to_date; then
    echo "rootfs $dest is up to date ($identity)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "build-rootfs: run as root (debootstrap needs it)" >&2
    exit 1
fi
command -v debootstrap >/dev/null || "$here/scripts/install-runsc.sh"

mkdir -p "$(dirname "$dest")"
# One build at a time: a second caller waits, then finds the rootfs up to date.
exec 9>"$dest.lock"
flock 9
if up_to_date; then
    echo "rootfs $dest is up to date ($identity)"
    exit 0
fi
work="$dest.building"
rm -rf "$work"
echo "building rootfs $dest ($identity), about two minutes"
debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
    bookworm "$work" >"$work.log" 2>&1 || { tail -20 "$work.log" >&2; exit 1; }

# debootstrap copies the build machine's identity into the rootfs: blank it.
: >"$work/etc/hostname"
: >"$work/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' >"$work/etc/hosts"

chroot "$work" useradd --uid 1000 --user-group --home-dir /workspace --no-create-home \
    --shell /bin/bash sandbox
install -d -o 1000 -g 1000 -m 0755 "$work/workspace"
# Every mount point a sandbox uses exists beforehand: runsc would otherwise make it here.
install -d -m 0755 "$work/sandbox" "$work/sandbox/input" "$work/sandbox/packages/0" \
    "$work/sandbox/agent"
# Where the egress proxy's socket is mounted (sandboxes with an allow-list): closed to all.
install -d -m 0700 "$work/sandbox/egress"

# Wheels only, installed by the host's pip for the sandbox's Python: no package code runs.
# PIP_PYTHON is the project's venv when make calls it; any pip that takes --target will do.
# Every file must match a hash in the lock. PIP_NO_INDEX and PIP_FIND_LINKS, when set (the
# image build sets them to its wheelhouse), are pip's own.
site="$work/usr/local/lib/python3.11/dist-packages"
python_version=$(chroot "$work" python3 -c 'import platform; print(platform.python_version())')
"${PIP_PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --ignore-installed --no-compile \
    --require-hashes --only-binary=:all: --implementation cp --abi cp311 \
    --python-version "$python_version" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --target "$site" -r "$lock"
rm -rf "$site/bin"
chroot "$work" python3 -m compileall -q -j 0 /usr/local/lib/python3.11/dist-packages >/dev/null
# matplotlib builds its font cache on first use; build it once here, where it is read later.
install -d -o 1000 -g 1000 "$work/usr/local/share/matplotlib"
chroot "$work" env MPLCONFIGDIR=/usr/local/share/matplotlib MPLBACKEND=Agg \
    python3 -c 'import matplotlib.pyplot' >/dev/null 2>&1
chown -R 1000:1000 "$work/usr/local/share/matplotlib"

# Output goes to pipes the service reads. Line buffering shows it as it comes and keeps what
# was printed before a kill, while the buffered writer still finishes a long write that the
# pipe takes only in parts (PYTHONUNBUFFERED would drop the rest: CPython issue 86210).
cat >"$work/etc/python3.11/sitecustomize.py" <<'PYTHON'
import sys

for _stream in (sys.stdout, sys.stderr):
    try:
        _stream.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
PYTHON

rm -rf "$work/var/cache/apt/archives"/*.deb "$work/var/lib/apt/lists"/* "$work/root/.cache"
rm -f "$work.log"

# The swap: the identity goes first and comes back last, so that an interrupted build is
# rebuilt next time and the service is not ready meanwhile; the folder moves by renames.
rm -f "$dest.identity"
rm -rf "$dest.old"
if [ -e "$dest" ]; then mv "$dest" "$dest.old"; fi
mv "$work" "$dest"
echo "$identity" >"$dest.identity"
rm -rf "$dest.old"
du -sh "$dest"
