"""The files a readiness run is judged by, and the one loader of each.

A run can be handed three files: a saved benchmark result to judge instead of measuring
(`--from`), a plan from the planner (`--plan`) and an SLO profile file (`--slo`). The CLI's
`Checklist` loads them through `load_inputs`, and the Checklist page checks each file the
moment it is picked through `input_problem`, which calls the very same loader. So a file
the page accepts is one the run accepts, and both say what is wrong in the same words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checks.readiness.slo import SloProfileError, load_profile
from reports.benchmark_result import BenchmarkResult, load_benchmark_result
from reports.slo_profile import SloProfile
from reports.store import DocumentError

PLAN_HINT = "write it with python -m planner recommend --json"
INPUT_ERRORS = (DocumentError, SloProfileError, ValueError)  # what a loader raises for a bad file: one line each


def load_plan(path: Path) -> dict[str, Any]:
    """A plan the planner wrote as JSON (`recommend --json`); ValueError with one line for anything else."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read the plan {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
        raise ValueError(f"the plan {path} is not JSON; {PLAN_HINT}") from None
    if not isinstance(data, dict) or not isinstance(data.get("options"), list):
        raise ValueError(f"the plan {path} has no 'options' list; {PLAN_HINT}")
    return data


# ChecklistConfig's file field -> its loader. The page and the runner both go through this table.
LOADERS: dict[str, Callable[[Path], Any]] = {
    "slo": load_profile,
    "from_path": load_benchmark_result,
    "plan_path": load_plan,
}


@dataclass(frozen=True, slots=True)
class JudgingInputs:
    """What a run is judged by: the profile, a result measured earlier (or None: measure now), a plan (or None)."""

    slo: SloProfile
    given: BenchmarkResult | None
    plan: dict[str, Any] | None


def load_inputs(slo: str, from_path: Path | None, plan_path: Path | None) -> JudgingInputs:
    """Load every file a run names, before anything runs; one of INPUT_ERRORS with one line for a bad one."""
    return JudgingInputs(
        slo=LOADERS["slo"](slo),
        given=LOADERS["from_path"](from_path) if from_path else None,
        plan=LOADERS["plan_path"](plan_path) if plan_path else None,
    )


def input_problem(field: str, path: Path) -> str | None:
    """Why the file for `field` ('slo', 'from_path' or 'plan_path') cannot be used, in one line; None if it can."""
    try:
        LOADERS[field](path)
    except INPUT_ERRORS as exc:
        return str(exc)
    return None
