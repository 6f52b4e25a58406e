"""The words of records, rejections, statuses and state keys, as the native model writes them.

They are written once, in native/src/vocabulary.rs; this module hands them to
the Python enums (`Kind`, `Reason`, `Status`, `Namespace`), whose members take
their values from here, and `matching` refuses an enum whose names differ
from the native model's: a word added on one side only fails at import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import Final, TypeVar

from costtrace import _native

SUSPENSE: Final[str] = _native.SUSPENSE
KINDS: Final[Mapping[str, str]] = _native.KINDS
REASONS: Final[Mapping[str, str]] = _native.REASONS
STATUSES: Final[Mapping[str, str]] = _native.STATUSES
KEY_PREFIXES: Final[Mapping[str, bytes]] = _native.KEY_PREFIXES

E = TypeVar("E", bound=type[Enum])


def matching(words: Mapping[str, object]) -> Callable[[E], E]:
    """Check that an enum has exactly the native model's names, with its values."""

    def check(enum: E) -> E:
        ours = {member.name: member.value for member in enum}
        if ours != dict(words):
            missing, extra = sorted(words.keys() - ours.keys()), sorted(ours.keys() - words.keys())
            raise ImportError(
                f"{enum.__name__} differs from native/src/vocabulary.rs: "
                f"missing {missing}, not native {extra}; rebuild the native model or align the enum"
            )
        return enum

    return check
