"""Offline replay: apply an event log in order and write every record.

Replay is the reference for the fleet: the same model, applied to the file in
line order, with each transfer's credit applied to the receiver at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Final

import msgspec

from costtrace.model.allocation import Status, replay_event
from costtrace.model.state import MemoryStore

_FLUSH_EVERY: Final = 4096


@dataclass
class Summary:
    events: int = 0
    records: int = 0
    repeats: int = 0
    blank_lines: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    accounts: int = 0
    debt_outstanding: int = 0

    def lines(self) -> list[str]:
        out = [
            f"events: {self.events}",
            f"records: {self.records}",
            f"exact repeats ignored: {self.repeats}",
            f"rejections: {sum(self.rejections.values())}",
        ]
        out += [f"  {reason}: {n}" for reason, n in sorted(self.rejections.items())]
        out += [f"accounts: {self.accounts}", f"debt outstanding: {self.debt_outstanding}"]
        if self.blank_lines:
            out.append(f"blank lines skipped: {self.blank_lines}")
        return out


def replay(
    lines: Iterable[bytes],
    out: BinaryIO,
    store: MemoryStore | None = None,
    on_line: Callable[[int], None] | None = None,
) -> Summary:
    """Apply `lines` (one JSON event each) in order; write records as JSON lines to `out`.

    `on_line(n_bytes)` is called per input line, for a progress bar.
    """
    store = store if store is not None else MemoryStore()
    summary = Summary()
    encode = msgspec.json.Encoder().encode
    pending: list[bytes] = []  # chunks of output lines, the contract's JSON
    waiting = 0  # records in `pending`
    rejections = summary.rejections
    APPLIED, REJECTED = Status.APPLIED, Status.REJECTED
    for line in lines:
        if on_line is not None:
            on_line(len(line))
        if not line.strip():
            summary.blank_lines += 1
            continue
        summary.events += 1
        status, text, n, rej = replay_event(store, line)
        if status is APPLIED:
            pending.append(text)
            waiting += n
        elif status is REJECTED:
            assert rej is not None
            pending.append(encode(rej) + b"\n")
            waiting += 1
            rejections[rej.reason] += 1
        else:
            summary.repeats += 1
        if waiting >= _FLUSH_EVERY:
            summary.records += waiting
            out.write(b"".join(pending))
            pending.clear()
            waiting = 0
    summary.records += waiting
    out.write(b"".join(pending))
    summary.accounts, summary.debt_outstanding = store.totals()
    return summary
