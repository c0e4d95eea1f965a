"""Finding an SLO profile: a shipped name, or a YAML/JSON file an operator wrote.

Shipped profiles come from two places, each figure from one: reports/data/slo_profiles.json
(chat, batch, MLPerf Inference; the planner reads the same file, so a name means one thing in
both) and the load scenarios in checks/load/scenarios.py, whose TTFT/TPOT targets become
profiles here at load time rather than being copied.

Every problem is one `SloProfileError` line that names what to fix: an unknown name
lists the choices, a bad file says why it cannot be read, and a validation error names
the field (`ttft_p95_ms: Input should be greater than 0`).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from checks.load.metrics import Slo
from checks.load.scenarios import SCENARIOS, Scenario
from checks.load.sweep import DEFAULT_ATTAINMENT
from reports.shipped_slo import SHIPPED_FILE, shipped_file_profiles
from reports.slo_profile import SloProfile
from reports.validation import first_problem

MAX_PROFILE_BYTES = 1024 * 1024  # a profile is a dozen lines; anything this big is the wrong file
PROFILE_SUFFIXES = (".yaml", ".yml", ".json")


class SloProfileError(Exception):
    """A profile cannot be found, read or validated; the message is one line that says what to fix."""


def _validation_line(exc: ValidationError, source: str) -> str:
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {first_problem(exc)}{more}"


def _from_data(data: Any, source: str) -> SloProfile:
    """Validate one profile mapping; a `kind` or `schema_version` that is present must be this one's."""
    if not isinstance(data, dict):
        raise SloProfileError(f"{source}: expected a mapping of profile fields, found {type(data).__name__}")
    kind = data.get("kind", SloProfile.KIND)
    if kind != SloProfile.KIND:
        raise SloProfileError(f"{source} is a {kind!r} document, not an SLO profile ({SloProfile.KIND})")
    try:
        return SloProfile.model_validate(data)
    except ValidationError as exc:
        raise SloProfileError(_validation_line(exc, source)) from None


def scenario_profile(scenario: Scenario) -> SloProfile:
    """A load scenario's targets as a profile: TTFT at p95, TPOT at p99, goodput at the sweep's attainment.

    The scenarios give one per-request target each, without a percentile. The sweep calls a
    rate good when `DEFAULT_ATTAINMENT` (95%) of requests meet them, so TTFT is held at p95,
    the same statement. The schema has no TPOT p95, so TPOT is held at the stricter p99.
    """
    return SloProfile(
        name=scenario.name,
        description=scenario.description,
        ttft_p95_ms=scenario.ttft_target_ms,
        tpot_p99_ms=scenario.tpot_target_ms,
        min_goodput_fraction=DEFAULT_ATTAINMENT,
        source=(
            f"Preflight load scenario {scenario.name!r} (checks/load/scenarios.py SCENARIOS): TTFT target "
            f"{scenario.ttft_target_ms:g} ms from inference-optimisation guides' per-use figures, TPOT target "
            + (
                f"{scenario.tpot_target_ms:g} ms from how fast the output is consumed"
                if scenario.tpot_target_ms
                else "none (the output is used whole)"
            )
            + f"; goodput {DEFAULT_ATTAINMENT:.0%}, the sweep's attainment (checks/load/sweep.py)"
        ),
    )


@cache
def shipped_profiles() -> dict[str, SloProfile]:
    """Every shipped profile by name: the shared file's, then one per load scenario. A clash is a packaging bug."""
    try:
        profiles = dict(shipped_file_profiles())
    except ValueError as exc:
        raise SloProfileError(str(exc)) from None
    for scenario in SCENARIOS.values():
        if scenario.name in profiles:
            raise SloProfileError(f"{SHIPPED_FILE.name} defines {scenario.name!r}, which is a load scenario's name")
        profiles[scenario.name] = scenario_profile(scenario)
    return profiles


def profile_names() -> list[str]:
    """Names a user can pass to --slo, in the order they are shipped."""
    return list(shipped_profiles())


def _read_file(path: Path) -> Any:
    """The parsed contents of a YAML or JSON profile file (the suffix decides), or one line saying why not."""
    if path.suffix.lower() not in PROFILE_SUFFIXES:
        raise SloProfileError(f"{path}: an SLO profile file ends in .yaml, .yml or .json")
    try:
        size = path.stat().st_size
        if size > MAX_PROFILE_BYTES:
            raise SloProfileError(f"{path}: {size} bytes is too large for an SLO profile (at most {MAX_PROFILE_BYTES})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SloProfileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SloProfileError(f"{path} is a folder, not an SLO profile file") from None
    except UnicodeDecodeError:
        raise SloProfileError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise SloProfileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SloProfileError(f"{path}: not valid JSON ({exc})") from None
    import yaml  # only a YAML profile needs PyYAML

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise SloProfileError(f"{path}: not valid YAML{at} ({getattr(exc, 'problem', None) or exc})") from None


def load_profile(name_or_path: str | Path) -> SloProfile:
    """A shipped profile by name, else a YAML or JSON profile file; SloProfileError with one line otherwise."""
    text = str(name_or_path).strip()
    if not text:
        raise SloProfileError(f"no SLO profile given: choose one of {', '.join(profile_names())} or a file")
    shipped = shipped_profiles()
    if text in shipped:
        return shipped[text]
    path = Path(text).expanduser()
    looks_like_file = path.suffix.lower() in PROFILE_SUFFIXES or "/" in text or path.exists()
    if not looks_like_file:
        raise SloProfileError(
            f"unknown SLO profile {text!r}: choose one of {', '.join(shipped)}, or give a .yaml/.json file"
        )
    return _from_data(_read_file(path), str(path))


def goodput_slo(profile: SloProfile) -> Slo | None:
    """The profile's per-request limits as the load generator's `Slo` (what the sweep and goodput count); None
    when it sets none. The benchmark the checklist starts should use this, so capacity and goodput agree."""
    limits = profile.goodput_limits_ms()
    if not limits:
        return None
    return Slo(ttft_ms=limits.get("ttft"), tpot_ms=limits.get("tpot"), e2e_ms=limits.get("e2e"))
