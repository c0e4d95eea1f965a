"""`serve --step-log`: the line each engine step appends, idle publishes skipped, and failures that never
reach the engine thread. The real server writing it is checked in test_server_engine.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from engine.batch.batch_engine import StepResult, TokenOutput
from engine.batch.loop import EngineSnapshot
from engine.errors import EngineError
from engine.serving.options import ServerOptions
from engine.serving.step_log import StepLog

SNAP = EngineSnapshot(num_running=2, num_waiting=1, kv_cache_usage=0.25)


def _step(started_s: float = 12.5, step_s: float = 0.0125) -> StepResult:
    outputs = [TokenOutput(0, [5], None, False, None), TokenOutput(1, [6, 7], None, True, "length")]
    return StepResult(
        outputs=outputs,
        num_prefill_tokens=30,
        num_decode_tokens=3,
        num_decode_seqs=1,
        num_preempted=1,
        forward_s=0.01,
        draft_s=0.001,
        started_s=started_s,
        step_s=step_s,
    )


def test_each_step_is_one_json_line_with_its_time_tokens_and_sequences(tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    log = StepLog(path)
    log(_step(), SNAP)
    log(StepResult(), SNAP)  # the loop's idle publish: no step ran, no line
    log(_step(started_s=12.6), SNAP)
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "t": 12.5,
        "step_ms": 12.5,
        "forward_ms": 10.0,
        "draft_ms": 1.0,
        "prefill_tokens": 30,
        "decoding": 1,
        "decode_tokens": 3,
        "sequences": 2,
        "tokens": 3,
        "preempted": 1,
        "running": 2,
        "waiting": 1,
        "kv_usage": 0.25,
    }
    assert [line["t"] for line in lines] == [12.5, 12.6]


def test_a_log_is_appended_to_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    for _ in range(2):
        log = StepLog(path)
        log(_step(), SNAP)
        log.close()
    assert len(path.read_text().splitlines()) == 2


def test_an_unwritable_path_is_one_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="cannot write the step log .*missing"):
        StepLog(tmp_path / "missing" / "steps.jsonl")


def test_a_failed_write_is_said_once_and_logging_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = StepLog(tmp_path / "steps.jsonl")
    log._file.close()  # type: ignore[union-attr] - as if the file went away under the server
    with caplog.at_level(logging.WARNING, logger="preflight.server"):
        log(_step(), SNAP)  # must not raise on the engine thread
        log(_step(), SNAP)
    assert [r.getMessage() for r in caplog.records if "step log" in r.getMessage()] == [
        f"the step log {tmp_path / 'steps.jsonl'} stopped: I/O operation on closed file."
    ]


def test_server_options_take_a_step_log_path() -> None:
    assert ServerOptions(step_log="steps.jsonl").step_log == "steps.jsonl"
    assert ServerOptions().step_log is None
