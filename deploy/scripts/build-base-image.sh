#!/usr/bin/env bash
# Build the local Python base image `apptsync-base/python:3.11-bookworm` without a registry.
#
# Debian bookworm minbase + python3 (3.11) + python3-venv + ca-certificates, made by debootstrap
# from a Debian mirror and `docker import`ed. It stands in for python:3.11-slim-bookworm on machines
# that cannot pull from a registry; the Dockerfile takes either through its BASE_IMAGE build arg.
#
# Idempotent: when `docker image inspect` finds the image, nothing is built.
# Needs root (debootstrap) and a running engine (tests/containers/engine.sh).
# Env:
#   APPTSYNC_BASE_IMAGE     image name (default apptsync-base/python:3.11-bookworm)
#   APPTSYNC_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   APPTSYNC_IMAGE_CACHE    optional directory of `docker save` tarballs (load before building, save after)
set -euo pipefail

IMAGE="${APPTSYNC_BASE_IMAGE:-apptsync-base/python:3.11-bookworm}"
MIRROR="${APPTSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${APPTSYNC_IMAGE_CACHE:-}"

say() { echo "build-base-image.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN{printf "%.1f", e-s}'; }

T0=$(now)
timeout 10 docker version >/dev/null 2>&1 \
    || die "docker engine does not answer; run: bash tests/containers/engine.sh"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE present ($(since "$T0") s)"
    exit 0
fi

cache_file=""
if [ -n "$CACHE" ]; then
    cache_file="$CACHE/$(echo "$IMAGE" | tr '/:' '__').tar"
    if [ -s "$cache_file" ] && docker load -i "$cache_file" >/dev/null && docker image inspect "$IMAGE" >/dev/null 2>&1; then
        say "$IMAGE loaded from $cache_file in $(since "$T0") s"
        exit 0
    fi
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } \
        || die "apt-get install debootstrap failed"
fi

WORK=""
cleanup() {
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        # A failed debootstrap may leave /proc and friends mounted inside the rootfs.
        for m in $(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
            umount -l "$m" 2>/dev/null || true
        done
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT
WORK=$(mktemp -d /tmp/apptsync-base-image.XXXXXX)
ROOT="$WORK/rootfs"

say "debootstrap bookworm minbase + python3 from $MIRROR (about a minute)"
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi
[ -x "$ROOT/usr/bin/python3" ] || die "python3 missing after debootstrap"
version=$(chroot "$ROOT" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$version" = "3.11" ] || die "expected Python 3.11 in bookworm, found $version"
T_BOOTSTRAP=$(since "$T0")

# Trim what an image never needs: apt caches and lists, docs, man pages, locales, logs.
rm -rf "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
    "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/debootstrap
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
find "$ROOT/usr/lib/python3.11" -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
mkdir -p "$ROOT/tmp" && chmod 1777 "$ROOT/tmp"

tar --numeric-owner -C "$ROOT" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["python3"]' \
    -m "apptsync base: Debian bookworm minbase + python3 $version (debootstrap)" - "$IMAGE" >/dev/null
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "$IMAGE was not created"
say "$IMAGE built in $(since "$T0") s (debootstrap $T_BOOTSTRAP s; $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"

if [ -n "$cache_file" ]; then
    mkdir -p "$CACHE"
    docker save -o "$cache_file.part" "$IMAGE" && mv -f "$cache_file.part" "$cache_file"
    say "saved $IMAGE to $cache_file"
fi
