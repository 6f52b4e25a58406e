"""Every codec a producer may use is readable, and a missing one stops a worker before its first message."""

from __future__ import annotations

import pytest
from aiokafka import codec

from costtrace.fleet.codecs import CODECS, MissingCodecs, require_codecs


def test_every_kafka_codec_is_installed() -> None:
    require_codecs()
    assert set(CODECS) == {"gzip", "snappy", "lz4", "zstd"}
    for encode, decode in (
        (codec.gzip_encode, codec.gzip_decode),
        (codec.snappy_encode, codec.snappy_decode),
        (codec.lz4_encode, codec.lz4_decode),
        (codec.zstd_encode, codec.zstd_decode),
    ):
        assert decode(encode(b"costtrace " * 100)) == b"costtrace " * 100


def test_a_missing_codec_is_named_with_the_fix() -> None:
    with pytest.raises(MissingCodecs, match=r"compressed with snappy, zstd: .*cramjam"):
        require_codecs(
            {"gzip": lambda: True, "snappy": lambda: False, "lz4": lambda: True, "zstd": lambda: False}
        )
