"""The planner's named errors. The CLI prints one line and exits with the error's `exit_code`; pages show st.error."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic import ValidationError

_SHOWN = reprlib.Repr()  # a bad value is echoed, but never more than a short excerpt of it
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = 40
_SHOWN.maxlist = _SHOWN.maxdict = 4
_MAX_PROBLEMS = 3
VALUE_ERROR_PREFIX = "Value error, "


def pydantic_message(err: Mapping[str, Any]) -> str:
    """One pydantic error's message without its "Value error, " prefix, which says nothing to a person.

    The planner's copy of `reports.validation.pydantic_message`: the planner imports nothing of ours."""
    return str(err.get("msg", "invalid value")).removeprefix(VALUE_ERROR_PREFIX)


def first_problem(exc: ValidationError) -> str:
    """The first error as 'field: message', or the message alone when it is about no one field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {pydantic_message(first)}" if where else pydantic_message(first)


class PlannerError(Exception):
    """Base class: a message a person can act on."""

    exit_code = 1


class CatalogError(PlannerError):
    """A data file under planner/data is missing or does not match its schema."""


class UnknownNameError(PlannerError):
    """A model, GPU, format, engine or SLO profile id that is not in the catalog."""

    def __init__(self, kind: str, name: str, suggestions: list[str], known: list[str]) -> None:
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f"did you mean {', '.join(suggestions)}?" if suggestions else f"known: {', '.join(known)}"
        super().__init__(f"unknown {kind} {name!r}: {hint}")


class ModelFileError(PlannerError):
    """A config.json or GGUF file that cannot be read as a model: bad input, so exit 2 like a bad argument."""

    exit_code = 2

    @classmethod
    def from_validation(cls, path: Path, exc: ValidationError, prefix: str = "", aliases: dict | None = None) -> Self:
        """One line naming the file and each bad field as the file spells it (`prefix` + key).

        `aliases` maps a key to the words a missing key is reported with (e.g. "num_hidden_layers or n_layer").
        """
        problems = []
        for err in exc.errors()[:_MAX_PROBLEMS]:
            key = ".".join(str(part) for part in err["loc"])
            msg = pydantic_message(err)
            if err["type"] == "missing":
                problems.append(f"lacks {prefix}{(aliases or {}).get(key, key)}")
            elif key:
                problems.append(f"{prefix}{key}: {msg}, got {_SHOWN.repr(err['input'])}")
            else:  # a rule across fields: its message names them, prefix included
                problems.append(msg)
        more = exc.error_count() - _MAX_PROBLEMS
        return cls(f"{path}: {'; '.join(problems)}" + (f" (and {more} more)" if more > 0 else ""))


class WorkloadError(PlannerError):
    """A workload that no hardware could serve as asked (context, lengths, concurrency)."""


class CustomGpuError(PlannerError):
    """A `--gpu custom:...` device that does not parse: bad input, so exit 2 like a bad argument."""

    exit_code = 2
