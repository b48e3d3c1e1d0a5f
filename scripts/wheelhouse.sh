#!/bin/sh
# Downloads, on the host, every wheel the image build installs: wheelhouse/app from
# requirements.lock, wheelhouse/rootfs from rootfs/requirements.lock, each file checked
# against the locks' sha256. The Dockerfile installs from these folders when they hold
# wheels, so the build needs no package index (none may be reachable from inside a build,
# or pip there may not trust the network's certificates). The folders are made anew each
# time, so no wheel of an older lock lingers; pip's cache keeps a repeat quick.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
python="${PIP_PYTHON:-$here/.venv/bin/python}"

# For the Python of the image and of the rootfs, Debian bookworm's 3.11.2, on x86_64: the
# platforms scripts/build-rootfs.sh installs for.
download() { # download LOCK FOLDER
    fresh="$2.new"
    rm -rf "$fresh"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --require-hashes --only-binary=:all: --implementation cp --python-version 3.11.2 \
        --abi cp311 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        --dest "$fresh" -r "$1"
    rm -f "$2"/*.whl
    mv "$fresh"/*.whl "$2"/
    rm -rf "$fresh"
    echo "wheelhouse: $(ls "$2"/*.whl | wc -l) wheels in $2 ($(du -sh "$2" | cut -f1))"
}

download "$here/requirements.lock" "$here/wheelhouse/app"
download "$here/rootfs/requirements.lock" "$here/wheelhouse/rootfs"
