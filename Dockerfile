# One image for every apptsync process: `apptsync gateway|fetcher|writer|migrate|sync-all|prune|...`
# (the services only: no simulator, no embedded PostgreSQL or broker).
#
# BASE_IMAGE must provide python3 (3.11) with the venv module on PATH; the build and final stages
# use the same base so the venv's interpreter symlink resolves. Defaults to the public slim image;
# without a registry, build `apptsync-base/python:3.11-bookworm` with deploy/scripts/build-base-image.sh.
# Works with the legacy builder (no BuildKit-only syntax) and needs network for pip:
#   DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE_IMAGE=... -t apptsync:dev .
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build
# PEM certificates to trust in addition to the base's bundle, for build machines whose egress goes
# through a TLS-inspecting proxy (build-image.sh passes the host's local CAs). Public certificates,
# build stage only: nothing of it reaches the runtime image.
ARG BUILD_EXTRA_CA_CERTS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_CONFIG_FILE=/build/pip.conf
RUN mkdir -p /build \
    && if [ -n "$BUILD_EXTRA_CA_CERTS" ]; then \
         cat /etc/ssl/certs/ca-certificates.crt > /build/ca-bundle.crt \
         && printf '%s\n' "$BUILD_EXTRA_CA_CERTS" >> /build/ca-bundle.crt \
         && printf '[global]\ncert = /build/ca-bundle.crt\n' > /build/pip.conf; \
       else : > /build/pip.conf; fi \
    && python3 -m venv /opt/apptsync
# Dependencies first (their own layer, reused while only our code changes).
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /src/requirements.txt \
    && /opt/apptsync/bin/python -m pip install --quiet --only-binary=:all: -r /src/requirements.txt
COPY README.md /src/README.md
COPY services /src/services
# The product only: .dockerignore keeps services/simulator (a development and test tool, like the
# embedded PostgreSQL and broker of the `embedded` extra, which the requirements above leave out) out of
# the context, so the wheel has no apptsync.simulator; `apptsync simulator` then says what to install.
# A regular (non-editable) install; pip compiles the .pyc files here, so the read-only runtime never has to.
RUN /opt/apptsync/bin/python -m pip install --quiet --no-deps /src \
    && /opt/apptsync/bin/python -m pip uninstall --quiet --yes pip \
    && /opt/apptsync/bin/apptsync --help >/dev/null

# ---------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="apptsync" \
      org.opencontainers.image.description="Imports appointments from scheduling providers into PostgreSQL"
# uid/gid >= 10000 so they never collide with a host user (restricted Pod Security wants non-root).
RUN groupadd --system --gid 10001 apptsync \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin apptsync
COPY --from=build /opt/apptsync /opt/apptsync
# Read-only root filesystem: no bytecode writes, HOME and temp files in /tmp (an emptyDir in a pod).
ENV PATH=/opt/apptsync/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["apptsync"]
CMD ["--help"]
