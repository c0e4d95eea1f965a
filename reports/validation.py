"""pydantic's validation errors as the one-line messages people read, for the checks and the pages.

pydantic starts the message of a ValueError raised in a validator with "Value error, ", which
says nothing to a person; every message shown goes through `pydantic_message`, so the prefix
is dropped in one place. (The planner, which imports nothing of ours, and the engine keep
their own copy of this rule, the engine's in `engine.serving.validation`: see
tests/test_import_direction.py.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

VALUE_ERROR_PREFIX = "Value error, "


def pydantic_message(err: Mapping[str, Any]) -> str:
    """One error's message (an item of `ValidationError.errors()`), without pydantic's "Value error, " prefix."""
    return str(err.get("msg", "invalid value")).removeprefix(VALUE_ERROR_PREFIX)


def error_location(err: Mapping[str, Any]) -> str:
    """Where one error is, as dotted field names ("" for a rule across fields)."""
    return ".".join(str(part) for part in err.get("loc", ()))


def first_problem(exc: ValidationError) -> str:
    """The first error as 'field: message', or the message alone when it is about no one field."""
    first = exc.errors()[0]
    where = error_location(first)
    return f"{where}: {pydantic_message(first)}" if where else pydantic_message(first)
