"""Who a saved document is: its id and the user's label, and the migration that gave old files both.

The id names the document everywhere a person or a pipeline refers to it: the history's
file name, `python -m reports show ID`, the two sides of a comparison. It is made when
the document is made (UTC time first, so ids sort by age, then random hex, so two runs in
the same second differ), and it is restricted to letters, digits, '.', '_' and '-' so
that it is always a safe file name: an id read from a hostile file cannot name a path.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"
LABEL_MAX_CHARS = 200

DocumentId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=LABEL_MAX_CHARS)]


def new_document_id(now: datetime | None = None) -> str:
    """'20261204-181522-3fa9c1': when (UTC, to the second), then 24 random bits."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{when:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def id_from_content(data: dict[str, Any]) -> str:
    """A stable id for a file written before documents had one: the same file always gets the same id."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return f"v1-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def add_identity(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2 of every document kind: an id (from the content) and no label; nothing else changes."""
    return {**data, "schema_version": 2, "id": id_from_content(data), "label": None}
