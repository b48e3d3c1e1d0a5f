#!/bin/bash
# Builds the Dockerfile into gvisor-sandbox:inputs-<hash>, where the hash covers everything
# the build reads (Dockerfile, locks, scripts, app): an image of unchanged inputs is not
# built again. Also tagged gvisor-sandbox:latest. `make image` calls it.
#   scripts/image.sh        build (or find) the image; its tag is the last line printed
#   scripts/image.sh tag    print the tag of the current inputs, build nothing
# ENGINE: docker or podman; by default docker where its daemon answers, else podman.
# Where the base images cannot be pulled (no registry), they are made by
# scripts/base-image.sh; the wheels always come from a wheelhouse made on the host.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
IMAGE="${IMAGE:-gvisor-sandbox}"

inputs_hash() {
    { printf '%s\n' Dockerfile .dockerignore requirements.lock rootfs/requirements.lock \
          pyproject.toml scripts/build-rootfs.sh scripts/install-runsc.sh
      find sandbox -type f ! -path '*/__pycache__/*' ! -name '*.pyc'
    } | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
}

tag="$IMAGE:inputs-$(inputs_hash)"
if [ "${1:-}" = tag ]; then
    echo "$tag"
    exit 0
fi

if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        ENGINE=docker
    else
        ENGINE=podman
    fi
fi
export ENGINE
if ! command -v "$ENGINE" >/dev/null; then
    echo "image: $ENGINE is not installed (make image installs podman as root)" >&2
    exit 1
fi

if "$ENGINE" image inspect "$tag" >/dev/null 2>&1; then
    "$ENGINE" tag "$tag" "$IMAGE:latest"
    echo "image: $tag is up to date (built before from the same inputs)"
    echo "$tag"
    exit 0
fi

# The base images: from the local store, else pulled, else made from a debootstrap tree.
unpulled=()
for base in $(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile | sort -u); do
    "$ENGINE" image inspect "$base" >/dev/null 2>&1 && continue
    "$ENGINE" pull -q "$base" >/dev/null 2>&1 || unpulled+=("$base")
done
if [ ${#unpulled[@]} -gt 0 ]; then
    echo "image: no registry gave ${unpulled[*]}; making them from debootstrap"
    scripts/base-image.sh "${unpulled[@]}"
fi

scripts/wheelhouse.sh

build=(build --tag "$tag" --file Dockerfile)
if [ "$ENGINE" = podman ]; then
    # debootstrap makes device nodes (Docker grants CAP_MKNOD by default, buildah does not);
    # crun fails on hybrid cgroup hosts, runc does not.
    build+=(--cap-add=CAP_MKNOD --runtime runc)
fi
started=$(date +%s)
"$ENGINE" "${build[@]}" .
seconds=$(( $(date +%s) - started ))
if [ "$IMAGE:inputs-$(inputs_hash)" != "$tag" ]; then
    # A file changed while the build read it: that tag would promise what it may not hold.
    "$ENGINE" rmi "$tag" >/dev/null
    echo "image: the inputs changed during the build; run it again" >&2
    exit 1
fi
"$ENGINE" tag "$tag" "$IMAGE:latest"

# Older builds of this image go (their layers stay as long as a newer build shares them).
for old in $("$ENGINE" images --format '{{.Repository}}:{{.Tag}}' | grep -E "(^|/)$IMAGE:inputs-" || true); do
    [ "${old##*/}" = "$tag" ] || "$ENGINE" rmi "$old" >/dev/null 2>&1 || true
done

size=$("$ENGINE" image inspect --format '{{.Size}}' "$tag")
echo "image: built $tag with $ENGINE in ${seconds}s, $(( size / 1000000 )) MB"
echo "$tag"
