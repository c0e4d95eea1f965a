"""The shipped SLO profile file: its schema, and a packaging mistake named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.shipped_slo import SHIPPED_FILE, read_shipped, shipped_file_profiles


def test_the_shipped_file_reads() -> None:
    profiles = shipped_file_profiles()
    assert list(profiles)[:2] == ["chat", "batch"]
    assert all(p.source.strip() for p in profiles.values())


def _write(tmp_path: Path, **changes) -> Path:
    doc = json.loads(SHIPPED_FILE.read_text(encoding="utf-8")) | changes
    path = tmp_path / "slo_profiles.json"
    path.write_text(json.dumps(doc))
    return path


def _first(_: Path) -> dict:
    return json.loads(SHIPPED_FILE.read_text(encoding="utf-8"))["profiles"][0]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"schema_version": 2}, "schema_version: schema_version 2 is not the one this Preflight reads (1)"),
        ({"kind": "preflight.slo-profile"}, "kind: Input should be 'preflight.slo-profiles'"),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
        ({"profiles": []}, "profiles: List should have at least 1 item"),
    ],
)
def test_a_bad_file_is_one_line(tmp_path: Path, changes: dict, error: str) -> None:
    with pytest.raises(ValueError, match="slo_profiles.json: ") as info:
        read_shipped(_write(tmp_path, **changes))
    assert error in str(info.value) and "\n" not in str(info.value)


def test_a_name_twice_is_an_error(tmp_path: Path) -> None:
    first = _first(tmp_path)
    with pytest.raises(ValueError, match="profile names must be unique: chat appear"):
        read_shipped(_write(tmp_path, profiles=[first, first]))


def test_a_bad_profile_names_its_field(tmp_path: Path) -> None:
    bad = _first(tmp_path) | {"ttft_p95_ms": -1}
    with pytest.raises(ValueError, match=r"profiles\.0\.ttft_p95_ms: Input should be greater than 0"):
        read_shipped(_write(tmp_path, profiles=[bad]))


def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        read_shipped(tmp_path / "missing.json")
