"""Output tokens per second over time: the one binning rule behind the throughput chart and its comparison.

A streamed chunk's tokens count in the bin where the chunk arrived, as the summary's
peak throughput counts them, and every bin is divided by its full width, so a last,
partly covered bin reads low rather than spiking. Callers choose the records and the
bins: the chart picks a round width, the comparison a bin count it can bootstrap over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from reports.records import RequestRecord


def chunks_of(records: Iterable[RequestRecord]) -> list[tuple[float, int]]:
    """(arrival time, tokens) of every streamed chunk with a finite time."""
    return [(t, n) for r in records for t, n in zip(r.chunk_times_s, r.chunk_tokens, strict=True) if math.isfinite(t)]


def rate_bins(chunks: Sequence[tuple[float, int]], start: float, width: float, bins: int) -> list[float]:
    """Tokens per second in `bins` bins of `width` seconds from `start`; chunks outside go to the nearest end bin."""
    if bins < 1 or not width > 0:
        raise ValueError(f"need at least one bin of positive width, got {bins} of {width}")
    tokens = [0] * bins
    for t, count in chunks:
        tokens[min(bins - 1, max(0, int((t - start) // width)))] += count
    return [n / width for n in tokens]
