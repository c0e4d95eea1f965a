"""Saving when the disk is full, on a real full file system: a clear error, nothing half-written, nothing lost.

The child (full_disk_worker.py) saves through the real history and store. Two ways to make
its writes fail: a 64 KiB tmpfs mounted in a user and mount namespace, filled until ENOSPC
(needs `unshare`, and a kernel that lets this user make namespaces: skipped where not), and
RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with EFBIG (runs everywhere).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reports.readiness_report import ReadinessReport
from reports.store import DocumentError
from widgets.exports import unsaved_sentence

WORKER = Path(__file__).with_name("full_disk_worker.py")
TIMEOUT_S = 120


def _facts(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_on_tmpfs(folder: Path) -> dict[str, Any]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed, so no tmpfs can be mounted for the test")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{folder}'"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip() or probe.returncode}")
    script = f"mount -t tmpfs -o size=64k tmpfs '{folder}' && exec '{sys.executable}' '{WORKER}' '{folder}' full"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=TIMEOUT_S)
    return _facts(done)


def _run_with_fsize_limit(folder: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(WORKER), str(folder), "fsize"], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    return _facts(done)


@pytest.mark.parametrize(
    ("how", "reason", "system_words"),
    [
        (_run_on_tmpfs, "the disk is full", "No space left on device"),
        (_run_with_fsize_limit, "the file is larger than this process may write", "File too large"),
    ],
    ids=["tmpfs-enospc", "rlimit-fsize-efbig"],
)
def test_a_failed_save_is_clear_and_leaves_the_history_whole(
    tmp_path: Path, how: Any, reason: str, system_words: str
) -> None:
    folder = tmp_path / "disk"
    folder.mkdir()
    facts = how(folder)
    history = folder / "history"
    for where, path in (("history", history / f"{facts['report_id']}.json"), ("out", folder / "report.json")):
        save = facts["saves"][where]
        assert save["error"] == f"cannot write {path}: {reason} ({system_words})", save
        assert save["reason"] == reason and save["path"] == str(path)
    assert facts["cli_warning"].startswith(f"warning: not saved in the history: cannot write {history}/")
    assert facts["cli_warning"].count("\n") == 1 and "Traceback" not in facts["cli_warning"]
    # nothing half-written: no temp file, no empty file under the report's name; the earlier run intact
    assert [f for f in facts["history_files"] if f.endswith(".json")] == [f"{facts['listed_before'][0]}.json"]
    assert not [f for f in facts["history_files"] + facts["folder_files"] if f.endswith(".tmp")]
    assert "report.json" not in facts["folder_files"]
    assert facts["first_intact"] and facts["index_kept"]
    assert facts["listed_after"] == facts["listed_before"]  # the index could not be rewritten; the listing works
    assert facts["index_after_listing"] in ("absent", "valid")


def test_the_dashboard_says_it_as_a_sentence_with_what_to_do(tmp_path: Path) -> None:
    """What the Benchmark, Checklist, Studies and Home pages show when the job could not save (widgets.exports)."""
    facts = _run_with_fsize_limit(tmp_path)
    save = facts["saves"]["history"]
    exc = DocumentError(save["error"], path=Path(save["path"]), reason=save["reason"], fix=save["fix"])
    report = ReadinessReport.model_construct(id=facts["report_id"])
    assert unsaved_sentence(report, exc) == (
        f"Could not save the report: the file is larger than this process may write ({save['path']}). "
        "The run is kept in this session (download it above); raise the file size limit (ulimit -f) and press "
        "Save again."
    )
    full = DocumentError("cannot write x", path=Path("/h/r.json"), reason="the disk is full", fix="free some space")
    assert unsaved_sentence(report, full) == (
        "Could not save the report: the disk is full (/h/r.json). The run is kept in this session (download it "
        "above); free some space and press Save again."
    )
