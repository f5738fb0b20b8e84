#!/usr/bin/env bash
# Start (or reuse) a bridge-less Docker engine for the container test suite.
#
# Idempotent: if `docker version` already answers, that daemon is reused and no
# second one is started (a bridge-less dockerd deletes an existing docker0).
# Otherwise docker.io is installed from Debian when missing (package scripts are
# kept from starting a bridged daemon), then dockerd is started without bridge or
# iptables and we wait, bounded, until it answers. Containers must then use
# network_mode=host; all traffic stays on 127.0.0.1.
#
# Env: APPTSYNC_DOCKERD_LOG (default /var/log/apptsync-dockerd.log),
#      APPTSYNC_DOCKERD_WAIT seconds (default 60).
set -euo pipefail

LOG="${APPTSYNC_DOCKERD_LOG:-/var/log/apptsync-dockerd.log}"
WAIT="${APPTSYNC_DOCKERD_WAIT:-60}"
PIDFILE=/var/run/docker.pid
POLICY=/usr/sbin/policy-rc.d

say() { echo "engine.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

engine_up() { timeout 10 docker version >/dev/null 2>&1; }

start=$(date +%s.%N)
elapsed() { awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}'; }

if engine_up; then
    say "docker engine already answers; reusing it ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    die "no docker engine answers and starting one needs root (run as root, or start dockerd yourself)"
fi

command -v docker >/dev/null 2>&1 || say "no docker client on PATH yet; docker.io will provide one"

if ! command -v dockerd >/dev/null 2>&1; then
    say "installing docker.io (daemon) from Debian"
    # Keep package scripts from starting a (bridged) daemon: a policy-rc.d that
    # exits 101. An existing one is backed up and restored afterwards.
    backup=""
    if [ -e "$POLICY" ]; then
        backup=$(mktemp /tmp/apptsync-policy-rc.d.XXXXXX)
        cp -p "$POLICY" "$backup"
    fi
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod +x "$POLICY"
    cleanup_policy() {
        if [ -n "$backup" ]; then mv -f "$backup" "$POLICY"; backup=""; else rm -f "$POLICY"; fi
    }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null \
        || die "apt-get install docker.io failed"
    cleanup_policy
    trap - EXIT
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd is not on PATH"
    say "docker.io installed after $(elapsed) s"
fi

# A package script or an earlier run may have left a daemon that is starting;
# give it a moment before deciding to start our own.
if pgrep -x dockerd >/dev/null 2>&1; then
    say "a dockerd process exists but does not answer yet; waiting for it"
    for _ in $(seq 1 "$WAIT"); do
        if engine_up; then say "engine up after $(elapsed) s (existing dockerd)"; exit 0; fi
        pgrep -x dockerd >/dev/null 2>&1 || break
        sleep 1
    done
    if pgrep -x dockerd >/dev/null 2>&1; then
        die "a dockerd process (pid $(pgrep -x dockerd | tr '\n' ' ')) runs but does not answer; see its log or stop it"
    fi
fi

# Stale pid files from a daemon that was killed (a session's end kills every process).
# A pid in them may since have been reused by an unrelated process: only a live
# process with the right name counts.
is_live() { [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null || true)" = "$2" ]; }
if [ -f "$PIDFILE" ]; then
    oldpid=$(cat "$PIDFILE" 2>/dev/null || true)
    if is_live "$oldpid" dockerd; then
        die "$PIDFILE names a live dockerd (pid $oldpid) that does not answer"
    fi
    say "removing stale $PIDFILE (pid ${oldpid:-?})"
    rm -f "$PIDFILE"
fi
# dockerd reuses a containerd whose pid file names a live process, and would hang
# on an unrelated one.
CPIDFILE=/var/run/docker/containerd/containerd.pid
if [ -f "$CPIDFILE" ] && ! is_live "$(cat "$CPIDFILE" 2>/dev/null || true)" containerd; then
    say "removing stale $CPIDFILE"
    rm -f "$CPIDFILE"
fi

mkdir -p "$(dirname "$LOG")"
say "starting dockerd (no bridge, no iptables); log: $LOG"
{
    echo "==== $(date -Is) engine.sh starting dockerd"
} >>"$LOG"
setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
    >>"$LOG" 2>&1 </dev/null &
dpid=$!
disown "$dpid" 2>/dev/null || true

deadline=$(( $(date +%s) + WAIT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    if engine_up; then
        say "engine up after $(elapsed) s (dockerd pid $dpid, server $(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        exit 0
    fi
    if ! kill -0 "$dpid" 2>/dev/null; then
        say "dockerd exited early; last log lines:"
        tail -n 30 "$LOG" >&2 || true
        die "dockerd failed to start"
    fi
    sleep 0.5
done
say "last log lines:"
tail -n 30 "$LOG" >&2 || true
die "docker engine did not answer within ${WAIT}s (dockerd pid $dpid left running; see $LOG)"
