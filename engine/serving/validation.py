"""pydantic's error messages as a person should read them: the engine's one home of this rule.

pydantic starts the message of a ValueError raised in a validator with "Value error, ",
which says nothing to a person. The HTTP errors (`serving/errors.py`) and the serve
options (`serving/options.py`) both show such messages, so both go through
`pydantic_message`. The engine imports nothing of `reports`, which keeps its own copy
(`reports.validation`), as does the planner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VALUE_ERROR_PREFIX = "Value error, "


def pydantic_message(err: Mapping[str, Any]) -> str:
    """One error's message (an item of `ValidationError.errors()`), without pydantic's "Value error, " prefix."""
    return str(err.get("msg", "invalid value")).removeprefix(VALUE_ERROR_PREFIX)
