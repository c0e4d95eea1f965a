"""The planner's named errors. The CLI prints one line and exits 1; pages show st.error."""

from __future__ import annotations


class PlannerError(Exception):
    """Base class: a message a person can act on."""


class CatalogError(PlannerError):
    """A data file under planner/data is missing or does not match its schema."""


class UnknownNameError(PlannerError):
    """A model, GPU, format, engine or SLO profile id that is not in the catalog."""

    def __init__(self, kind: str, name: str, suggestions: list[str], known: list[str]) -> None:
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f"did you mean {', '.join(suggestions)}?" if suggestions else f"known: {', '.join(known)}"
        super().__init__(f"unknown {kind} {name!r}: {hint}")


class ModelFileError(PlannerError):
    """A config.json or GGUF file that cannot be read as a model."""


class WorkloadError(PlannerError):
    """A workload that no hardware could serve as asked (context, lengths, concurrency)."""
