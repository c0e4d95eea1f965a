"""Where the engine keeps what it builds once per machine, and the file lock that lets processes share it.

Converted weights (engine/model/weight_cache.py), compiled decode packages (engine/model/aot.py) and
native kernel libraries (engine/quant/native.py) all live under `cache_dir()`, and every writer
holds `file_lock` on its entry's lock file: several processes (a dashboard and the servers it
starts, two test runs) then build each thing once, and nobody reads or deletes what another is
writing. It sits at the top of the engine so that every layer of the core may use it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """PREFLIGHT_CACHE_DIR, else the user cache directory (platformdirs)."""
    env = os.environ.get("PREFLIGHT_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "engine"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("preflight")) / "engine"


def _open_lock(lock: Path, exclusive: bool) -> int | None:
    """The lock file's descriptor; None for a reader of a cache it cannot write that has no lock file."""
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
    try:
        return os.open(lock, os.O_RDONLY)
    except OSError:
        return None  # nobody can write this directory, so there is no writer to wait for


@contextmanager
def file_lock(lock: Path, exclusive: bool) -> Iterator[None]:
    """Hold `lock` (`fcntl.flock`): exclusive to write, shared to read. Lock files stay once made
    (deleting one while another process waits on it would split the lock in two)."""
    fd = _open_lock(lock, exclusive)
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock
