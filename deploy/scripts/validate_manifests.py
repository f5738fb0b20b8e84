"""Schema-validate rendered Kubernetes manifests (run with deploy/.venv's python).

    validate_manifests.py --kubernetes-version 1.31.0 --schemas deploy/schemas --out DIR RENDERED.yaml...

Every document of every RENDERED.yaml is checked:
* built-in kinds against the OpenAPI schemas of the pinned Kubernetes version (kubernetes-validate,
  strict: unknown fields are errors);
* custom resources against a JSON schema in --schemas named `<kind>-<group>-<version>.json` (lower
  case), e.g. kafkatopic-kafka.strimzi.io-v1beta2.json; a custom resource without one is an error,
  never a silent skip.

Writes DIR/<name>.json (the documents as a JSON list, for tests that assert on them without YAML)
and DIR/<name>.schema.json (counts and errors). Exit status 0 when every document is valid, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml


def _schema_file(schemas: Path, api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return schemas / f"{kind.lower()}-{group}-{version}.json"


def _is_builtin(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    # Core ("v1") and the *.k8s.io / unqualified built-in groups (apps, batch, policy, autoscaling).
    return group == "" or "." not in group or group.endswith(".k8s.io")


def validate_document(doc: dict[str, Any], version: str, schemas: Path) -> str | None:
    """None when `doc` is valid, else a one-line reason."""
    api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
    if not api_version or not kind:
        return "document has no apiVersion or kind"
    if _is_builtin(api_version):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return f"{exc.message} at {'/'.join(str(p) for p in exc.path)}"
        except kubernetes_validate.SchemaNotFoundError as exc:
            return str(exc)
        return None
    schema_path = _schema_file(schemas, api_version, kind)
    if not schema_path.is_file():
        return f"custom resource {api_version} {kind} has no schema at {schema_path}"
    try:
        jsonschema.validate(doc, json.loads(schema_path.read_text("utf-8")))
    except jsonschema.ValidationError as exc:
        return f"{exc.message} at {'/'.join(str(p) for p in exc.path)} ({schema_path.name})"
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--schemas", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("rendered", nargs="+", type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    for rendered in args.rendered:
        docs = [d for d in yaml.safe_load_all(rendered.read_text("utf-8")) if d]
        errors = []
        for doc in docs:
            reason = validate_document(doc, args.kubernetes_version, args.schemas)
            if reason is not None:
                meta = doc.get("metadata") or {}
                errors.append(f"{doc.get('kind')}/{meta.get('name')}: {reason}")
        name = rendered.stem
        (args.out / f"{name}.json").write_text(json.dumps(docs, indent=1, sort_keys=True), "utf-8")
        report = {"overlay": name, "kubernetes_version": args.kubernetes_version,
                  "documents": len(docs), "errors": errors}
        (args.out / f"{name}.schema.json").write_text(json.dumps(report, indent=1), "utf-8")
        print(f"schema {name}: {len(docs)} documents, {len(errors)} invalid (Kubernetes {args.kubernetes_version})")
        for error in errors:
            print(f"  INVALID {error}")
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
