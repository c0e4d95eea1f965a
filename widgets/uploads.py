"""Files a person uploads on a page (prompt files, benchmark results, plans, SLO profiles), kept where a run's
child process can read them: Preflight's private uploads folder, never a shared /tmp (they can hold prompts)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from reports.home import private_dir, prune, write_private

UPLOAD_DIR = "uploads"  # a private folder (0700, files 0600) under Preflight's home
UPLOAD_KEEP = 10  # uploads kept; a run reads its files when it starts, so only the current ones matter
UPLOAD_MAX_AGE_S = 24 * 3600  # an upload not used for a day is deleted (the page writes it again if still chosen)


def save_upload(data: bytes, name: str, suffixes: tuple[str, ...] = (".jsonl", ".json")) -> Path:
    """The upload as a file named by its content, written once and pruned by age and count.

    The user's file name is kept only for its suffix (one of `suffixes`, else the first), since loaders
    decide the format by it (an SLO profile's .yaml or .json)."""
    folder = private_dir(UPLOAD_DIR)
    suffix = next((s for s in suffixes if name.lower().endswith(s)), suffixes[0])
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
    if path.exists():
        os.utime(path)  # in use again: the age limit counts from now
    else:
        write_private(path, data)
    prune(folder, "[!.]*", keep=UPLOAD_KEEP, max_age_s=UPLOAD_MAX_AGE_S)
    return path
