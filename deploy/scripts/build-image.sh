#!/usr/bin/env bash
# Build the apptsync image (all services, entrypoint `apptsync`) and, when needed, its local base.
#
#   bash deploy/scripts/build-image.sh            # -> apptsync:dev
#
# Base image: BASE_IMAGE when set; else the local apptsync-base/python:3.11-bookworm, built by
# build-base-image.sh when no registry can be pulled from (this machine); on a machine with a
# registry set BASE_IMAGE=python:3.11-slim-bookworm. The legacy builder is used when buildx is
# absent; pip needs the network during the build, hence --network host.
# Idempotent: the base is built once; docker's layer cache makes an unchanged rebuild take seconds.
# Prints the time of each step.
# Env: APPTSYNC_IMAGE (default apptsync:dev), BASE_IMAGE, APPTSYNC_BASE_IMAGE (local base name),
#      APPTSYNC_BUILD_EXTRA_CA_FILES (PEM files pip trusts in the build; default: the host's
#      /usr/local/share/ca-certificates/*.crt).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
IMAGE="${APPTSYNC_IMAGE:-apptsync:dev}"
LOCAL_BASE="${APPTSYNC_BASE_IMAGE:-apptsync-base/python:3.11-bookworm}"

say() { echo "build-image.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN{printf "%.1f", e-s}'; }

T0=$(now)
timeout 10 docker version >/dev/null 2>&1 \
    || die "docker engine does not answer; run: bash tests/containers/engine.sh"

if [ -z "${BASE_IMAGE:-}" ]; then
    APPTSYNC_BASE_IMAGE="$LOCAL_BASE" bash "$HERE/build-base-image.sh"
    BASE_IMAGE="$LOCAL_BASE"
fi
say "base $BASE_IMAGE ready after $(since "$T0") s"

T1=$(now)
if docker buildx version >/dev/null 2>&1; then
    builder=(docker buildx build --load)
else
    builder=(env DOCKER_BUILDKIT=0 docker build)
fi
# Behind a TLS-inspecting proxy pip in the build must trust the proxy's CA too: pass the host's
# locally added CAs (public certificates; they stay in the build stage).
extra_ca=""
for f in ${APPTSYNC_BUILD_EXTRA_CA_FILES:-/usr/local/share/ca-certificates/*.crt}; do
    [ -f "$f" ] && extra_ca+="$(cat "$f")"$'\n'
done
[ -n "$extra_ca" ] && say "trusting $(grep -c 'BEGIN CERTIFICATE' <<<"$extra_ca") extra CA certificate(s) during the build"
previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log=$(mktemp /tmp/apptsync-image-build.XXXXXX.log)
if ! "${builder[@]}" --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "BUILD_EXTRA_CA_CERTS=$extra_ca" -t "$IMAGE" "$REPO" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "docker build failed (full log: $log)"
fi
rm -f "$log"
# Each rebuild after a code change adds a ~200 MB runtime layer; drop the image it replaced (left
# alone when a container still uses it).
current=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    docker rmi "$previous" >/dev/null 2>&1 && say "removed the previous $IMAGE (${previous:7:12})" || true
fi
size=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')
say "$IMAGE built in $(since "$T1") s ($size); total $(since "$T0") s"
