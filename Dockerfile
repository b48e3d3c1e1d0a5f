# The service, the pinned runsc and the sandbox rootfs in one image.
#
# runsc creates namespaces, mounts and cgroups for every sandbox, so this container must run as
# root with more privilege than a default container has: `docker run --privileged -p 8080:8080`,
# or on Cloud Run in the second-generation execution environment (gen2); gen1 cannot run runsc.
# `make image` builds it with docker or podman (docs/cloud-run.md deploys it).
#
# Python packages are installed from lock files that pin every dependency with its hashes
# (`make lock`). Where wheelhouse/ holds the locked wheels (scripts/wheelhouse.sh, run by
# `make image`) they come from there and the build reaches no package index; in a plain
# clone (Cloud Build) the folders hold only a README and pip uses the index, hashes checked.

# Stage 1: the sandbox root filesystem, built by the same recipe (and identity) as `make rootfs`.
FROM debian:bookworm AS rootfs
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      debootstrap python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/build-rootfs.sh scripts/
COPY rootfs/requirements.lock rootfs/
COPY wheelhouse/rootfs/ /wheels/
RUN if ls /wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && scripts/build-rootfs.sh /opt/sandbox/rootfs

# Stage 2: the service.
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
# tini is PID 1: it forwards signals and reaps the runsc helpers that outlive their parent.
COPY scripts/install-runsc.sh /tmp/install-runsc.sh
RUN echo 'APT::Install-Recommends "false";' >/etc/apt/apt.conf.d/90no-recommends \
 && apt-get update \
 && apt-get install -y -q python3 python3-venv tini \
 && /tmp/install-runsc.sh \
 && rm -rf /var/lib/apt/lists/* /tmp/install-runsc.sh

COPY --from=rootfs /opt/sandbox/rootfs /opt/sandbox/rootfs
COPY --from=rootfs /opt/sandbox/rootfs.identity /opt/sandbox/rootfs.identity

# The dependencies first (a layer that only a new lock rebuilds), then the app without them.
WORKDIR /opt/sandbox/app
COPY requirements.lock ./
COPY wheelhouse/app/ /tmp/wheels/
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheels; fi \
 && python3 -m venv /opt/sandbox/venv \
 && /opt/sandbox/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      --require-hashes -r requirements.lock \
 && rm -rf /tmp/wheels
COPY pyproject.toml ./
COPY sandbox ./sandbox
RUN /opt/sandbox/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      --no-index --no-deps --no-build-isolation . \
 && rm -rf build ./*.egg-info \
 && install -d -m 0700 /var/lib/gvisor-sandbox/state

# Serving beyond loopback needs SANDBOX_API_TOKENS (bearer tokens) at run time, or
# SANDBOX_ALLOW_UNAUTHENTICATED=true where something in front (Cloud Run IAM) authenticates
# every request: without either the server refuses to start.
ENV SANDBOX_HOST=0.0.0.0 \
    SANDBOX_ROOTFS_DIR=/opt/sandbox/rootfs \
    SANDBOX_STATE_DIR=/var/lib/gvisor-sandbox/state \
    SANDBOX_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
# Cloud Run says which port to serve on in $PORT; elsewhere SANDBOX_PORT or 8080.
CMD ["/bin/sh", "-c", "SANDBOX_PORT=\"${PORT:-${SANDBOX_PORT:-8080}}\" exec /opt/sandbox/venv/bin/python -m sandbox"]
