"""Producers that are not costtrace's own: kcat (librdkafka) and the Java client's console producer.

Each comes with its own partitioner and codecs, as a producing service would:
librdkafka hashes keys with CRC32 unless told `partitioner=murmur2_random`;
the Java client uses murmur2. Both are real processes talking to the broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.integration.fleet import REPO

KAFKA_LIBS = Path(os.environ.get("STACK_DIR", REPO / ".stack")) / "kafka" / "libs"


def kcat(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    key: bytes | None = None,
    *,
    codec: str | None = None,
    partitioner: str | None = "murmur2_random",
) -> None:
    """Publish `values` with kcat, one message per value (any bytes), all with `key` (or none).

    `partitioner=None` leaves librdkafka's default (CRC32, `consistent_random`).
    """
    kcat_bin = shutil.which("kcat")
    assert kcat_bin, "kcat is missing: deploy/stack up installs it"
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, value in enumerate(values):
            path = Path(tmp) / f"{i:06d}.msg"
            path.write_bytes(value)
            files.append(str(path))
        args = [kcat_bin, "-b", bootstrap, "-t", topic, "-P", "-X", "message.max.bytes=2000000"]
        if key is not None:
            args += ["-k", key.decode()]
        if codec is not None:
            args += ["-z", codec]
        if partitioner is not None:
            args += ["-X", f"partitioner={partitioner}"]
        subprocess.run([*args, *files], check=True, capture_output=True, timeout=120)


def kcat_keyed(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes, bytes]],
    *,
    codec: str | None = None,
    partitioner: str | None = "murmur2_random",
) -> None:
    """Publish (key, value) text lines with kcat in one run (`-K` with a tab; no tab or newline in them)."""
    kcat_bin = shutil.which("kcat")
    assert kcat_bin, "kcat is missing: deploy/stack up installs it"
    args = [kcat_bin, "-b", bootstrap, "-t", topic, "-P", "-K", "\t"]
    if codec is not None:
        args += ["-z", codec]
    if partitioner is not None:
        args += ["-X", f"partitioner={partitioner}"]
    lines = b"".join(k + b"\t" + v + b"\n" for k, v in messages)
    subprocess.run(args, input=lines, check=True, capture_output=True, timeout=120)


def java_producer(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], codec: str) -> None:
    """Publish (key, value) text lines with the Java client (Kafka's ConsoleProducer), `codec` compressed."""
    lines = b"".join(k + b"\t" + v + b"\n" for k, v in messages)
    args = [
        "java", "-cp", f"{KAFKA_LIBS}/*", "org.apache.kafka.tools.ConsoleProducer",
        "--bootstrap-server", bootstrap, "--topic", topic,
        "--property", "parse.key=true", "--property", "key.separator=\t",
        "--producer-property", f"compression.type={codec}", "--producer-property", "acks=all",
    ]  # fmt: skip
    subprocess.run(args, input=lines, check=True, capture_output=True, timeout=180)
