"""Trace replay: the Azure and Mooncake formats, their schedule, their shared prefixes, and bad files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from checks.load.benchmark import BenchmarkConfig, build_workload
from checks.load.profiles import LoadProfile, arrival_offsets
from checks.load.tokenizer import TextTokenizer, bundled_tokenizer
from checks.load.traces import TraceError, load_trace, trace_requests

# the first rows of the published 2023 Azure code trace, in its own spelling (7 fractional digits)
AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2212440,879,55
2023-11-16 18:15:53.0000000,91,0
2023-11-16 18:16:10.5000000,1200,20
"""

STORED_TRACE_SHA256 = "f1f033ff820b98089e0f9a73ec1b46e9d5319d41febfbd18a7ce8949f2bf2385"


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return bundled_tokenizer()


def _mooncake(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_azure_rows_keep_their_gaps_and_lengths(tmp_path: Path) -> None:
    path = tmp_path / "code.csv"
    path.write_text(AZURE)
    trace = load_trace(path)
    assert trace.format == "azure" and len(trace.rows) == 5
    assert [r.input_len for r in trace.rows] == [374, 396, 879, 91, 1200]
    assert trace.rows[3].output_len == 1  # a request that wrote nothing still arrives, asking for one token
    assert trace.rows[1].arrival_s == pytest.approx(4.314579, abs=1e-6)
    assert not trace.shares_prefixes


def test_window_and_limit_stop_reading(tmp_path: Path) -> None:
    """Reading stops at the window or the limit, so a broken row past either is never parsed."""
    path = tmp_path / "code.csv"
    path.write_text(AZURE + "not,a,row\n")
    assert len(load_trace(path, window_s=10).rows) == 4  # 18:16:10.5 is 23.8 s in
    assert len(load_trace(path, limit=2).rows) == 2
    with pytest.raises(TraceError, match=r"code.csv:7: TIMESTAMP 'not'"):
        load_trace(path)


def test_speed_scales_the_schedule_and_warmup_rows_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "code.csv"
    path.write_text(AZURE)
    trace = load_trace(path)
    profile = trace.profile(speed=2.0, skip=1)
    assert profile.kind == "trace" and profile.is_rate and profile.label == "trace:code.csv x2"
    gaps = [b.arrival_s - trace.rows[1].arrival_s for b in trace.rows[1:]]
    assert arrival_offsets(profile, 10) == pytest.approx([g / 2 for g in gaps])
    assert arrival_offsets(profile, 2) == pytest.approx([0.0, gaps[1] / 2])
    with pytest.raises(TraceError, match="above 0"):
        trace.profile(speed=0)


def test_mooncake_shared_hash_ids_become_shared_token_prefixes(tmp_path: Path, tok: TextTokenizer) -> None:
    block = 16
    path = _mooncake(
        tmp_path / "mooncake.jsonl",
        [
            {"timestamp": 0, "input_length": 40, "output_length": 5, "hash_ids": [0, 1, 2]},
            {"timestamp": 0, "input_length": 35, "output_length": 6, "hash_ids": [0, 1, 3]},
            {"timestamp": 3052, "input_length": 20, "output_length": 7, "hash_ids": [4, 5]},
        ],
    )
    trace = load_trace(path, block_tokens=block)
    assert trace.format == "mooncake" and trace.shares_prefixes
    assert [r.arrival_s for r in trace.rows] == [0.0, 0.0, 3.052]
    first, second, third = trace_requests(trace, tok, seed=3)
    a, b, c = (tok.encode(r.prompt or "") for r in (first, second, third))
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert shared >= 2 * block - 1  # two shared blocks (a token may merge across the boundary)
    assert a[:4] != c[:4]  # different hash ids: different text from the start
    assert [r.max_tokens for r in (first, second, third)] == [5, 6, 7]
    assert all(r.ignore_eos and r.source.startswith("trace:mooncake.jsonl#") for r in (first, second, third))
    assert abs(first.input_tokens - 40) <= 2 and abs(third.input_tokens - 20) <= 2
    # the same seed gives the same prompts: a replay can be repeated
    assert [r.prompt for r in trace_requests(trace, tok, seed=3)] == [first.prompt, second.prompt, third.prompt]


def test_azure_prompts_share_nothing_and_have_the_recorded_lengths(tmp_path: Path, tok: TextTokenizer) -> None:
    path = tmp_path / "conv.csv"
    path.write_text(AZURE)
    requests = trace_requests(load_trace(path, limit=3), tok)
    assert [r.input_tokens for r in requests] == [374, 396, 879]
    assert [r.max_tokens for r in requests] == [44, 109, 55]
    firsts = {tok.encode(r.prompt or "")[0] for r in requests}
    assert len(firsts) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("time,in,out\n1,2,3\n", "missing timestamp, contexttokens, generatedtokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no request to replay"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,12\n", ":2: 2 columns"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,x,1\n", "ContextTokens 'x'"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,99999999,1\n", "outside"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1,1\n2023-11-16 18:15:40,1,1\n",
            ":3: this request arrives before",
        ),
        ('{"timestamp": 0, "input_length": 5}\n', ":1: output_length: Field required"),
        ('{"timestamp": -1, "input_length": 5, "output_length": 1}\n', "timestamp"),
        ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{oops\n', ":2: not a JSON object"),
        ('{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, 2, 3]}\n', "block size"),
    ],
)
def test_bad_traces_name_the_line_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.trace"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        load_trace(path)


