"""The Benchmark page in Streamlit's AppTest: its form, its validation, and one tiny real run.

The run starts the bundled engine server (one torch thread) from the page's background
job, and the test reruns the page until the job ends, as the page's live fragment would.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from checks.jobs import Job, JobState
from reports.benchmark_result import parse_benchmark_result
from widgets.target import TARGET_NEEDED

PAGE = "app_pages/benchmark.py"
RUN_DEADLINE_S = 180.0


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_renders_the_form_and_asks_for_a_run(page: AppTest) -> None:
    assert page.title[0].value == "Benchmark"
    assert page.radio(key="target_kind").value == "Bundled engine"
    assert page.selectbox(key="target_quant").value == "int4"
    assert page.selectbox(key="bench_profile").value == "concurrency"
    assert not _errors(page)
    assert "press Run benchmark" in page.info[0].value
    assert not page.button(key="bench_run").disabled
    assert page.checkbox(key="bench_step_log").value  # a bundled server keeps its step log by default


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1:8000"])
def test_invalid_remote_url_shows_an_error_and_disables_run(page: AppTest, url: str) -> None:
    page.radio(key="target_kind").set_value("Remote endpoint").run()
    page.text_input(key="target_url").input(url).run()
    assert not page.exception
    assert _errors(page) == [f"target {url!r}: use 'bundled', 'bundled:QUANT' or an http(s):// URL"]
    assert page.button(key="bench_run").disabled
    page.text_input(key="target_url").input("http://127.0.0.1:8000/v1").run()
    assert not _errors(page)
    assert not page.button(key="bench_run").disabled
    assert not [c for c in page.checkbox if c.key == "bench_step_log"]  # a remote server writes no step log


def test_an_empty_remote_url_asks_for_one_without_an_error(page: AppTest) -> None:
    page.radio(key="target_kind").set_value("Remote endpoint").run()
    assert not page.exception and not _errors(page)  # nothing typed yet: a hint, not a red error
    assert TARGET_NEEDED in [i.value for i in page.info]
    assert page.button(key="bench_run").disabled


def test_prompt_file_source_without_a_file_disables_run(page: AppTest) -> None:
    page.radio(key="bench_source").set_value("Prompt file").run()
    assert not page.exception
    assert _errors(page) == ["no prompt file given: choose a JSONL or ShareGPT JSON file"]
    assert page.button(key="bench_run").disabled


def test_a_recorded_trace_brings_its_own_schedule(page: AppTest) -> None:
    page.radio(key="bench_source").set_value("Recorded trace").run()
    assert not page.exception
    assert page.selectbox(key="bench_trace_profile").value == "trace"
    assert _errors(page) == ["no trace file given: choose an Azure CSV or Mooncake JSONL trace"]
    assert page.button(key="bench_run").disabled
    page.number_input(key="bench_trace_sample").set_value(0.05).run()  # thinning: BenchmarkConfig.trace_sample
    assert not page.exception and page.number_input(key="bench_trace_sample").value == 0.05


def test_session_cancel_and_worker_options_reach_the_config(page: AppTest) -> None:
    assert page.number_input(key="bench_think").disabled  # no think time without a second turn
    page.number_input(key="bench_turns").set_value(3).run()
    page.number_input(key="bench_think").set_value(250.0).run()
    page.number_input(key="bench_cancel_pct").set_value(10.0).run()
    assert not page.exception and not _errors(page)
    page.number_input(key="bench_workers").set_value(2).run()
    assert _errors(page) == ["--workers splits single requests; run multi-turn sessions with one worker"]
    page.number_input(key="bench_turns").set_value(1).run()
    page.number_input(key="bench_concurrency").set_value(1).run()
    assert _errors(page) == ["concurrency 1 cannot keep 2 workers busy: use at most 1"]
    assert page.button(key="bench_run").disabled


def test_tiny_bundled_run_shows_its_results(page: AppTest) -> None:
    page.number_input(key="target_threads").set_value(1)
    page.number_input(key="bench_input_len").set_value(16)
    page.number_input(key="bench_output_len").set_value(4)
    page.number_input(key="bench_concurrency").set_value(2)
    page.number_input(key="bench_requests").set_value(2)
    page.number_input(key="bench_warmup").set_value(0)
    page.run()
    assert not page.exception and not _errors(page)
    page.button(key="bench_run").click().run()
    assert not page.exception
    assert page.button(key="bench_run").disabled  # at once, not only when the job ends
    assert page.get("progress"), "no live progress while the job runs"
    job = page.session_state["bench_job"]
    assert isinstance(job, Job)
    assert job.config.profile == "concurrency:2" and job.config.threads == 1
    assert job.config.step_log and job.config.step_log.endswith(".jsonl")
    assert (job.config.requests, job.config.input_len, job.config.output_len) == (2, 16, 4)
    deadline = time.monotonic() + RUN_DEADLINE_S
    while job.snapshot().state == JobState.RUNNING and time.monotonic() < deadline:
        assert page.button(key="bench_run").disabled  # one run at a time
        time.sleep(1.0)
        page.run()
        assert not page.exception
    snap = job.snapshot()
    assert snap.state == JobState.DONE, (snap.state, snap.error)
    # the server's step log, named in the saved config: what the Plan page's calibration prices passes from
    assert snap.result.config["step_log"] == job.config.step_log
    steps = Path(job.config.step_log).read_text().splitlines()
    assert steps and all('"prefill_tokens"' in line for line in steps)
    page.run()
    assert not page.exception
    assert not _errors(page)
    assert not page.info, "the 'press Run' hint stays after a run"
    assert page.subheader[0].value == "concurrency:2"
    metrics = {m.label: m.value for m in page.metric}
    assert metrics["Completed / failed"] == "2 / 0"
    assert metrics["Output tok/s"] != "-" and metrics["Median TTFT ms"] != "-"
    assert metrics["Goodput req/s"] != "-"  # the chat profile's per-request limits by default
    table = page.dataframe[0].value
    assert list(table["metric"]) == ["TTFT", "TPOT", "ITL", "E2E latency"]
    assert table["median"].notna().all()
    assert [d.proto.label for d in page.get("download_button")] == ["Download JSON", "Download HTML"]
    assert any("Network: round trip" in c.value for c in page.caption), "the round trip is not shown beside TTFT"
    doc_id, exports = page.session_state["bench_exports"]
    text = exports["JSON"][0]
    assert doc_id == snap.result.id and parse_benchmark_result(text) == snap.result  # the file --out would write
    assert exports["HTML"][0].startswith("<!DOCTYPE html>")
    page.run()
    assert page.session_state["bench_exports"][1]["JSON"][0] is text  # built once per result, not on every rerun
    assert not page.button(key="bench_run").disabled


def test_stop_keeps_what_finished(page: AppTest) -> None:
    for key, value in (
        ("target_threads", 1),
        ("bench_input_len", 16),
        ("bench_output_len", 4),
        ("bench_concurrency", 2),
        ("bench_requests", 500),
        ("bench_warmup", 0),
    ):
        page.number_input(key=key).set_value(value)
    page.run()
    page.button(key="bench_run").click().run()
    job = page.session_state["bench_job"]
    deadline = time.monotonic() + RUN_DEADLINE_S
    while time.monotonic() < deadline:
        snap = job.snapshot()
        if snap.state != JobState.RUNNING or (snap.progress is not None and snap.progress.completed >= 2):
            break
        time.sleep(0.5)
    page.run()
    page.button(key="bench_stop").click().run()
    assert not page.exception
    assert job.wait(RUN_DEADLINE_S)
    snap = job.snapshot()
    assert snap.state == JobState.CANCELLED, (snap.state, snap.error)
    page.run()
    assert not page.exception and not _errors(page)
    summary = job.snapshot().result.runs[0].summary
    # the finished and the cancelled add up to what the live view showed as done and in flight at the Stop
    assert [w.value for w in page.warning] == [
        f"Stopped: the figures cover the {summary.completed + summary.failed} requests that finished before the "
        f"stop; the {summary.cancelled} in flight then were cancelled and are not counted."
    ]
    summary = snap.result.runs[0].summary
    assert 2 <= summary.completed < 500 and summary.failed == 0
    completed = page.metric[0]
    assert (completed.label, completed.value) == ("Completed / failed", f"{summary.completed} / 0")
