"""The child of tests/reports/test_full_disk.py: save real documents where every write fails, print what is left.

Not a test (pytest does not collect it). `python full_disk_worker.py FOLDER full|fsize`:
1. saves a benchmark result in the history FOLDER/history and lists it (so the index exists);
2. makes every further write fail: `full` fills FOLDER's file system (a tiny tmpfs the test
   mounted) with a ballast file until ENOSPC; `fsize` lowers RLIMIT_FSIZE below any document
   with SIGXFSZ ignored, so writes fail with EFBIG instead of killing the process;
3. saves a readiness report the three ways a run does (the history, `--out`, and the CLI's
   history save that only warns), drops the index and lists the history again;
4. prints, as JSON, the errors and what the folder holds, for the test to judge.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from reports import store  # noqa: E402 - after the path set-up above
from reports.history import INDEX_NAME, History  # noqa: E402
from reports.history_flags import save_to_history  # noqa: E402
from reports.readiness_report import ReadinessReport  # noqa: E402
from tests.result_docs import record, result_of, run_of  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "readiness-report.v1.json"
FSIZE_LIMIT = 64  # bytes: below every document and the index, above nothing the worker needs to write


def fill(folder: Path) -> None:
    """Write zeros into folder/ballast until the file system refuses: from then on, every write fails."""
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 512)  # unbuffered: nothing is left to flush, and to fail, on close
    except OSError:
        pass  # ENOSPC: the point of the exercise
    finally:
        os.close(fd)


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is EFBIG, not a killed process
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, hard))


def attempt(save: Any) -> dict[str, Any]:
    try:
        save()
    except store.DocumentError as exc:
        return {"error": str(exc), "reason": exc.reason, "fix": exc.fix, "path": str(exc.path)}
    return {"error": None}


def index_state(root: Path) -> str:
    index = root / INDEX_NAME
    if not index.exists():
        return "absent"
    try:
        json.loads(index.read_bytes())
    except ValueError:
        return "corrupt"
    return "valid"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("mode", choices=("full", "fsize"))
    args = parser.parse_args()
    root = args.folder / "history"
    history = History(root)
    first = result_of([run_of([record(0, 0.0, [0.1, 0.2, 0.3]), record(1, 0.0, [0.2, 0.3])])])
    first_path = history.save(first)
    before = first_path.read_bytes()
    listed = [e.id for e in history.entries()]
    index_before = (root / INDEX_NAME).read_bytes()

    fill(args.folder) if args.mode == "full" else limit_file_size()
    report = store.load(FIXTURE, ReadinessReport)
    saves = {
        "history": attempt(lambda: history.save(report)),
        "out": attempt(lambda: store.save(report, args.folder / "report.json")),
    }
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        save_to_history(report, argparse.Namespace(no_history=False, history=root))
    index_after_failures = (root / INDEX_NAME).read_bytes() == index_before
    (root / INDEX_NAME).unlink()  # the listing must rebuild it, and cannot write it: it still lists
    if args.mode == "full":
        fill(args.folder)  # the index's page, just freed, is taken again
    facts = {
        "saves": saves,
        "cli_warning": stderr.getvalue(),
        "listed_before": listed,
        "listed_after": [e.id for e in history.entries()],
        "first_intact": first_path.read_bytes() == before,
        "index_kept": index_after_failures,
        "index_after_listing": index_state(root),
        "history_files": sorted(os.listdir(root)),
        "folder_files": sorted(os.listdir(args.folder)),
        "report_id": report.id,
    }
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
