"""An engine study as a dashboard job (checks/study_job.py): its config, a bad size, and Stop."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from checks.jobs import JobKind, JobState, new_job
from checks.load.targets import TargetCancelled
from checks.study_job import STOPPED, StudyConfig, run_study
from engine.studies.registry import StudyOptions


def test_the_config_holds_the_pages_options_and_refuses_unknown_studies() -> None:
    config = StudyConfig.of("kv", StudyOptions(kv_lengths=(16, 32), kv_tokens=4))
    assert config.options["kv_lengths"] == (16, 32) and config.options["kv_tokens"] == 4
    with pytest.raises(ValidationError):
        StudyConfig(name="everything")
    with pytest.raises(ValidationError):
        StudyConfig(name="kv", surprise=1)


def test_a_size_the_study_refuses_is_the_jobs_error() -> None:
    job = new_job(JobKind.STUDY, StudyConfig(name="kv", options={"kv_tokens": 1})).start()
    assert job.wait(300)
    snap = job.snapshot()
    assert snap.state == JobState.FAILED and "kv tokens must be at least 2" in (snap.error or "")


def test_stop_ends_the_study_at_its_next_point_with_nothing_kept() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(TargetCancelled, match="keeps no partial table"):
        run_study(
            StudyConfig(name="kv", options={"device": "cpu", "threads": 1, "kv_lengths": (16,), "kv_tokens": 4}),
            cancel=stop,
        )
    assert STOPPED.startswith("stopped: ")


@pytest.mark.slow
def test_stop_reaches_into_a_compression_that_is_running() -> None:
    """The compress study passes its progress to the compressor, so Stop ends it mid-method, not after it."""
    stop = threading.Event()
    seen: list[str] = []

    def status(message: str) -> None:
        seen.append(message)
        if message.startswith("compress: round-to-nearest"):  # the compressor's own first line
            stop.set()

    options = {"device": "cpu", "threads": 1, "compress_settings": ("fp32", "rtn-g128")}
    options |= {"eval_max_tokens": 32, "eval_window": 32, "quant_prompt_tokens": 16, "quant_decode_tokens": 2}
    with pytest.raises(TargetCancelled, match="keeps no partial table"):
        run_study(StudyConfig(name="compress", options=options), cancel=stop, on_status=status)
    assert seen[-1].startswith("compress: round-to-nearest")
