"""Saving and loading documents: atomic, never overwriting unasked, one clear line for every bad file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from reports.redaction import redact_url
from reports.store import DocumentError, check_writable, load, parse, save, write_text


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str] = "preflight.test-doc"
    SCHEMA_VERSION: ClassVar[int] = 2

    kind: Literal["preflight.test-doc"] = "preflight.test-doc"
    schema_version: int = 2
    value: int


def test_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    path = save(Doc(value=3), tmp_path / "sub" / "doc.json")
    assert load(path, Doc) == Doc(value=3)
    assert sorted(p.name for p in path.parent.iterdir()) == ["doc.json"]


def test_existing_file_is_kept_unless_asked(tmp_path: Path) -> None:
    path = save(Doc(value=1), tmp_path / "doc.json")
    with pytest.raises(DocumentError, match="exists"):
        save(Doc(value=2), path)
    assert load(path, Doc).value == 1
    save(Doc(value=2), path, overwrite=True)
    assert load(path, Doc).value == 2
    with pytest.raises(DocumentError, match="exists"):
        write_text(path, "x")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".doc", "doc"))) == ["doc.json"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not a JSON document"),
        ("[1, 2]", "expected a JSON object"),
        ('{"value": 1}', "not a Preflight document"),
        ('{"kind": "preflight.readiness-report", "schema_version": 1}', "is a 'preflight.readiness-report' document"),
        ('{"kind": "preflight.test-doc", "schema_version": 3, "value": 1}', "schema_version 3, written by a newer"),
        ('{"kind": "preflight.test-doc", "schema_version": "2", "value": 1}', "must be a positive integer"),
        ('{"kind": "preflight.test-doc", "schema_version": 2, "value": 1, "extra": 0}', "extra: Extra inputs"),
        ('{"kind": "preflight.test-doc", "schema_version": 2, "value": "x"}', "value: Input should be"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_bad_documents_are_one_line(text: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message) as info:
        parse(text, Doc, "doc.json")
    assert "\n" not in str(info.value)


def test_missing_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="no such file"):
        load(tmp_path / "nope.json", Doc)
    with pytest.raises(DocumentError, match="is a folder"):
        load(tmp_path, Doc)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_found_before_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(DocumentError, match="not writable"):
        check_writable(folder / "report.json")


def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "deeper" / "report.json")
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(DocumentError, match="exists"):
        check_writable(tmp_path / "old.json")
    check_writable(tmp_path / "old.json", overwrite=True)
    with pytest.raises(DocumentError, match="folder"):
        check_writable(tmp_path, overwrite=True)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:sk-secret@gw.example:8443/v1?api_key=sk-secret#frag", "https://gw.example:8443/v1"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://[::1]:8000/?key=x", "http://[::1]:8000/"),
        ("bundled:int4", "bundled:int4"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
