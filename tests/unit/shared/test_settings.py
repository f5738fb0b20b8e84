"""Settings: every variable is documented in the README's configuration table."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from apptsync.shared.settings import DatabaseSettings, KafkaSettings, all_settings_fields

pytestmark = pytest.mark.unit
README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_lists_every_environment_variable_with_its_default() -> None:
    text = README.read_text()
    missing = [name for name, _default, _text in all_settings_fields() if f"`{name}`" not in text]
    assert not missing, f"add to the README configuration table: {missing}"


def test_settings_come_from_the_environment_they_are_given() -> None:
    settings = DatabaseSettings.from_environment({"APPTSYNC_DATABASE_POOL_MAX_SIZE": "3", "OTHER": "x"})

    assert settings.pool_max_size == 3
    assert settings.pool_min_size == 1


def test_only_from_environment_reads_an_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's environment reaches settings only where the CLI passes it in."""
    monkeypatch.setenv("APPTSYNC_DATABASE_POOL_MAX_SIZE", "3")

    assert DatabaseSettings().pool_max_size == 8
    assert DatabaseSettings(pool_max_size=5).pool_max_size == 5
    assert DatabaseSettings.from_environment({}).pool_max_size == 8


def test_a_malformed_value_is_refused() -> None:
    with pytest.raises(ValidationError):
        KafkaSettings.from_environment({"APPTSYNC_KAFKA_TOPIC_PARTITIONS": "many"})
