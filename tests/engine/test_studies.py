"""The measured studies (kv, quant, batch) end to end on the real engine with tiny sizes, plus CLI and page."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from engine.cli import main
from engine.model.gguf_file import GGUFModelFile, bundled_model_path
from engine.model.tokenizer import Tokenizer
from engine.studies.batch import batch_prompts
from engine.studies.quant import eval_windows, quality
from engine.studies.registry import (
    STUDIES,
    StudyOptions,
    StudyResult,
    eval_text,
    format_study,
    parse_formats,
    parse_sizes,
    study_frame,
)
from reports.history import History
from reports.home import history_dir
from reports.study_report import StudyReport
from tests.ui.app_session import open_app

# One torch thread: on a 2-core machine shared with other jobs, two spinning OpenMP threads per
# process oversubscribe the cores and a tiny study takes 10x longer. Tests check behaviour, not speed.
KV = StudyOptions(device="cpu", threads=1, kv_lengths=(16, 32), kv_tokens=4)
BATCH = StudyOptions(device="cpu", threads=1, batch_sizes=(1, 2), batch_steps=4, batch_prompt_tokens=16)
QUANT = StudyOptions(
    device="cpu",
    threads=1,
    quant_formats=("fp32", "int4"),
    quant_prompt_tokens=32,
    quant_decode_tokens=4,
    eval_max_tokens=96,
    eval_window=48,
    quant_cold_load=False,  # a cold load converts from the GGUF (~10 s a format); the full study times it
)


# --- pure units, no model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("32,64", (32, 64)), (" 1, 2 ,4 ", (1, 2, 4)), ("512", (512,))],
)
def test_parse_sizes(text: str, expected: tuple[int, ...]) -> None:
    assert parse_sizes(text) == expected


@pytest.mark.parametrize("text", ["", "0", "1,x", "-4", "2.5"])
def test_parse_sizes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="comma-separated positive integers"):
        parse_sizes(text)


def test_parse_formats() -> None:
    assert parse_formats("fp32, int4") == ("fp32", "int4")
    with pytest.raises(ValueError, match="weight formats from fp32"):
        parse_formats("fp32,int3")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kv_tokens": 1}, "kv tokens must be at least 2"),
        ({"kv_lengths": (16, 4), "kv_tokens": 4}, "every kv length must exceed kv tokens"),
        ({"batch_sizes": (0,)}, "batch sizes must be positive"),
        ({"batch_steps": 0}, "batch steps must be at least 1"),
        ({"quant_formats": ("int3",)}, "quant formats must be some of"),
        ({"quant": "q4"}, "unknown weight format 'q4'"),
        ({"eval_window": 1}, "eval window and eval max tokens must be at least 2"),
    ],
)
def test_options_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StudyOptions(**kwargs)


def test_eval_windows_cover_the_text_and_drop_a_single_token_tail() -> None:
    assert eval_windows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert eval_windows(9, 4) == [(0, 4), (4, 8)]
    assert eval_windows(3, 512) == [(0, 3)]


def test_quality_of_identical_and_uniform_distributions() -> None:
    torch.manual_seed(0)
    ref = torch.log_softmax(torch.randn(6, 10), -1)
    targets = torch.randint(0, 10, (6,))
    same = quality(ref, ref, targets)
    assert same["mean_kl_nats"] == 0.0 and same["top1_agreement"] == 1.0
    uniform = torch.full((6, 10), -math.log(10))
    scores = quality(uniform, ref, targets)
    assert scores["perplexity"] == pytest.approx(10.0)
    assert scores["mean_kl_nats"] > 0


def test_batch_prompts_are_distinct_equal_length_slices() -> None:
    ids = list(range(100))
    prompts = batch_prompts(ids, 4, 10)
    assert [len(p) for p in prompts] == [10] * 4
    assert len({tuple(p) for p in prompts}) == 4
    with pytest.raises(ValueError, match="too few for 32 distinct prompts"):
        batch_prompts(list(range(20)), 32, 16)


def test_format_study_states_conditions_and_marks_missing_values() -> None:
    result = StudyResult(
        "batch",
        {"torch_threads": 2, "batch_sizes": [1, 2]},
        [{"batch_size": 1, "prefill_s": 0.5, "decode_s": None, "kv_cache_bytes": 2**20}],
        ["a note"],
    )
    text = format_study(result)
    lines = text.splitlines()
    assert lines[0].startswith("Batch study")
    assert set(lines[1]) == {"="} and "torch threads         2" in lines and "batch sizes           1, 2" in lines
    header = next(line for line in lines if "agg tok/s" in line)
    row = lines[lines.index(header) + 2].split()
    assert row[:3] == ["1", "0.500", "n/a"] and row[5] == "1.0"
    assert lines[-1] == "- a note"
    assert study_frame(result)["kv_cache_mib"].tolist() == [1.0]


def test_the_shipped_eval_text_is_1200_to_1500_tokens() -> None:
    tokenizer = Tokenizer.from_gguf(GGUFModelFile(bundled_model_path()))
    assert 1200 <= len(tokenizer.encode(eval_text())) <= 1500


# --- the real engine, tiny sizes --------------------------------------------------------------


@pytest.mark.slow
def test_kv_study_measures_both_paths() -> None:
    messages: list[str] = []
    threads_before = torch.get_num_threads()
    result = STUDIES["kv"](KV, progress=messages.append)
    assert torch.get_num_threads() == threads_before
    assert result.name == "kv" and result.conditions["kv_lengths"] == [16, 32]
    assert result.conditions["torch_threads"] == 1
    assert {
        "torch_threads",
        "torch",
        "model",
        "format",
        "date",
        "load_avg_1m",
        "load_avg_1m_end",
    } <= result.conditions.keys()
    assert [r["seq_len"] for r in result.rows] == [16, 32]
    for row in result.rows:
        assert row["prompt_tokens"] == row["seq_len"] - 4 and row["output_tokens"] == 4
        for key in ("cached_decode_tok_s", "uncached_decode_tok_s", "cached_total_s", "uncached_total_s"):
            assert row[key] > 0, key
        assert row["decode_speedup"] == pytest.approx(row["cached_decode_tok_s"] / row["uncached_decode_tok_s"])
    assert any("cache off" in m for m in messages)
    assert json.loads(json.dumps(result.to_dict()))["schema_version"] == 1


@pytest.mark.slow
def test_batch_study_measures_throughput_latency_and_memory() -> None:
    result = STUDIES["batch"](BATCH, progress=None)
    assert [r["batch_size"] for r in result.rows] == [1, 2]
    one, two = result.rows
    for row in result.rows:
        assert row["aggregate_tok_s"] > 0 and row["per_token_latency_ms"] > 0 and row["prefill_s"] > 0
        assert row["aggregate_tok_s"] == pytest.approx(row["batch_size"] * 4 / row["decode_s"])
        assert row["rss_peak_bytes"] > 0 and row["rss_peak_delta_bytes"] >= 0
        assert row["cuda_peak_bytes"] is None
    assert two["kv_cache_bytes"] == 2 * one["kv_cache_bytes"] > 0


@pytest.mark.slow
def test_quant_study_compares_formats_with_fp32() -> None:
    result = STUDIES["quant"](QUANT, progress=None)
    rows = {r["format"]: r for r in result.rows}
    assert list(rows) == ["fp32", "int4"]
    fp32, int4 = rows["fp32"], rows["int4"]
    assert fp32["mean_kl_nats"] == 0.0 and fp32["top1_agreement"] == 1.0
    assert int4["mean_kl_nats"] > 0 and 0 < int4["top1_agreement"] <= 1
    assert math.isfinite(int4["perplexity"]) and fp32["perplexity"] / 2 < int4["perplexity"] < 2 * fp32["perplexity"]
    assert int4["weight_bytes"] < fp32["weight_bytes"]
    assert int4["scored_tokens"] == fp32["scored_tokens"] == 96 - 2
    assert "Q4_1" in result.conditions["file_tensor_types"] and "format" not in result.conditions
    for row in result.rows:
        for key in ("prefill_tok_s", "decode_tok_s", "warm_load_s", "eval_s"):
            assert row[key] > 0, (row["format"], key)
        assert row["cold_load_s"] is None
    assert any("Cold loads were not measured" in note for note in result.notes)
    assert "int4" in format_study(result)


# --- CLI and page -----------------------------------------------------------------------------


def test_cli_rejects_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["study", "kv", "--lengths", "16,x"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m engine study: error: argument --lengths: expected comma-separated positive integers "
        "such as '32,64', got '16,x'"
    )
    assert main(["study", "kv", "--lengths", "4", "--tokens", "4"]) == 1
    assert capsys.readouterr().err == (
        "error: every kv length must exceed kv tokens (4) so the prompt is not empty, got (4,)\n"
    )


@pytest.mark.slow
def test_cli_kv_study_prints_the_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kv.json"
    args = [
        "study",
        "kv",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--lengths",
        "16,32",
        "--tokens",
        "4",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("KV cache study")
    assert "kv tok/s" in captured.out and "no-kv tok/s" in captured.out
    assert "kv: length 32, cache off" in captured.err
    data = json.loads(out.read_text())
    assert data["study"] == "kv" and data["schema_version"] == 1
    assert [r["seq_len"] for r in data["rows"]] == [16, 32]
    assert data["conditions"]["kv_tokens"] == 4

    # Kept in the history like every run (issue 18), with the command that repeats it.
    [entry] = History(history_dir()).entries()
    assert (entry.kind, entry.target, entry.model) == ("study", "bundled:int4", data["conditions"]["model"])
    assert f"saved in the history as {entry.id}" in captured.err
    doc = History(history_dir()).load(entry.id)
    assert isinstance(doc, StudyReport) and doc.rows == data["rows"]
    assert doc.command == "python -m engine study kv --device cpu --threads 1 --lengths 16,32 --tokens 4"
    assert main([*args[:-2], "--no-history", "--label", "x"]) == 0
    assert len(History(history_dir()).entries()) == 1


def _studies_page() -> AppTest:
    return open_app("app_pages/studies.py")


def test_studies_page_rejects_bad_sizes_and_disables_run() -> None:
    at = _studies_page()
    assert at.title[0].value == "Engine studies"
    at.text_input(key="engine_study_kv_lengths").set_value("16,nope").run()
    assert "comma-separated positive integers" in at.error[0].value
    assert at.button(key="engine_study_run").disabled


def test_studies_page_offers_the_compression_study_as_a_job() -> None:
    """The compress study: its settings (formats and catalog names, the study's defaults chosen), sizes, and Run."""
    at = _studies_page()
    at.selectbox(key="engine_study_name").set_value("compress").run()
    assert not at.exception and not at.error
    settings = at.multiselect(key="engine_study_compress_settings")
    assert list(settings.value) == list(StudyOptions().compress_settings)
    assert {"gptq-g128", "rtn-g128", "prune-2:4", "rank-0.5", "fp8"} <= set(settings.options)
    settings.set_value(["fp32", "rtn-g128"]).run()
    assert not at.button(key="engine_study_run").disabled
    settings.set_value([]).run()  # nothing to measure: the study refuses it, so Run is off
    assert "compress settings must be some of" in at.error[0].value
    assert at.button(key="engine_study_run").disabled


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The page has no threads widget; run its study on one thread (see KV above) and restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_studies_page_runs_kv_and_shows_chart_table_and_download() -> None:
    at = _studies_page()
    at.selectbox(key="engine_study_name").set_value("kv")
    at.text_input(key="engine_study_kv_lengths").set_value("16,32")
    at.number_input(key="engine_study_kv_tokens").set_value(4)
    at.button(key="engine_study_run").click().run()
    job = at.session_state["engine_study_job"]  # a dashboard job, in a child process (checks/study_job.py)
    assert job.kind == "study" and job.wait(600), "the study job did not end"
    at.run()
    assert not at.exception
    assert not at.error, [e.value for e in at.error]
    result = job.snapshot().result
    assert [r["seq_len"] for r in result.rows] == [16, 32]
    assert at.get("vega_lite_chart"), "no chart was drawn"
    assert at.dataframe[0].value["seq_len"].tolist() == [16, 32]
    assert len(at.get("download_button")) == 3, "JSON, HTML and Markdown downloads"
    # Saved in the history, and the Reports page opens it with the same view.
    [entry] = History(history_dir()).entries()
    assert entry.id == result.id and entry.kind == "study"
    at.switch_page("app_pages/reports.py").run()
    assert not at.exception
    assert at.get("vega_lite_chart") and at.dataframe[-1].value["seq_len"].tolist() == [16, 32]
