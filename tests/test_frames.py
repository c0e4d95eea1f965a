"""Chart tables come from the raw records: hand-made result documents, no server."""

from __future__ import annotations

import pytest

from checks.load.frames import request_frame, throughput_frame, throughput_window_s
from checks.load.records import RequestRecord, TokenSource


def _record(rid: int, send: float, chunks: list[float], warmup: bool = False) -> dict:
    return RequestRecord(
        request_id=rid, scheduled_s=None, ready_s=send, send_s=send, first_token_s=chunks[0], chunk_times_s=chunks,
        chunk_tokens=[1] * len(chunks), end_s=chunks[-1], input_tokens=8, output_tokens=len(chunks),
        token_source=TokenSource.USAGE, ok=True, http_status=200, error_kind=None, error_excerpt=None, warmup=warmup,
    ).to_dict()  # fmt: skip


def _result(duration_s: float, records: list[dict]) -> dict:
    return {"runs": [{"profile": "concurrency:2", "summary": {"duration_s": duration_s}, "records": records}]}


@pytest.mark.parametrize(("duration", "window"), [(60.0, 1.0), (20.0, 1.0), (10.0, 0.5), (0.5, 0.1), (0.0, 0.1)])
def test_short_runs_get_shorter_windows(duration: float, window: float) -> None:
    assert throughput_window_s(_result(duration, [])) == window


def test_throughput_counts_chunk_tokens_in_their_window_from_the_first_send() -> None:
    records = [_record(0, 0.0, [0.05, 0.15, 0.25]), _record(1, 0.1, [0.12, 0.31]), _record(2, 9.0, [9.5], warmup=True)]
    frame = throughput_frame(_result(0.31, records), window_s=0.1)
    assert frame["output_tok_s"].tolist() == pytest.approx([10.0, 20.0, 10.0, 10.0])  # tokens / 0.1 s per window
    assert request_frame(_result(0.31, records))["request_id"].tolist() == [0, 1]  # warm-up left out
