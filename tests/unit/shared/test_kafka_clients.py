"""Kafka client configuration, error translation and header helpers (no broker)."""

from __future__ import annotations

import aiokafka.errors
import pytest

from apptsync.shared.errors import BrokerUnavailableError, PermanentError
from apptsync.shared.kafka import (
    apptsync_topics,
    consumer_config,
    header_text,
    is_retriable_kafka_error,
    kafka_errors,
    producer_config,
    text_headers,
    translate_kafka_error,
)
from apptsync.shared.settings import KafkaSettings

pytestmark = pytest.mark.unit


def settings(**overrides: object) -> KafkaSettings:
    return KafkaSettings.model_validate({"bootstrap_servers": "127.0.0.1:1", **overrides})


def test_producer_waits_for_all_replicas_and_compresses_as_configured() -> None:
    config = producer_config(settings(compression_type="zstd", enable_idempotence=True), client_id="p")

    assert config["acks"] == "all"
    assert config["compression_type"] == "zstd"
    assert config["enable_idempotence"] is True
    assert 0 < config["linger_ms"] <= 20
    assert producer_config(settings(compression_type="none"), client_id="p")["compression_type"] is None


def test_consumer_commits_manually_and_groups_start_at_the_earliest_offset() -> None:
    grouped = consumer_config(settings(session_timeout_ms=1000, heartbeat_interval_ms=200),
                              group_id="g", client_id="c")
    ungrouped = consumer_config(settings(), group_id=None, client_id="c")

    assert grouped["enable_auto_commit"] is False
    assert grouped["auto_offset_reset"] == "earliest"
    assert (grouped["session_timeout_ms"], grouped["heartbeat_interval_ms"]) == (1000, 200)
    assert grouped["isolation_level"] == "read_committed"
    assert ungrouped["group_id"] is None
    assert ungrouped["auto_offset_reset"] == "latest"
    assert grouped["group_instance_id"] is None  # dynamic membership unless asked


def test_a_static_member_names_its_instance_and_needs_a_group() -> None:
    static = consumer_config(settings(), group_id="g", client_id="c", group_instance_id="writer-7f9c")
    assert static["group_instance_id"] == "writer-7f9c"
    with pytest.raises(ValueError, match="needs a group id"):
        consumer_config(settings(), group_id=None, client_id="c", group_instance_id="writer-7f9c")


def test_default_group_timing_is_the_shortest_a_stock_kafka_broker_accepts() -> None:
    fields = KafkaSettings.model_fields  # the declared defaults, whatever this shell's environment says
    assert fields["session_timeout_ms"].default == 6_000  # group.min.session.timeout.ms of Apache Kafka
    assert fields["heartbeat_interval_ms"].default * 3 <= fields["session_timeout_ms"].default
    assert fields["writer_group_instance_id"].default == ""


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (aiokafka.errors.KafkaConnectionError("down"), True),
        (aiokafka.errors.KafkaTimeoutError(), True),
        (aiokafka.errors.RequestTimedOutError(), True),
        (aiokafka.errors.NotLeaderForPartitionError(), True),
        (ConnectionResetError(), True),
        (aiokafka.errors.MessageSizeTooLargeError(), False),
        (aiokafka.errors.UnknownError(), True),
        (aiokafka.errors.UnsupportedVersionError(), False),
    ],
)
def test_retriable_kafka_errors_become_broker_unavailable(exc: BaseException, retriable: bool) -> None:
    translated = translate_kafka_error(exc)

    assert is_retriable_kafka_error(exc) is retriable
    assert isinstance(translated, BrokerUnavailableError if retriable else PermanentError)
    assert translated.retriable is retriable


async def test_kafka_errors_translates_inside_the_block() -> None:
    with pytest.raises(BrokerUnavailableError) as caught:
        async with kafka_errors():
            raise aiokafka.errors.KafkaConnectionError("broker gone")

    assert isinstance(caught.value.__cause__, aiokafka.errors.KafkaConnectionError)


def test_headers_round_trip_as_text() -> None:
    headers = text_headers({"apptsync-job-id": "j-1", "apptsync-page-no": 3})

    assert headers == [("apptsync-job-id", b"j-1"), ("apptsync-page-no", b"3")]
    assert header_text(headers, "apptsync-page-no") == "3"
    assert header_text(headers, "missing") is None
    assert header_text(None, "apptsync-job-id") is None
    assert header_text([("x", b"\xff")], "x") == "\ufffd"


def test_apptsync_topics_are_pages_results_dead_letters_job_events_and_change_events() -> None:
    chosen = settings(pages_topic="p", page_results_topic="r", dead_letter_topic="d", job_events_topic="e",
                      change_events_topic="c")

    assert apptsync_topics(chosen) == ("p", "r", "d", "e", "c")


def test_downstream_producers_compress_with_a_codec_every_client_has() -> None:
    # kafkajs (and other mainstream clients) read gzip without plugins, not zstd: the topics other
    # teams read are gzip by default while the pages stay zstd.
    chosen = settings(compression_type="zstd")
    assert producer_config(chosen, client_id="p")["compression_type"] == "zstd"
    assert producer_config(chosen, client_id="p", downstream=True)["compression_type"] == "gzip"
    plain = settings(compression_type="zstd", downstream_compression_type="none")
    assert producer_config(plain, client_id="p", downstream=True)["compression_type"] is None
