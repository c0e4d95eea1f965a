"""An engine study as a dashboard job: run in a child process like a benchmark or a checklist.

A study can take minutes, and run inside the page it would block that session, be lost on a
reload and could start twice from two tabs. As a job it has the job runner's guarantees: one
at a time per dashboard, visible from any tab, stoppable, and saved to the history by the child.

A study keeps no partial table, so Stop ends it at the next measured point with nothing kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from checks.load.targets import TargetCancelled
from reports.study_report import StudyReport

STOPPED = "stopped: a study keeps no partial table, so nothing was measured"


class StudyConfig(BaseModel):
    """Which study, with which `engine.studies.base.StudyOptions` fields (the defaults for those left out)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["kv", "quant", "batch", "precision", "compress"]
    options: dict[str, Any] = {}

    @classmethod
    def of(cls, name: str, options: object) -> StudyConfig:
        """The config of a `StudyOptions` the page built."""
        return cls(name=name, options=asdict(options))  # type: ignore[call-overload]


def run_study(
    config: StudyConfig,
    progress: Callable[[Any], None] | None = None,
    cancel: threading.Event | None = None,
    on_status: Callable[[str], None] | None = None,
) -> StudyReport:
    """The job's work: the study on this machine, as the document the history keeps."""
    from engine.studies.registry import STUDIES, StudyOptions
    from engine.study_cli import study_document

    options = StudyOptions(**config.options)  # ValueError for a bad size: the job's error

    def say(message: str) -> None:
        if cancel is not None and cancel.is_set():
            raise TargetCancelled(STOPPED)
        if on_status is not None:
            on_status(message)

    started = datetime.now(UTC)
    return study_document(config.name, options, STUDIES[config.name](options, progress=say), started)