def test_a_long_line_or_binary_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_bytes(b"{" + b" " * (2 << 20) + b"}\n")
    with pytest.raises(TraceError, match="longer than"):
        load_trace(path)
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(TraceError, match="not UTF-8"):
        load_trace(path)
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.csv")


def test_benchmark_config_replays_the_trace_schedule_after_its_warmup(tmp_path: Path, tok: TextTokenizer) -> None:
    path = tmp_path / "code.csv"
    path.write_text(AZURE)
    config = BenchmarkConfig(target="http://127.0.0.1:9", trace=str(path), requests=3, warmup_requests=1)
    assert config.profile == "trace"
    workload = build_workload(config, tok)
    assert len(workload.requests) == 4 and workload.profile.offsets is not None
    assert len(workload.profile.offsets) == 3 and workload.profile.offsets[0] == 0.0
    assert "azure trace code.csv: 4 requests" in workload.description
    # an explicit profile keeps the trace's lengths and sends them on its own schedule
    paced = build_workload(config.model_copy(update={"profile": "concurrency:2"}), tok)
    assert paced.profile == LoadProfile.parse("concurrency:2") and len(paced.requests) == 4
    with pytest.raises(ValueError, match="give the trace file"):
        BenchmarkConfig(target="http://127.0.0.1:9", profile="trace")
    with pytest.raises(ValueError, match="choose one workload"):
        BenchmarkConfig(target="http://127.0.0.1:9", trace=str(path), scenario="dialogue")


def test_trace_profile_cannot_be_typed_or_empty() -> None:
    with pytest.raises(ValueError, match="give the trace file"):
        LoadProfile.parse("trace")
    with pytest.raises(ValueError, match="no requests"):
        LoadProfile("trace", offsets=())
    with pytest.raises(ValueError, match="only a trace profile"):
        LoadProfile("poisson", rate=1.0, offsets=(0.0,))


def _busy_azure(path: Path, rows: int) -> Path:
    """`rows` requests 0.1 s apart, each of its own length, so kept rows can be told apart."""
    lines = [
        f"2023-11-16 18:{15 + i // 600:02d}:{i // 10 % 60:02d}.{i % 10}000000,{100 + i},{1 + i % 50}"
        for i in range(rows)
    ]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(lines) + "\n")
    return path


