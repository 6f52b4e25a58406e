"""An allocator's RocksDB folder is trusted only after a clean exit.

After a kill, local RocksDB can be ahead of the changelog (docs/faust.md §2),
and faust's recovery would then mix newer local entries with older changelog
values. So an allocator that did not exit cleanly starts from an empty
folder and restores its partitions from the changelog, which is consistent
by construction (costtrace/fleet/state.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)
MARKER = ".clean-exit"


def prepare_state_dir(path: Path) -> bool:
    """Empty the folder unless the last process left it cleanly; return True if it was emptied."""
    marker = path / MARKER
    wiped = False
    if path.exists() and any(p.name != MARKER for p in path.iterdir()) and not marker.exists():
        log.warning("%s was not left cleanly: restoring state from the changelog", path)
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        wiped = True
    path.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    return wiped


def mark_clean_exit(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
