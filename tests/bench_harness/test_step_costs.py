"""bench/step_costs.py: pass prices read back from a step log, and the planner's replay priced with them.

The log is written with known prices (a prompt pass costs 10 ms + 1 ms per prompt token and 2 ms per
decoding sequence beside it; a decode-only pass 4 ms + 1 ms per sequence), so the fit must find them
again; the replay of a real recorded run (one client, fixtures/bench_bundled_int4_c1.json) priced with
them must give its TTFT as one prompt pass and its TPOT as one single-sequence decode pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.step_costs import Pass, _along, fit_prices, main, read_passes, replay_rows
from planner.calibrate_cli import load_runs
from reports.benchmark_result import BenchmarkResult, load_benchmark_result

FIXTURE = Path(__file__).parent.parent / "planner" / "fixtures" / "bench_bundled_int4_c1.json"


def prompt_s(tokens: int, decoding: int) -> float:
    return 0.010 + 0.001 * tokens + 0.002 * decoding


def decode_s(decoding: int) -> float:
    return 0.004 + 0.001 * decoding


def write_log(path: Path, passes: list[tuple[int, int]], idle_after: int | None = None) -> None:
    """(decoding, prompt tokens) passes back to back; an idle second after pass `idle_after`."""
    t, lines = 100.0, []
    for i, (decoding, tokens) in enumerate(passes):
        gap = prompt_s(tokens, decoding) if tokens else decode_s(decoding)
        lines.append(
            {"t": t, "step_ms": gap * 1e3 * 0.9, "decoding": decoding, "prefill_tokens": tokens, "sequences": 1}
        )
        t += gap + (1.0 if i == idle_after else 0.0)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


PASSES = [(0, 32), (1, 0), (1, 0), (2, 64), (2, 0), (2, 0), (4, 0), (3, 100), (4, 0), (1, 50), (8, 0), (8, 0), (1, 0)]


def test_the_fit_finds_the_prices_the_log_was_written_with(tmp_path: Path) -> None:
    log = tmp_path / "steps.jsonl"
    write_log(log, PASSES)
    prices = fit_prices(read_passes([log]))
    assert prices.mixed == pytest.approx((0.010, 0.001, 0.002), abs=1e-9)
    assert prices.decode_s == pytest.approx({b: decode_s(b) for b in (1, 2, 4, 8)})
    assert prices(16) == pytest.approx(decode_s(16))  # along the last two counts' line
    assert prices(3, 120) == pytest.approx(prompt_s(120, 3))


def test_a_pass_after_an_idle_engine_is_not_a_busy_gap(tmp_path: Path) -> None:
    log = tmp_path / "steps.jsonl"
    write_log(log, PASSES, idle_after=1)
    passes = read_passes([log])
    assert len(passes) == len(PASSES) - 2  # the idle gap and the last pass (no next one) are left out
    assert all(p.gap_s < 0.5 for p in passes)


def test_between_and_beyond_the_counts_prices_follow_a_line() -> None:
    table = {1: 5.0, 4: 8.0, 8: 16.0}
    assert [_along(table, x) for x in (1, 2, 6, 12)] == [5.0, 6.0, 12.0, 24.0]
    assert _along({3: 7.0}, 9) == 7.0


def test_a_line_that_is_not_a_step_stops_the_script_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner's reader (planner/step_log.py, tested there) names the line; the script exits with it."""
    log = tmp_path / "steps.jsonl"
    write_log(log, PASSES[:1])
    log.write_text(log.read_text() + "{not json\n")
    monkeypatch.setattr("sys.argv", ["step_costs.py", str(log)])
    with pytest.raises(SystemExit, match=r"steps.jsonl:2: not a step-log line"):
        main()


def test_too_few_prompt_passes_is_one_clear_error() -> None:
    with pytest.raises(SystemExit, match="at least 3 passes with prompt tokens"):
        fit_prices([Pass(1, 0, 0.005), Pass(0, 32, 0.04)])


def test_the_replay_of_a_recorded_run_priced_from_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "steps.jsonl"
    write_log(log, PASSES)
    [run] = load_runs([str(FIXTURE)])
    [row] = replay_rows([fit_prices(read_passes([log]))], [FIXTURE])
    assert row[0] == "1"
    ttft, tpot = (float(cell.split(" / ")[1].split()[0]) for cell in row[1:3])
    assert ttft == pytest.approx(prompt_s(run.input_tokens, 0) * 1e3, abs=0.05)
    assert tpot == pytest.approx(decode_s(1) * 1e3, abs=0.05)
    out = main_output(capsys, [str(log), "--measured", str(FIXTURE), "--each"])
    assert "replayed with these prices" in out and f"/ {tpot:.1f} (" in out


def test_prompt_tokens_the_prefix_cache_served_are_not_replayed_as_prefill(tmp_path: Path) -> None:
    """A chat run's template block comes from the prefix cache: the engine never prefills it, so the replay
    must not pack it into passes (it did: 16 extra tokens a prompt put c16's waves a prompt out of step)."""
    doc = load_benchmark_result(FIXTURE)
    run = doc.runs[0]
    summary = run.summary.model_copy(update={"cached_input_tokens": 16 * run.summary.completed})
    cached = doc.model_copy(update={"runs": [run.model_copy(update={"summary": summary})]})
    path = tmp_path / "cached.json"
    path.write_text(json.dumps(BenchmarkResult.model_validate(cached.model_dump(mode="json")).model_dump(mode="json")))
    [served] = load_runs([str(path)])
    assert served.cached_input_tokens == 16
    log = tmp_path / "steps.jsonl"
    write_log(log, PASSES)
    [row] = replay_rows([fit_prices(read_passes([log]))], [path])
    ttft = float(row[1].split(" / ")[1].split()[0])
    assert ttft == pytest.approx(prompt_s(served.input_tokens - 16, 0) * 1e3, abs=0.05)


def main_output(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    import sys

    old = sys.argv
    sys.argv = ["step_costs.py", *argv]
    try:
        assert main() == 0
    finally:
        sys.argv = old
    return capsys.readouterr().out
