#!/bin/sh
# Pins every dependency, transitive ones included, with the sha256 of every file of each
# pinned release: requirements.lock for the app (from pyproject.toml, with its build
# backend) and rootfs/requirements.lock for the wheels preinstalled in every sandbox (from
# rootfs/requirements.txt). The image installs from them with --require-hashes; `make lock`
# rewrites them after a dependency changes. Wheels only, as they are installed.
#
# Resolved by the Python both the image and the rootfs run, Debian bookworm's python3
# (3.11.2: some releases need a later 3.11), in a venv of its own with a pinned pip-tools;
# and from the index alone: a machine's own pip configuration (local wheel folders,
# constraints) must not leak into the locks.
set -eu

PIP_TOOLS="pip-tools==7.4.1"
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv=build/lock-venv
if [ ! -x "$venv/bin/pip-compile" ]; then
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$PIP_TOOLS"
fi
compile() {
    env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
        CUSTOM_COMPILE_COMMAND="make lock" \
        "$venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
        --no-emit-index-url --no-emit-find-links --pip-args "--only-binary=:all:" "$@"
}
compile --all-build-deps -o requirements.lock pyproject.toml
compile -o rootfs/requirements.lock rootfs/requirements.txt
echo "lock: requirements.lock and rootfs/requirements.lock written"
