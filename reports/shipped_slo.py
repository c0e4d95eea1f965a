"""The SLO profiles Preflight ships: one file, reports/data/slo_profiles.json, one schema, one meaning per name.

The planner (`planner/slo_targets.py`) and the readiness checklist (`checks/readiness/slo.py`) both read
this file, so "chat" on the Plan page and "chat" in the Checklist are the same limits from the same
source. Each profile is a `reports.slo_profile.SloProfile`, the schema a user's own profile file and
a saved readiness report use too; only `kind` and `schema_version` are left out of each entry, since
the file as a whole carries them.

A problem with the file is a packaging bug, not bad input: it is one `ValueError` line that names
the file and the field, which each reader turns into its own error type.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reports.slo_profile import SloProfile
from reports.validation import first_problem

SHIPPED_FILE = Path(__file__).parent / "data" / "slo_profiles.json"


class ShippedProfiles(BaseModel):
    """The shipped file: what it is for, then the profiles in the order the pickers list them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    KIND: ClassVar[str] = "preflight.slo-profiles"
    SCHEMA_VERSION: ClassVar[int] = 1

    kind: Literal["preflight.slo-profiles"]
    schema_version: int = Field(description="format version of the file")
    about: str = Field(min_length=1)
    profiles: list[SloProfile] = Field(min_length=1)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != cls.SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is not the one this Preflight reads ({cls.SCHEMA_VERSION})")
        return v

    @model_validator(mode="after")
    def _names_are_unique(self) -> ShippedProfiles:
        names = [p.name for p in self.profiles]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"profile names must be unique: {', '.join(twice)} appear more than once")
        return self


def read_shipped(path: Path) -> dict[str, SloProfile]:
    """The profiles of a shipped-profiles file by name, in file order; ValueError with one line otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"shipped SLO profiles {path} cannot be read: {exc}") from None
    try:
        doc = ShippedProfiles.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path.name}: {first_problem(exc)}") from None
    return {p.name: p for p in doc.profiles}


@cache
def shipped_file_profiles() -> dict[str, SloProfile]:
    """The shipped file's profiles (read once): the set every reader starts from."""
    return read_shipped(SHIPPED_FILE)
