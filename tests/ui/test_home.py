"""Preflight's own files stay in its private home and are pruned (issue 16, item 15).

Uploaded prompt files and the bundled server's logs used to go to the shared temp folder
with mode 0644 and were never deleted. The autouse `preflight_env` fixture points
PREFLIGHT_HOME at a tmp folder, so nothing here touches the real home.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from checks.load.targets import BundledOptions, BundledTarget
from reports.home import preflight_home, private_dir, prune, write_private
from tests.ui.app_session import APP
from widgets.uploads import UPLOAD_KEEP, UPLOAD_MAX_AGE_S, save_upload

PROMPTS = b'{"prompt": "Say hello."}\n{"prompt": "Name a colour."}\n'


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def shared_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /tmp: whatever Preflight puts in the shared temp folder shows up here."""
    tmp = tmp_path / "shared-tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_home_is_the_env_folder_and_private_files_ignore_the_umask(preflight_env: Path) -> None:
    assert preflight_home() == preflight_env
    old = os.umask(0)
    try:
        folder = private_dir("things")
        path = write_private(folder / "a.txt", b"secret")
    finally:
        os.umask(old)
    assert folder == preflight_env / "things" and path.read_bytes() == b"secret"
    assert (_mode(folder), _mode(path)) == (0o700, 0o600)
    assert [p.name for p in folder.iterdir()] == ["a.txt"]  # no temporary file left beside it


def test_an_uploaded_prompt_file_is_private_and_not_in_the_shared_temp_folder(
    preflight_env: Path, shared_tmp: Path
) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/benchmark.py").run()
    at.radio(key="bench_source").set_value("Prompt file").run()
    at.file_uploader(key="bench_dataset").set_value(("prompts.jsonl", PROMPTS, "application/jsonl")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not at.button(key="bench_run").disabled
    assert not list(shared_tmp.iterdir()), "the upload went to the shared temp folder"
    (saved,) = (preflight_env / "uploads").iterdir()
    assert saved.read_bytes() == PROMPTS and "prompts" not in saved.name  # named by content, not by the user
    assert (_mode(saved.parent), _mode(saved)) == (0o700, 0o600)


def test_uploads_are_pruned_by_age_and_count() -> None:
    stale = save_upload(b'{"prompt": "old"}\n', "old.jsonl")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(stale, (week_ago, week_ago))
    assert UPLOAD_MAX_AGE_S < 7 * 24 * 3600
    kept = [save_upload(f'{{"prompt": "p{i}"}}\n'.encode(), f"p{i}.jsonl") for i in range(UPLOAD_KEEP + 3)]
    assert not stale.exists()
    assert sorted(stale.parent.iterdir()) == sorted(kept[-UPLOAD_KEEP:])


def test_bundled_server_logs_live_in_the_private_home_and_only_the_newest_are_kept(
    preflight_env: Path, shared_tmp: Path
) -> None:
    logs = preflight_env / "logs"
    logs.mkdir(mode=0o755)
    os.chmod(logs, 0o755)  # as an older version or a loose umask may have left it
    now = time.time()
    for i in range(25):
        old = logs / f"engine-serve-old-{i:02d}.log"
        old.write_text("old log")
        os.utime(old, (now - 1000 + i, now - 1000 + i))
    unrelated = logs / "notes.txt"
    unrelated.write_text("not a server log")
    target = BundledTarget(BundledOptions(keep_logs=5))
    assert target.log_path.parent == logs and _mode(logs) == 0o700
    kept = sorted(p.name for p in logs.glob("engine-serve-*.log"))
    assert kept == [f"engine-serve-old-{i:02d}.log" for i in range(21, 25)]  # 4 old ones + this run's = 5
    assert unrelated.exists()
    assert not list(shared_tmp.iterdir())


def test_prune_keeps_the_newest_and_a_missing_folder_is_nothing_to_do(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    for i in range(4):
        (folder / f"x{i}.log").write_text("x")
        os.utime(folder / f"x{i}.log", (1000 + i, 1000 + i))
    removed = prune(folder, "*.log", keep=2)
    assert sorted(p.name for p in removed) == ["x0.log", "x1.log"]
    assert sorted(p.name for p in folder.iterdir()) == ["x2.log", "x3.log"]
    assert prune(tmp_path / "missing", "*.log", keep=0) == []
