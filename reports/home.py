"""Preflight's own data directory: the one place that decides where Preflight keeps its files.

`$PREFLIGHT_HOME`, else the user data folder (platformdirs). Anything Preflight writes
for itself (the bundled server's logs, prompt files uploaded on the dashboard) lives in
a sub-folder made by `private_dir`, never in a shared folder such as /tmp: the files can
hold prompts, so folders are 0700 and files 0600 whatever the umask. Such folders only
grow, so each one is trimmed by `prune` when something new is written to it.

Here in `reports`, the package that depends on nothing else of ours, so that the
checks, the readiness resources line and the dashboard all read the same rule.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HOME_ENV = "PREFLIGHT_HOME"
DIR_MODE = 0o700
FILE_MODE = 0o600


def preflight_home() -> Path:
    """$PREFLIGHT_HOME, else the user data folder: where reports, logs and uploads are written."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("preflight"))


def history_dir(override: Path | None = None) -> Path:
    """The reports history: `override` (--history DIR) or <home>/history."""
    return Path(override).expanduser() if override is not None else preflight_home() / "history"


def private_dir(name: str) -> Path:
    """`preflight_home()/name`, created if needed and set to 0700 (the home itself is made 0700 when new)."""
    home = preflight_home()
    home.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path = home / name
    path.mkdir(mode=DIR_MODE, exist_ok=True)
    os.chmod(path, DIR_MODE)  # an older Preflight, or a umask, may have left it readable by others
    return path


def open_private(path: Path) -> int:
    """A new or truncated file at `path`, readable by its owner only; returns the descriptor to wrap."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # O_CREAT's mode does not apply to a file that already existed
    return fd


def write_private(path: Path, data: bytes) -> Path:
    """Write `data` to `path` (mode 0600) through a temporary name, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(open_private(tmp), "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def prune(folder: Path, pattern: str, keep: int, max_age_s: float | None = None) -> list[Path]:
    """Delete the files in `folder` matching `pattern` beyond the newest `keep`, and those older than
    `max_age_s`; returns what was deleted. A file another process removed meanwhile is not an error."""
    entries = []
    for path in folder.glob(pattern):
        try:
            entries.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    entries.sort(reverse=True)
    cutoff = None if max_age_s is None else time.time() - max_age_s
    removed = []
    for i, (mtime, path) in enumerate(entries):
        if i >= keep or (cutoff is not None and mtime < cutoff):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
