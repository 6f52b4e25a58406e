"""The fleet-wide tracing switch (Redis) and the historical node it names.

`costtrace switch on --node T` starts tracing a running business at T: the
opening balances (`costtrace migrate --as-of T`, one `opened` event per
account) hold everything up to T, so allocators skip (and count) every other
event that occurred at or before T. `off` holds every event but `opened` in
the allocators' hold (costtrace/fleet/merge.py), uncommitted in Kafka, until tracing
is on again; nothing is skipped for it. A retry (the compensator's) is never
skipped. With no switch set, everything is traced.

Workers read the switch every few seconds without restarting. While Redis
is down they keep the last switch they read; an allocator also keeps it in
its state folder, so one that starts while Redis is down goes on with it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from costtrace.contract.timestamps import parse_instant

log = logging.getLogger(__name__)


def switch_key(prefix: str) -> str:
    """The fleet's switch in Redis: under its topic prefix, so fleets sharing a Redis never share one."""
    return f"{prefix}:switch"


class Switch(msgspec.Struct, frozen=True):
    on: bool = True
    node: str | None = None  # RFC 3339 instant; events at or before it are skipped (once on)
    node_ns: int | None = None

    @classmethod
    def of(cls, on: bool, node: str | None) -> Switch:
        return cls(on, node, parse_instant(node) if node is not None else None)

    def skips(self, event_type: str, occurred_ns: int) -> bool:
        """Whether an event is left out: one at or before the node, but never an opening balance or credit.

        Not for tracing off: the allocators hold events then, they do not skip them.
        """
        if event_type in ("opened", "credit"):
            return False
        return self.node_ns is not None and occurred_ns <= self.node_ns

    def describe(self) -> str:
        if not self.on:
            return "off: every event but `opened` is held until tracing is on again"
        return (
            f"on, historical node {self.node}"
            if self.node
            else "on, no historical node: every event is traced"
        )


_decoder = msgspec.json.Decoder(Switch)


def decode_switch(raw: bytes | str) -> Switch:
    sw = _decoder.decode(raw)
    return Switch.of(sw.on, sw.node)  # recompute node_ns from the node


def encode_switch(sw: Switch) -> bytes:
    return json.dumps({"on": sw.on, "node": sw.node}).encode()


@dataclass
class SwitchHolder:
    """What a worker knows of the switch: the last value it read, kept across Redis outages and restarts."""

    saved: Path | None = None
    current: Switch = field(default_factory=Switch)
    known: bool = False

    def __post_init__(self) -> None:
        if self.saved is not None and self.saved.exists():
            try:
                self.current = decode_switch(self.saved.read_bytes())
                self.known = True
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
                log.warning("ignoring an unreadable saved switch in %s", self.saved)

    def update(self, raw: bytes | str | None) -> bool:
        """A value read from Redis (None: not set, which means on); True when it changed."""
        new = Switch() if raw is None else decode_switch(raw)
        changed = new != self.current or not self.known
        self.current, self.known = new, True
        if changed:
            log.warning("tracing switch: %s", new.describe())
            if self.saved is not None:
                self.saved.write_bytes(encode_switch(new))
        return changed
