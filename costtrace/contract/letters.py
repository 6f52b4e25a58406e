"""Dead letters: what the dead-letter topic carries, and the original bytes kept exactly.

A producer can send any bytes: a NUL, invalid UTF-8, a megabyte, no key. A
dead letter carries the message's key and value so that `costtrace dlq show`
and `dlq replay` give back exactly what was sent: as UTF-8 text where the bytes
are UTF-8 (JSON escapes whatever needs it, a NUL included), else as base64,
each with its encoding. PostgreSQL keeps them as `bytea`, since its `text`
cannot hold a NUL. A value too long for the dead-letter topic is left out of
the letter (`payload_encoding` "omitted"); the letter names the input position
where it stays for the topic's retention, and the tools read it there.
"""

from __future__ import annotations

import base64
from typing import Final

import msgspec

# the dead-letter and retry topics take messages of this size (costtrace/contract/topics.py)
LETTER_TOPIC_MAX_BYTES: Final = 8 << 20
# values up to this many bytes travel inside their letter (base64 adds a third, JSON a little more)
INLINE_PAYLOAD_MAX: Final = 4 << 20

# headers of an event the compensator or `costtrace dlq replay` sends again
ATTEMPT_HEADER: Final = "costtrace-attempt"
ORIGIN_HEADER: Final = "costtrace-origin"

UTF8: Final = "utf-8"
BASE64: Final = "base64"
OMITTED: Final = "omitted"


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """What the dead-letter topic carries: the rejection, why, and the original message."""

    event_id: str | None
    kind: str
    account_id: str | None
    reason: str
    detail: str | None
    topic: str
    partition: int
    offset: int
    key: str | None
    payload: str  # the original bytes as `payload_encoding` says ("" when omitted)
    payload_encoding: str  # "utf-8" | "base64" | "omitted" (too long: read it at topic/partition/offset)
    message_timestamp_ms: int | None
    attempt: int  # 1, then one more each time the compensator sends it again
    dead_lettered_at_ms: int
    origin: str | None = None  # topic:partition@offset of the first attempt (retries only)
    key_encoding: str = UTF8  # "utf-8" | "base64"
    payload_size: int | None = None  # bytes of the original value, when omitted

    @property
    def key_bytes(self) -> bytes | None:
        return None if self.key is None else original(self.key, self.key_encoding)

    @property
    def payload_bytes(self) -> bytes | None:
        """The original value; None when it was too long to carry (read it at its position)."""
        if self.payload_encoding == OMITTED:
            return None
        return original(self.payload, self.payload_encoding)


def carried(raw: bytes) -> tuple[str, str]:
    """Bytes as (text, encoding): UTF-8 text when they are UTF-8, else base64."""
    try:
        return raw.decode(), UTF8
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), BASE64


def original(text: str, encoding: str) -> bytes:
    """The bytes `carried` gave `text` for."""
    if encoding == BASE64:
        return base64.b64decode(text)
    if encoding == UTF8:
        return text.encode()
    raise ValueError(f"no bytes are carried in encoding {encoding!r}")


def resend_headers(attempt: int, origin: str) -> list[tuple[str, bytes]]:
    """What marks an event sent again: its attempt, and the position of its first one."""
    return [(ATTEMPT_HEADER, str(attempt).encode()), (ORIGIN_HEADER, origin.encode())]


def printable(text: str) -> str:
    """`text` with what no PostgreSQL text column stores (NUL, lone surrogates) written as escapes."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text
