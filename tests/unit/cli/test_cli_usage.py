"""The client commands' pure parts that a user meets first: moments they type, TLS settings, exit
codes, list-jobs rows and progress lines without a terminal."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from apptsync.cli.client import job_list_line, parse_settings, progress_line
from apptsync.cli.exits import (
    EXIT_AUTH,
    EXIT_CODES,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OTHER,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    exit_code_for,
)
from apptsync.cli.moments import parse_moment
from apptsync.cli.transport import TlsFiles, channel_credentials, tls_files
from apptsync.shared.errors import InvalidArgumentError
from apptsync.v1 import imports_pb2

pytestmark = pytest.mark.unit
README = Path(__file__).resolve().parents[3] / "README.md"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01Z", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01+00:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01+02:00", datetime(2025, 12, 31, 22, tzinfo=UTC)),
        ("2026-01-01T09:30Z", datetime(2026, 1, 1, 9, 30, tzinfo=UTC)),
        ("2026-01-01T09:30:15z", datetime(2026, 1, 1, 9, 30, 15, tzinfo=UTC)),
        ("2026-01-01 09:30:15.5+00:00", datetime(2026, 1, 1, 9, 30, 15, 500_000, tzinfo=UTC)),
        ("2026-01-01T09:30-0530", datetime(2026, 1, 1, 15, 0, tzinfo=UTC)),
        ("2026-01-01T09:30+01", datetime(2026, 1, 1, 8, 30, tzinfo=UTC)),
        (" 2026-06-30T23:59:59.999999+00:00 ", datetime(2026, 6, 30, 23, 59, 59, 999_999, tzinfo=UTC)),
    ],
)
def test_dates_and_datetimes_with_an_offset_or_z_are_moments(text: str, expected: datetime) -> None:
    moment = parse_moment(text, "--window-start")
    assert moment == expected
    assert moment.utcoffset() is not None


def test_an_offset_is_kept_not_converted() -> None:
    assert parse_moment("2026-01-01T09:30+02:00", "--window-end").utcoffset() == timedelta(hours=2)
    assert parse_moment("2026-01-01", "--window-end").tzinfo == UTC


@pytest.mark.parametrize("text", ["2026-01-01T09:00", "2026-01-01 09:00:00", "2026-01-01T09:00:00.25"])
def test_a_datetime_without_an_offset_is_refused_with_a_hint_that_parses(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="needs a UTC offset") as refused:
        parse_moment(text, "--window-start")
    assert refused.value.field == "--window-start"
    hints = re.findall(r"e\.g\. (\S+) \(UTC\) or (\S+)$", refused.value.message)
    assert hints, refused.value.message
    for hint in hints[0]:
        assert parse_moment(hint, "--window-start").utcoffset() is not None, hint
    assert parse_moment(hints[0][0], "--window-start").utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "",
        "2026-1-1",
        "2026-02-30",
        "2026-01-01T25:00Z",
        "2026-01-01T09:30+24:00",
        "2026-01-01+00:00+00:00",
    ],
)
def test_anything_else_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        parse_moment(text, "--window-end")
    assert str(refused.value).startswith("--window-end: ")
    assert repr(text) in str(refused.value)


def test_examples_in_the_refusal_parse() -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        parse_moment("yesterday", "--window-start")
    examples = refused.value.message.split("use e.g. ")[1].replace(" or ", ", ").split(", ")
    assert len(examples) == 3
    for example in examples:
        parse_moment(example, "--window-start")


def test_plaintext_only_when_no_tls_file_is_set() -> None:
    assert tls_files("", "", "") is None
    assert tls_files("ca.pem", "", "") == TlsFiles(ca_file="ca.pem")
    assert tls_files("ca.pem", "c.pem", "k.pem") == TlsFiles("ca.pem", "c.pem", "k.pem")


@pytest.mark.parametrize(
    ("ca", "cert", "key", "missing"),
    [
        ("ca.pem", "c.pem", "", "APPTSYNC_CLI_TLS_KEY_FILE"),
        ("ca.pem", "", "k.pem", "APPTSYNC_CLI_TLS_CERT_FILE"),
        ("", "c.pem", "", "APPTSYNC_CLI_TLS_KEY_FILE"),
        ("", "c.pem", "k.pem", "APPTSYNC_CLI_TLS_CA_FILE"),
    ],
)
def test_partial_tls_settings_are_refused_naming_the_missing_one(ca: str, cert: str, key: str, missing: str) -> None:
    with pytest.raises(InvalidArgumentError, match="required when") as refused:
        tls_files(ca, cert, key)
    assert missing in refused.value.field


def test_an_unreadable_tls_file_is_a_mistake_naming_its_setting() -> None:
    def read(path: str) -> bytes:
        if path == "k.pem":
            raise FileNotFoundError(2, "No such file or directory", path)
        return b"-----BEGIN CERTIFICATE-----\n"

    assert channel_credentials(None, read) is None
    assert channel_credentials(TlsFiles("ca.pem"), read) is not None
    with pytest.raises(InvalidArgumentError, match=re.escape("cannot read k.pem: No such file")) as refused:
        channel_credentials(TlsFiles("ca.pem", "c.pem", "k.pem"), read)
    assert "APPTSYNC_CLI_TLS_KEY_FILE" in refused.value.field


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, EXIT_INVALID),
        (grpc.StatusCode.NOT_FOUND, EXIT_NOT_FOUND),
        (grpc.StatusCode.UNAVAILABLE, EXIT_UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, EXIT_UNAVAILABLE),
        (grpc.StatusCode.ALREADY_EXISTS, EXIT_REFUSED),
        (grpc.StatusCode.UNAUTHENTICATED, EXIT_AUTH),
        (grpc.StatusCode.PERMISSION_DENIED, EXIT_AUTH),
        (grpc.StatusCode.INTERNAL, EXIT_OTHER),
        (grpc.StatusCode.FAILED_PRECONDITION, EXIT_OTHER),
        (grpc.StatusCode.UNKNOWN, EXIT_OTHER),
    ],
)
def test_each_status_has_its_documented_exit_code(status: grpc.StatusCode, code: int) -> None:
    assert exit_code_for(status) == code


def test_exit_codes_keep_their_meaning_and_the_readme_lists_them() -> None:
    codes = [code for code, _meaning in EXIT_CODES]
    assert codes == list(range(8))
    assert (EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_OTHER, EXIT_REFUSED, EXIT_AUTH) == (2, 3, 4, 5, 6, 7)
    readme = README.read_text("utf-8")
    for code, meaning in EXIT_CODES:
        assert f"| {code} | {meaning} |" in readme, f"README exit-code table: {code}"


def test_settings_are_name_value_pairs() -> None:
    assert parse_settings(["calendar=a=b", "empty="]) == {"calendar": "a=b", "empty": ""}
    for item in ("novalue", "=x"):
        with pytest.raises(InvalidArgumentError, match="is not NAME=VALUE"):
            parse_settings([item])


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_a_job_row_shows_its_connection_and_times_in_utc() -> None:
    job = imports_pb2.Job(
        job_id="0b0e6c52-3d52-4b8e-8f4b-5a8f0d6f1c11",
        state=imports_pb2.JOB_STATE_SUCCEEDED,
        source=imports_pb2.SOURCE_CALENDLY,
        connection_id="front-desk-calendly-with-a-long-name",
        created_at=_stamp(datetime(2026, 1, 1, 9, 30, 15, tzinfo=timezone(timedelta(hours=2)))),
        finished_at=_stamp(datetime(2026, 1, 1, 7, 31, tzinfo=UTC)),
        counts=imports_pb2.JobCounts(inserted=12),
        stop_reason="no_new_records",
    )
    line = job_list_line(job)
    for part in (
        "SUCCEEDED",
        "calendly",
        "front-desk-calendly-with-a-long-name",
        "2026-01-01T07:30:15Z",
        "2026-01-01T07:31:00Z",
        " 12 ",
        "no_new_records",
    ):
        assert part in line, (part, line)
    queued = job_list_line(imports_pb2.Job(job_id="j", state=imports_pb2.JOB_STATE_QUEUED, connection_id="c"))
    assert queued.split()[-4:] == ["-", "-", "0", "-"], queued


def test_a_progress_line_is_whole_at_any_size() -> None:
    counts = imports_pb2.JobCounts(
        pages_fetched=123_456,
        pages_written=123_450,
        records_fetched=12_345_678,
        inserted=9_999_999,
        updated=7,
        unchanged=3,
    )
    line = progress_line(imports_pb2.Job(state=imports_pb2.JOB_STATE_RUNNING, counts=counts))
    assert line == ("RUNNING pages 123450/123456 records 12345678 inserted 9999999 updated 7 unchanged 3")
    assert "\n" not in line
