"""Every compression codec a Kafka producer may use, checked before a worker reads a message.

Producers choose their own codec (Java's and librdkafka's clients offer gzip,
snappy, lz4 and zstd), and the consumer must decompress whatever arrives.
aiokafka has gzip from the standard library and the others from `cramjam`;
without it the first compressed batch would crash the worker on every restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiokafka import codec

CODECS: Final[dict[str, Callable[[], bool]]] = {
    "gzip": codec.has_gzip,
    "snappy": codec.has_snappy,
    "lz4": codec.has_lz4,
    "zstd": codec.has_zstd,
}


class MissingCodecs(RuntimeError):
    pass


def require_codecs(available: dict[str, Callable[[], bool]] = CODECS) -> None:
    """Raise `MissingCodecs`, naming them and the fix, unless every codec can be read."""
    missing = [name for name, has in available.items() if not has()]
    if missing:
        raise MissingCodecs(
            f"cannot read Kafka messages compressed with {', '.join(missing)}: aiokafka needs the "
            "`cramjam` package (pip install 'costtrace[fleet]' brings it)"
        )