def test_sampling_keeps_about_that_share_the_same_rows_for_a_seed(tmp_path: Path) -> None:
    """Thinning: each row kept on its own with probability F, from the seed alone; F = 1 keeps every row."""
    path = _busy_azure(tmp_path / "busy.csv", 20_000)
    whole = load_trace(path)
    assert load_trace(path, sample=1.0, seed=7).rows == whole.rows
    thin = load_trace(path, sample=0.05, seed=7)
    assert 0.04 < len(thin.rows) / len(whole.rows) < 0.06
    assert load_trace(path, sample=0.05, seed=7).rows == thin.rows  # same seed, same rows: both servers see them
    assert load_trace(path, sample=0.05, seed=8).rows != thin.rows
    assert set(thin.rows) <= set(whole.rows)  # kept rows keep their recorded times and lengths
    assert "1 in 20 sampled" in thin.describe() and "sampled" not in whole.describe()
    assert thin.profile().label == "trace:busy.csv 1 in 20 sampled"


def test_sampling_comes_after_the_window_and_the_limit_counts_kept_rows(tmp_path: Path) -> None:
    path = _busy_azure(tmp_path / "busy.csv", 3000)  # 300 s of trace
    windowed = load_trace(path, window_s=60, sample=0.2, seed=1)
    # the window is trace time from the trace's first row, kept or not, and it is the same rows thinned
    assert all(r.arrival_s <= 60 for r in windowed.rows)
    assert windowed.rows == load_trace(path, sample=0.2, seed=1).rows[: len(windowed.rows)]
    limited = load_trace(path, sample=0.2, seed=1, limit=25)
    assert limited.rows == windowed.rows[:25]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_a_sample_outside_0_to_1_is_refused(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "code.csv"
    path.write_text(AZURE)
    with pytest.raises(TraceError, match=r"trace sample .*: give the share of rows to keep, above 0 and at most 1"):
        load_trace(path, sample=fraction)
    with pytest.raises(ValueError, match="trace_sample"):
        BenchmarkConfig(target="http://127.0.0.1:9", trace=str(path), trace_sample=fraction)


def test_a_sample_that_keeps_nothing_or_has_no_trace_says_so(tmp_path: Path) -> None:
    path = tmp_path / "code.csv"
    path.write_text(AZURE)
    with pytest.raises(TraceError, match="kept none of the window's 3 rows"):
        load_trace(path, window_s=5, sample=0.001, seed=0)
    with pytest.raises(ValueError, match="a trace sample thins a trace's rows: give the trace file"):
        BenchmarkConfig(target="http://127.0.0.1:9", trace_sample=0.5)


def test_benchmark_config_thins_the_trace_with_its_seed(tmp_path: Path, tok: TextTokenizer) -> None:
    path = _busy_azure(tmp_path / "busy.csv", 2000)
    config = BenchmarkConfig(
        target="http://127.0.0.1:9",
        trace=str(path),
        trace_sample=0.1,
        seed=3,
        requests=None,
        duration_s=60.0,
        warmup_requests=0,
    )
    workload = build_workload(config, tok)
    rows = load_trace(path, window_s=60.0, sample=0.1, seed=3).rows
    assert [r.max_tokens for r in workload.requests] == [r.output_len for r in rows]
    assert "1 in 10 sampled" in workload.description
    assert [r.prompt for r in build_workload(config, tok).requests] == [r.prompt for r in workload.requests]


def test_the_stored_public_trace_replays_its_first_ten_minutes() -> None:
    """bench/data holds the first 10 minutes of Azure's 2023 conversation trace, byte for byte as published
    (CRLF included; bench/data/TRACES.md gives the source and this hash)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "data" / "azure-llm-conv-2023-first-10min.csv"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == STORED_TRACE_SHA256
    trace = load_trace(path)
    assert (trace.format, len(trace.rows), trace.rows[0].input_len) == ("azure", 2867, 374)
    assert 599 < trace.rows[-1].arrival_s <= 600
    assert load_trace(path, window_s=600).rows == trace.rows
