"""Stop the server when the process that started it dies (`serve --parent-pid PID`).

A dashboard or a benchmark starts `python -m engine serve` and stops it when done. If
that process is killed (SIGKILL, the OOM killer, a crash), nobody stops the server: it
would keep its port, its memory and its CPU threads forever. So the starter passes its
own pid, and a watch thread here waits for that process to end, then calls `on_exit`
(the server turns that into its SIGTERM path: a graceful stop).

Linux has a fast path: a pidfd becomes readable the moment the process exits (and,
unlike PR_SET_PDEATHSIG, it follows the process, not the thread that started us).
Elsewhere, or on an older kernel, the thread polls `os.getppid()`, which changes when
the parent dies and the server is re-parented. A parent that is already gone when the
watch starts (it died while torch was importing) is noticed at once.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

POLL_S = 1.0  # the portable path's poll interval: how late at most a parent's death is noticed


def watch_parent(parent_pid: int, on_exit: Callable[[], None]) -> threading.Thread:
    """Start a daemon thread that calls `on_exit()` once process `parent_pid` (our parent) has ended."""
    thread = threading.Thread(target=_watch, args=(parent_pid, on_exit), name="preflight-parent-watch", daemon=True)
    thread.start()
    return thread


def _watch(parent_pid: int, on_exit: Callable[[], None]) -> None:
    fd = _pidfd(parent_pid)
    try:
        if fd is not None and os.getppid() == parent_pid:  # still our parent, so the fd is not a reused pid
            select.select([fd], [], [])
        else:
            while os.getppid() == parent_pid:
                time.sleep(POLL_S)  # the poll of a wait with no deadline: it ends when the parent does
    finally:
        if fd is not None:
            os.close(fd)
    on_exit()


def _pidfd(pid: int) -> int | None:
    """A pidfd for `pid` (Linux 5.3+), or None where there is none: the caller polls instead."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return pidfd_open(pid)
    except OSError:  # an old kernel (ENOSYS), or the process is already gone (ESRCH)
        return None
