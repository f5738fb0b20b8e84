"""What the message modules share: reading a Kafka message value into its protobuf message."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from apptsync.shared.errors import PoisonMessageError

M = TypeVar("M", bound=Message)


def parse_message(empty: M, value: bytes | None) -> M:
    """`empty` (a new message of the expected type) filled from a Kafka message value. Raises
    PoisonMessageError when there is no value or the bytes are not that message."""
    name = empty.DESCRIPTOR.name
    if value is None:
        raise PoisonMessageError("message has no value")
    try:
        empty.ParseFromString(value)
    except DecodeError as exc:
        raise PoisonMessageError(f"not a{'n' if name[0] in 'AEIOU' else ''} {name}: {exc}") from exc
    return empty
