"""The checked-in protobuf bindings match protos/ (run `make protos` after editing a .proto)."""

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("protos_generate", REPO / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_generated_bindings_are_fresh() -> None:
    generator = load_generator()
    with tempfile.TemporaryDirectory() as scratch:
        fresh = generator.generate(Path(scratch))
        checked_in = generator.BINDINGS_ROOT / generator.PACKAGE_DIR
        assert sorted(p.name for p in fresh) == sorted(p.name for p in checked_in.iterdir() if p.is_file())
        stale = [p.name for p in fresh if p.read_bytes() != (checked_in / p.name).read_bytes()]
        assert not stale, f"stale generated files {stale}: run `make protos`"
