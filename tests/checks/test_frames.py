"""Chart tables come from the raw records: result documents built from hand-made records, no server."""

from __future__ import annotations

import pytest
from result_docs import record, result_of, run_of

from checks.load.frames import request_frame, summary_frame, sweep_frame, throughput_frame, throughput_window_s
from checks.load.metrics import summarize
from reports.benchmark_result import BenchmarkResult, SweepDoc
from reports.records import RequestRecord


def _result(records: list[RequestRecord], duration_s: float | None = None) -> BenchmarkResult:
    summary = summarize(records)
    if duration_s is not None:  # a run of this length, without making that many records
        summary = summary.model_copy(update={"duration_s": duration_s})
    return result_of([run_of(records, summary=summary)])


@pytest.mark.parametrize(("duration", "window"), [(60.0, 1.0), (20.0, 1.0), (10.0, 0.5), (0.5, 0.1), (0.0, 0.1)])
def test_short_runs_get_shorter_windows(duration: float, window: float) -> None:
    assert throughput_window_s(_result([], duration)) == window


def test_throughput_counts_chunk_tokens_in_their_window_from_the_first_send() -> None:
    records = [record(0, 0.0, [0.05, 0.15, 0.25]), record(1, 0.1, [0.12, 0.31]), record(2, 9.0, [9.5], warmup=True)]
    frame = throughput_frame(_result(records), window_s=0.1)
    assert frame["output_tok_s"].tolist() == pytest.approx([10.0, 20.0, 10.0, 10.0])  # tokens / 0.1 s per window
    assert request_frame(_result(records))["request_id"].tolist() == [0, 1]  # warm-up left out


def test_summary_and_sweep_tables_read_the_summary() -> None:
    records = [record(0, 0.0, [0.05, 0.15, 0.25]), record(1, 0.1, [0.12, 0.31])]
    single = _result(records)
    table = summary_frame(single.runs[0])
    assert list(table["metric"]) == ["TTFT", "TPOT", "ITL", "E2E latency"]
    assert table.loc[0, "mean"] == pytest.approx(single.runs[0].summary.mean_ttft_ms)
    assert sweep_frame(single).empty
    slow, fast = run_of(records[:1], "sync"), run_of(records, "concurrency:2")
    sweep = result_of([fast, slow], SweepDoc(max_rate_meeting_slo=None, stopped=None, attainment=0.95))
    frame = sweep_frame(sweep)
    assert frame["run"].tolist() == ["sync", "concurrency:2"]  # ordered by achieved rate
    assert frame["request_rate"].tolist() == [slow.summary.request_throughput, fast.summary.request_throughput]
