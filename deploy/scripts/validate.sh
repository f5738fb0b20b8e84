#!/usr/bin/env bash
# Validate deploy/k8s: render every overlay with kustomize, schema-validate the result against a
# pinned Kubernetes version, and scan it with checkov (zero failed checks; a skip needs a
# `checkov.io/skipN: CHECK_ID=reason` annotation on the resource).
#
#   bash deploy/scripts/validate.sh            # every overlay under deploy/k8s/overlays
#   bash deploy/scripts/validate.sh dev        # only these overlays
#
# Idempotent; installs what it needs:
#   * kubectl (its built-in kustomize, v5+): used from PATH (this machine kind has it); otherwise
#     Debian's kubernetes-client is tried, and refused if its kustomize is too old for the overlays.
#   * checkov and kubernetes-validate, pinned in deploy/requirements-validate.txt, into their own
#     virtualenv deploy/.venv (gitignored) so their pins never fight the app's .venv.
# Custom resources (Strimzi KafkaTopic) are validated against the JSON schemas in deploy/schemas.
# Output: deploy/.rendered/<overlay>.yaml, <overlay>.json (documents as JSON), <overlay>.schema.json,
# <overlay>.checkov.json. Exit 0 only when every overlay renders, validates and passes checkov.
# Env: APPTSYNC_KUBERNETES_VERSION (default 1.31.0), PYTHON (for the venv; default python3),
#      APPTSYNC_VALIDATE_OUT (output directory instead of deploy/.rendered; tests use their own).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY="$(cd "$HERE/.." && pwd)"
K8S_VERSION="${APPTSYNC_KUBERNETES_VERSION:-1.31.0}"
VENV="$DEPLOY/.venv"
OUT="${APPTSYNC_VALIDATE_OUT:-$DEPLOY/.rendered}"
REQUIREMENTS="$DEPLOY/requirements-validate.txt"

say() { echo "validate.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN{printf "%.1f", e-s}'; }
T0=$(now)

# ------------------------------------------------------------------ kubectl (kustomize)
kustomize_major() { kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'; }
if ! command -v kubectl >/dev/null 2>&1; then
    say "no kubectl on PATH; trying Debian's kubernetes-client"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null; } \
        || die "cannot install kubectl (apt-get install kubernetes-client failed)"
fi
major="$(kustomize_major)"
[ -n "$major" ] && [ "$major" -ge 5 ] \
    || die "kubectl's built-in kustomize is v${major:-?}; the overlays need v5+ (replacements, labels): install a current kubectl"
say "kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: //p'), kustomize v$major"

# ------------------------------------------------------------------ validation tools
stamp="$VENV/.installed-$(sha1sum "$REQUIREMENTS" | cut -c1-12)"
mkdir -p "$(dirname "$VENV")"
# Parallel runs (several pytest sessions) must not pip-install into the same venv at once.
exec 9>"$DEPLOY/.venv.lock"
flock -w 900 9 || die "timed out waiting for another validate.sh to install the tools"
if [ ! -f "$stamp" ]; then
    T=$(now)
    say "installing checkov and kubernetes-validate into $VENV"
    [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" \
        || die "pip install -r $REQUIREMENTS failed"
    rm -f "$VENV"/.installed-* && touch "$stamp"
    say "tools installed in $(since "$T") s"
fi

flock -u 9

# ------------------------------------------------------------------ render
if [ "$#" -gt 0 ]; then overlays=("$@"); else
    overlays=()
    for d in "$DEPLOY"/k8s/overlays/*/; do overlays+=("$(basename "$d")"); done
fi
mkdir -p "$OUT" && rm -f "$OUT"/*.yaml "$OUT"/*.json "$OUT"/*.log
T=$(now)
rendered=()
for overlay in "${overlays[@]}"; do
    [ -f "$DEPLOY/k8s/overlays/$overlay/kustomization.yaml" ] || die "no overlay $overlay"
    kubectl kustomize "$DEPLOY/k8s/overlays/$overlay" >"$OUT/$overlay.yaml" \
        || die "kustomize failed for overlay $overlay"
    rendered+=("$OUT/$overlay.yaml")
done
say "rendered ${overlays[*]} in $(since "$T") s"

# ------------------------------------------------------------------ schemas
T=$(now)
status=0
"$VENV/bin/python" "$HERE/validate_manifests.py" --kubernetes-version "$K8S_VERSION" \
    --schemas "$DEPLOY/schemas" --out "$OUT" "${rendered[@]}" || status=1
say "schema validation in $(since "$T") s"

# ------------------------------------------------------------------ checkov
# --file, not --directory: checkov skips directories whose name starts with a dot (.rendered).
# --skip-download: no call to the vendor's platform (offline, and nothing leaves the machine).
T=$(now)
for overlay in "${overlays[@]}"; do
    "$VENV/bin/checkov" --file "$OUT/$overlay.yaml" --framework kubernetes --skip-download --quiet \
        --compact --output json >"$OUT/$overlay.checkov.json" 2>"$OUT/$overlay.checkov.log" || true
    if ! "$VENV/bin/python" - "$OUT/$overlay.checkov.json" "$overlay" <<'PY'
import json, sys
path, overlay = sys.argv[1], sys.argv[2]
try:
    report = json.load(open(path))
except ValueError:
    sys.exit(f"validate.sh: checkov {overlay}: no JSON report (see {path[:-5]}.log)")
reports = report if isinstance(report, list) else [report]
summary = {"passed": 0, "failed": 0, "skipped": 0, "resource_count": 0}
failed = []
for r in reports:
    for key in summary:
        summary[key] += int((r.get("summary") or r).get(key, 0))
    failed += (r.get("results") or {}).get("failed_checks", [])
print(f"validate.sh: checkov {overlay}: {summary['resource_count']} resources, passed {summary['passed']}, "
      f"failed {summary['failed']}, skipped {summary['skipped']} (with a reason annotation)", file=sys.stderr)
for check in failed:
    print(f"  FAILED {check['check_id']} {check['check_name']}: {check['resource']}", file=sys.stderr)
sys.exit(1 if summary["failed"] or not summary["resource_count"] else 0)
PY
    then
        status=1
    fi
done
say "checkov in $(since "$T") s"

if [ "$status" -ne 0 ]; then
    die "validation failed after $(since "$T0") s (details above; files in $OUT)"
fi
say "OK: ${overlays[*]} valid for Kubernetes $K8S_VERSION, checkov clean, in $(since "$T0") s"
