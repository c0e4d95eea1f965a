"""The converted-weights cache under faults: a cache that cannot be written, a failed write, and
several processes writing and reading one entry at the same time.

Unwritable caches are made in ways that hold for root too (tests may run as root, where a
read-only mode does not stop writes): a cache path that runs through a regular file, and an
entry path taken by a directory. The read-only-mode variant runs only for other users.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import WeightCacheError
from engine.model.loader import load_model
from engine.model.weight_cache import CACHE_VERSION, CacheEntry, load_entry, save_entry

REPO = Path(__file__).resolve().parents[2]
STATE = {"w": torch.arange(1024, dtype=torch.float32)}
MANIFEST = {"cache_version": CACHE_VERSION, "format": "fp32"}


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.tmp"))


def test_a_cache_path_through_a_file_is_a_weight_cache_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    entry = CacheEntry.for_key("k", blocker / "engine")
    with pytest.raises(WeightCacheError, match="cannot write the weight cache entry"):
        save_entry(entry, STATE, MANIFEST)
    assert not entry.exists()


def test_a_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    entry = CacheEntry.for_key("k", tmp_path)
    entry.manifest.mkdir()  # the manifest's place is taken: the last rename fails
    (entry.manifest / "x").write_text("")
    with pytest.raises(WeightCacheError):
        save_entry(entry, STATE, MANIFEST)
    assert leftovers(tmp_path) == []


def test_a_manifest_that_cannot_be_written_leaves_no_temp_file(tmp_path: Path) -> None:
    entry = CacheEntry.for_key("k", tmp_path)
    with pytest.raises(TypeError):
        save_entry(entry, STATE, {"not json": object()})
    assert leftovers(tmp_path) == []
    assert not entry.exists()


def test_a_killed_writer_s_temp_files_are_removed_by_the_next_write(tmp_path: Path) -> None:
    entry = CacheEntry.for_key("k", tmp_path)
    (tmp_path / f"{entry.temp_prefix}abc123.tmp").write_bytes(b"half a file")
    save_entry(entry, STATE, MANIFEST)
    assert leftovers(tmp_path) == []
    state, _ = load_entry(entry)
    assert torch.equal(state["w"], STATE["w"])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through a read-only mode")
def test_a_read_only_cache_dir_is_a_weight_cache_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(WeightCacheError):
            save_entry(CacheEntry.for_key("k", tmp_path), STATE, MANIFEST)
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.slow
def test_the_model_loads_when_the_cache_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("PREFLIGHT_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING, logger="preflight.engine"):
        loaded = load_model(None, "fp32", "cpu")
    assert loaded.source == "gguf"
    assert any(note.startswith("weight cache not written") for note in loaded.kernel_notes)
    assert "cannot write the weight cache entry" in caplog.text


# Writes the same entry `rounds` times (like two servers converting one model at once), or reads
# it `rounds` times once it exists; prints one line per failure and exits 1 if there was any.
WORKER = """
import sys, time
import torch
from pathlib import Path
from engine.errors import WeightCacheError
from engine.model.weight_cache import CACHE_VERSION, CacheEntry, load_entry, save_entry

role, root, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
entry = CacheEntry.for_key("shared", root)
state = {"w": torch.arange(4 * 1024 * 1024, dtype=torch.float32)}
failures = 0
for _ in range(rounds):
    try:
        if role == "write":
            save_entry(entry, state, {"cache_version": CACHE_VERSION})
        else:
            while not entry.exists():
                time.sleep(0.01)
            got, _ = load_entry(entry)
            assert torch.equal(got["w"], state["w"]), "a reader saw other bytes"
    except (OSError, WeightCacheError, AssertionError) as exc:
        failures += 1
        print(f"{role}: {type(exc).__name__}: {exc}", flush=True)
sys.exit(1 if failures else 0)
"""


def test_three_writers_and_a_reader_share_one_entry(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    roles = [("write", 16), ("write", 16), ("write", 16), ("read", 40)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, role, str(tmp_path), str(rounds)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for role, rounds in roles
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(roles), "\n".join(outputs)[-3000:]
    assert leftovers(tmp_path) == []
    state, _ = load_entry(CacheEntry.for_key("shared", tmp_path))
    assert state["w"].numel() == 4 * 1024 * 1024
