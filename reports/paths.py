"""Where Preflight keeps what it writes for the user: one rule, read by every part that writes there.

`PREFLIGHT_HOME` wins (tests, CI and people who want the files elsewhere set it);
otherwise the platform's user data folder (platformdirs: ~/.local/share/preflight on
Linux). Reports history, uploads and server logs live under it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "PREFLIGHT_HOME"


def data_dir() -> Path:
    """$PREFLIGHT_HOME, else the user data folder; not created here (callers create what they write)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs  # imported here: the CLI's --help should not pay for it

    return Path(platformdirs.user_data_dir("preflight"))


def history_dir(override: Path | None = None) -> Path:
    """The reports history: `override` (--history DIR) or <data dir>/history."""
    return Path(override).expanduser() if override is not None else data_dir() / "history"
