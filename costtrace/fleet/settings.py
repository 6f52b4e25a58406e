"""Fleet settings: frozen, from COSTTRACE_* environment variables; secrets stay SecretStr."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from costtrace.contract.topics import Catalogue, catalogue


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COSTTRACE_", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:19092"
    # how every Kafka client (faust's, aiokafka's, the admin's) connects: docs/operations.md, "Security"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # or the password from a file (a mounted Secret), read at start; never logged either way
    kafka_sasl_password_file: Path | None = None
    # TLS: the CA that signed the brokers' certificates (default: the system's), and for mutual
    # TLS this client's certificate and key (PEM)
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    postgres_dsn: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:15432/costtrace")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:16379/0")

    topic_prefix: str = "costtrace"
    partitions: int = 8
    replication: int = 1
    app_id: str = "costtrace-allocator"
    sink_app_id: str = "costtrace-sink"
    compensator_app_id: str = "costtrace-compensator"
    state_dir: Path = Path(".stack/state")

    # faust tuning; see docs/fleet.md
    commit_interval: float = 2.8
    # the allocator's outbox hands its batches over this often (costtrace/fleet/outbox.py)
    producer_linger: float = 0.025
    producer_batch_bytes: int = 262_144
    standby_replicas: int = 1
    session_timeout: float = 15.0
    stream_buffer_maxsize: int = 4096
    # a fetch waits for this many bytes, or fetch_max_wait: fewer, fuller fetches
    fetch_min_bytes: int = 65536
    fetch_max_wait: float = 0.05
    # most messages one sink batch takes (it takes what has arrived, without waiting for more)
    sink_batch: int = 2000
    log_level: str = "warning"

    # the compensator (costtrace/fleet/compensator.py): which dead letters are retried, how
    # often in all (the first attempt included), and the delay before each retry;
    # one durable retry topic per delay (`<prefix>.retry-<n>`). None by default: each
    # event is judged at its place in the log order, as replay judges it, and a retry
    # after a delay would be judged at another (docs/semantics.md)
    retry_reasons: tuple[str, ...] = ()
    retry_attempts: int = 5
    retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)

    # the log order (costtrace/fleet/merge.py): how long an allocator waits for a topic partition whose
    # data is due before it goes on without it; how many held events of one topic partition
    # make it fetch the others first; how often it asks end offsets and publishes watermarks;
    # how long after reading an event a partition at its end still lets an earlier-stamped one
    # come (a producer's batches to several partitions land in any order within that)
    max_idle: float = 3.0
    end_grace: float = 0.25
    hold_limit: int = 2000
    order_tick: float = 0.01
    watermark_interval: float = 0.01

    # how often allocators read the tracing switch from Redis (costtrace/fleet/switch.py)
    switch_poll: float = 2.0

    # /metrics, /livez and /readyz (costtrace.fleet.metrics); in a container: 0.0.0.0
    http_host: str = "127.0.0.1"
    http_port: int = 9400
    # the read API and its web page (`costtrace api`); on http_host
    api_port: int = 8410

    @model_validator(mode="after")
    def _kafka_credentials(self) -> Self:
        if self.kafka_security_protocol.startswith("SASL"):
            if not self.kafka_sasl_username:
                protocol = self.kafka_security_protocol
                raise ValueError(f"COSTTRACE_KAFKA_SASL_USERNAME is required with {protocol}")
            if self.kafka_sasl_password is None and self.kafka_sasl_password_file is None:
                raise ValueError(
                    f"COSTTRACE_KAFKA_SASL_PASSWORD or COSTTRACE_KAFKA_SASL_PASSWORD_FILE is required with "
                    f"{self.kafka_security_protocol}"
                )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("COSTTRACE_KAFKA_SSL_CERTFILE and COSTTRACE_KAFKA_SSL_KEYFILE go together")
        return self

    def kafka_sasl_secret(self) -> str | None:
        """The SASL password, from the setting or its file."""
        if self.kafka_sasl_password is not None:
            return self.kafka_sasl_password.get_secret_value()
        if self.kafka_sasl_password_file is not None:
            return self.kafka_sasl_password_file.read_text().strip()
        return None


def fleet_catalogue(settings: Settings) -> Catalogue:
    """The fleet's topics under these settings."""
    return catalogue(settings.topic_prefix, settings.partitions, settings.app_id, len(settings.retry_delays))


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """What every aiokafka client of the fleet is built with: its security protocol, TLS and SASL."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = kafka_ssl_context(settings)
    if protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_secret(),
        )
    return options


def kafka_ssl_context(settings: Settings) -> Any:
    """A TLS context that checks the brokers' certificates (and names) against the CA given."""
    from aiokafka.helpers import create_ssl_context

    key_password = settings.kafka_ssl_key_password
    return create_ssl_context(
        cafile=None if settings.kafka_ssl_cafile is None else str(settings.kafka_ssl_cafile),
        certfile=None if settings.kafka_ssl_certfile is None else str(settings.kafka_ssl_certfile),
        keyfile=None if settings.kafka_ssl_keyfile is None else str(settings.kafka_ssl_keyfile),
        password=None if key_password is None else key_password.get_secret_value(),
    )
