"""Types of the native model (native/src/lib.rs)."""

from typing import Any

# (status code, account_id, record JSON lines, credit msgpacks, (event_id, account_id, reason) | None,
#  detail | None, step)
NativeOutcome = tuple[
    int,
    str | None,
    list[bytes],
    list[bytes],
    tuple[str | None, str | None, str] | None,
    str | None,
    int,
    tuple[str, ...],
]

class NativeStore:
    @staticmethod
    def memory() -> NativeStore: ...
    @staticmethod
    def table(table: Any, together: Any) -> NativeStore: ...
    def apply_event(
        self, event: bytes, position: tuple[str, int] | None = None, settled: Any = None
    ) -> NativeOutcome: ...
    def apply_credit(
        self, credit: bytes, position: tuple[str, int] | None = None, settled: Any = None
    ) -> NativeOutcome: ...
    def apply_archive(
        self,
        account_id: str,
        order_ids: list[str],
        position: tuple[str, int] | None = None,
        settled: Any = None,
    ) -> NativeOutcome: ...
    def replay_event(
        self, event: bytes
    ) -> tuple[int, bytes, int, tuple[str | None, str | None, str] | None]: ...
    def totals(self) -> tuple[int, int]: ...
    def heads(self) -> list[tuple[str, bytes]]: ...
    def forget_repairs(self) -> None: ...
    @property
    def created(self) -> int: ...
    def items(self, account_id: str | None = None) -> list[tuple[bytes, bytes]]: ...

def event_key(account_id: str, event_id: str) -> str: ...
def instant(text: str) -> int | None: ...
def partition_for(key: bytes, partitions: int) -> int: ...

FIRST_YEAR: int
LAST_YEAR: int
