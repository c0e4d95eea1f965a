"""Reading a server's step log (`serve --step-log`) into the passes a calibration prices.

The logs here are written by hand, line by line, so each expected gap is a difference of two numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.errors import PlannerError
from planner.step_log import IDLE_GAP_S, MAX_LINE_BYTES, Pass, pass_classes, read_passes


def _line(t: float, step_ms: float, decoding: int, prefill: int) -> str:
    return json.dumps({"t": t, "step_ms": step_ms, "decoding": decoding, "prefill_tokens": prefill, "running": 1})


def _log(tmp_path: Path, lines: list[str], name: str = "steps.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_busy_pass_is_priced_by_the_gap_to_the_next_ones_start(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        [
            _line(10.000, 140.0, 0, 142),  # a prompt pass; the next starts 0.5 ms after it ends
            _line(10.1405, 5.0, 1, 0),
            _line(10.1460, 5.0, 1, 0),
            _line(11.000, 5.0, 1, 0),  # ... after an idle engine: the pass before is left out
            _line(11.006, 5.0, 1, 0),  # the last line has no next pass
        ],
    )
    got = read_passes([log])
    assert [(p.decoding, p.prompt_tokens) for p in got] == [(0, 142), (1, 0), (1, 0)]
    assert [round(p.gap_s, 4) for p in got] == [0.1405, 0.0055, 0.006]


def test_passes_group_by_kind_with_their_mean_gap_and_empty_steps_are_left_out() -> None:
    passes = [Pass(1, 0, 0.005), Pass(1, 0, 0.007), Pass(0, 142, 0.14), Pass(0, 0, 0.001)]
    kinds = pass_classes(passes)
    assert [(k.decoding, k.prompt_tokens, k.passes) for k in kinds] == [(0, 142, 1), (1, 0, 2)]
    assert kinds[1].mean_s == pytest.approx(0.006) and kinds[1].busy_s == pytest.approx(0.012)


def test_several_logs_are_read_each_on_its_own_clock(tmp_path: Path) -> None:
    """A gap never spans two files: each server's log has its own first and last pass."""
    a = _log(tmp_path, [_line(1.0, 5.0, 1, 0), _line(1.006, 5.0, 2, 0)], "a.jsonl")
    b = _log(tmp_path, [_line(1.007, 5.0, 3, 0), _line(1.015, 5.0, 3, 0)], "b.jsonl")
    assert [(p.decoding, round(p.gap_s, 3)) for p in read_passes([a, b])] == [(1, 0.006), (3, 0.008)]


def test_an_idle_gap_is_measured_from_the_passs_end(tmp_path: Path) -> None:
    just_busy = 0.005 + IDLE_GAP_S * 0.9
    idle = 0.005 + IDLE_GAP_S * 1.1
    log = _log(tmp_path, [_line(0.0, 5.0, 1, 0), _line(just_busy, 5.0, 1, 0), _line(just_busy + idle, 5.0, 1, 0)])
    assert [round(p.gap_s, 6) for p in read_passes([log])] == [round(just_busy, 6)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json\n", r"steps.jsonl:1: not a step-log line"),
        ('{"t": 1}\n', r"steps.jsonl:1: a step-log line needs non-negative numbers for t, step_ms"),
        ("[1, 2]\n", r"steps.jsonl:1: a step-log line needs"),
        (_line(1.0, 5.0, 1, 0).replace('"decoding": 1', '"decoding": true') + "\n", r"needs non-negative numbers"),
        (_line(1.0, -5.0, 1, 0) + "\n", r"needs non-negative numbers"),
        (_line(1.0, 5.0, 1, 0) + "\n\n\xff\xff\n", r"steps.jsonl:3: not a step-log line"),
        ("x" * (MAX_LINE_BYTES + 10), rf"steps.jsonl:1: not a step-log line \(longer than {MAX_LINE_BYTES} bytes\)"),
    ],
)
def test_a_line_that_is_not_a_step_is_one_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "steps.jsonl"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    with pytest.raises(PlannerError, match=message):
        read_passes([path])


def test_a_missing_log_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(PlannerError, match="cannot read the step log .*nope.jsonl"):
        read_passes([tmp_path / "nope.jsonl"])
