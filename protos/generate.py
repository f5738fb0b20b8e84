"""Generates the Python bindings of protos/ into services/shared (the `apptsync.v1` package).

Run `make protos` after editing a .proto file; tests/unit/test_generated_protos.py fails while the
checked-in bindings are stale.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
BINDINGS_ROOT = REPO_ROOT / "services" / "shared"
PACKAGE_DIR = Path("apptsync") / "v1"
# Generated files that carry no content for message-only protos are not kept.
_EMPTY_GRPC_MODULES = {
    "pages_pb2_grpc.py", "pages_pb2_grpc.pyi", "change_events_pb2_grpc.py", "change_events_pb2_grpc.pyi",
}


def generate(out_root: Path) -> list[Path]:
    """Writes the bindings under out_root/apptsync/v1 and returns the generated files, sorted.

    Raises subprocess.CalledProcessError when protoc rejects a .proto file.
    """
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
            f"--python_out={out_root}", f"--mypy_out={out_root}",
            f"--grpc_python_out={out_root}", f"--mypy_grpc_out={out_root}",
            *protos,
        ],
        check=True, cwd=PROTO_ROOT, env=env, capture_output=True,
    )
    package = out_root / PACKAGE_DIR
    for name in _EMPTY_GRPC_MODULES:
        (package / name).unlink(missing_ok=True)
    (package / "__init__.py").write_text('"""Generated protobuf bindings of protos/apptsync/v1 (do not edit)."""\n')
    (package / "py.typed").write_text("")
    return sorted(p for p in package.iterdir() if p.is_file())


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        generated = generate(Path(scratch))
        target = BINDINGS_ROOT / PACKAGE_DIR
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for path in generated:
            shutil.copy2(path, target / path.name)
    print(f"wrote {len(generated)} files to {target.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
