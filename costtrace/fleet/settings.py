"""Fleet settings: frozen, from COSTTRACE_* environment variables; secrets stay SecretStr."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from costtrace.contract.topics import Catalogue, catalogue


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COSTTRACE_", frozen=True)

    kafka_bootstrap: str = "127.0.0.1:19092"
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
    # make it fetch the others first; how often it asks end offsets and publishes watermarks
    max_idle: float = 3.0
    hold_limit: int = 2000
    order_tick: float = 0.01
    watermark_interval: float = 0.01

    # how often allocators read the tracing switch from Redis (costtrace/fleet/switch.py)
    switch_poll: float = 2.0

    # /metrics, /livez and /readyz (costtrace.fleet.metrics); in a container: 0.0.0.0
    http_host: str = "127.0.0.1"
    http_port: int = 9400


def fleet_catalogue(settings: Settings) -> Catalogue:
    """The fleet's topics under these settings."""
    return catalogue(settings.topic_prefix, settings.partitions, settings.app_id, len(settings.retry_delays))
