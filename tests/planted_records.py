"""Records of a planted closed-loop run whose true latency distribution is known, for comparison tests.

`concurrency` slots each send the next request when the last one ends; TTFT and every
inter-token gap are lognormal around the given medians. Two calls with different seeds
and the same figures are two runs of one deployment; changing a figure plants a real
difference of known size.
"""

from __future__ import annotations

import numpy as np

from reports.records import RequestRecord, TokenSource


def planted_records(
    seed: int,
    n: int = 200,
    ttft_ms: float = 100.0,
    tpot_ms: float = 20.0,
    out_tokens: int = 32,
    concurrency: int = 4,
    sigma: float = 0.3,
    shared_sigma: float = 0.0,
) -> list[RequestRecord]:
    """`shared_sigma` > 0 makes the requests of one round (`concurrency` consecutive sends) share a slowdown
    factor, as requests batched together on a real server do: their latencies are then correlated."""
    rng = np.random.default_rng(seed)
    slots = [0.0] * concurrency
    out = []
    shared = 1.0
    for rid in range(n):
        if rid % concurrency == 0:
            shared = float(rng.lognormal(0, shared_sigma)) if shared_sigma else 1.0
        k = int(np.argmin(slots))
        send = slots[k]
        ttft = ttft_ms / 1000 * rng.lognormal(0, sigma) * shared
        gaps = tpot_ms / 1000 * rng.lognormal(0, sigma, size=out_tokens - 1) * shared
        chunks = [float(t) for t in send + ttft + np.concatenate([[0.0], np.cumsum(gaps)])]
        slots[k] = chunks[-1]
        out.append(
            RequestRecord(
                request_id=rid,
                scheduled_s=None,
                ready_s=send,
                send_s=send,
                first_token_s=chunks[0],
                chunk_times_s=chunks,
                chunk_tokens=[1] * out_tokens,
                end_s=chunks[-1],
                input_tokens=8,
                output_tokens=out_tokens,
                token_source=TokenSource.USAGE,
                ok=True,
                http_status=200,
                error_kind=None,
                error_excerpt=None,
            )
        )
    return out
