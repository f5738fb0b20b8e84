"""Settings: every variable is documented in the README's configuration table."""

from pathlib import Path

import pytest

from apptsync.shared.settings import DatabaseSettings, all_settings_fields

pytestmark = pytest.mark.unit
README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_lists_every_environment_variable_with_its_default() -> None:
    text = README.read_text()
    missing = [name for name, _default, _text in all_settings_fields() if f"`{name}`" not in text]
    assert not missing, f"add to the README configuration table: {missing}"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPTSYNC_DATABASE_POOL_MAX_SIZE", "3")
    assert DatabaseSettings().pool_max_size == 3
