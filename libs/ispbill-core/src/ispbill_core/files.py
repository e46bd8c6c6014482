"""Files only their owner may read: the data directory 0700, ledger, outbox and spool 0600.

Modes are set explicitly (os.open with a mode, then chmod), never left to the umask: under the
usual umask 022 Python and SQLite would make them readable by every local user, and the ledger
holds customers' addresses and sealed NAS secrets.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Any

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600


def private_directory(path: str | Path) -> Path:
    """Make `path` (and missing parents, 0700 too) and set it to 0700 if it existed."""
    path = Path(path)
    missing = []
    for parent in [path, *path.parents]:
        if parent.exists():
            break
        missing.append(parent)
    path.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    for made in [path, *missing]:
        with contextlib.suppress(OSError):
            os.chmod(made, PRIVATE_DIRECTORY)
    return path


def private_parents(path: str | Path) -> None:
    """Make the missing parent directories of `path` 0700; existing ones are left as they
    are (a ledger in /tmp must not chmod /tmp)."""
    parent = Path(path).parent
    missing = []
    for p in [parent, *parent.parents]:
        if p.exists():
            break
        missing.append(p)
    parent.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    for made in missing:
        with contextlib.suppress(OSError):
            os.chmod(made, PRIVATE_DIRECTORY)


def private_file(path: str | Path) -> Path:
    """Create `path` empty if it is missing, and make it 0600 either way."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return path


def restrict(path: str | Path) -> None:
    """Make an existing file 0600; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, PRIVATE_FILE)


def open_private(path: str | Path, mode: str = "ab") -> IO[Any]:
    """`open(path, mode)` for writing ("a", "w", binary or text), the file created (or kept)
    0600."""
    flags = os.O_WRONLY | os.O_CREAT
    if "a" in mode:
        flags |= os.O_APPEND
    if "w" in mode:
        flags |= os.O_TRUNC
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    fd = os.open(path, flags, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return os.fdopen(fd, mode)
