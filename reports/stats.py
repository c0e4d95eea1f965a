"""Order statistics and their bootstrap intervals: the arithmetic both measuring and comparing use.

It lives in `reports` because comparing two saved documents (`reports.compare`) needs
the same percentile and the same resampling as the run that produced them
(`checks.load.metrics`), and `reports` imports nothing else of ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

_BOOTSTRAP_BATCH_ELEMENTS = 4_000_000  # resample in batches of about this many values (~32 MB of float64)


def _check_q(q: float) -> None:
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100 (a percent, e.g. 99), got {q}")


def _check_resampling(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")


def _central(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` share of resampled statistics: the percentile-bootstrap interval."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def min_samples(q: float) -> int:
    """Values needed before the q-th percentile has a tail to estimate (at least one value beyond it):
    100 for p99, 20 for p95, 2 for p50. Below it, p99 is close to the maximum of a small sample, and a
    bootstrap of it says more about the resampling than about the server."""
    if not 0 <= q < 100:
        raise ValueError(f"q must be a percent below 100 (e.g. 99), got {q}")
    return math.ceil(100 / (100 - q) - 1e-9)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (q in percent) with linear interpolation, numpy's default; None for no values."""
    _check_q(q)
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def bootstrap_ci(
    values: Sequence[float], q: float, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval for the q-th percentile; None for no values. Same seed, same interval."""
    _check_q(q)
    _check_resampling(n_resamples, confidence)
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return None
    stats = _resampled(data, row_percentile(q), n_resamples, np.random.default_rng(seed))
    return _central(stats, confidence)


RowStatistic = Callable[[np.ndarray], np.ndarray]  # (resamples, n) -> (resamples,): one statistic per row


def row_percentile(q: float) -> RowStatistic:
    """The q-th percentile of each resample (numpy's linear interpolation, as `percentile`)."""
    _check_q(q)
    return lambda rows: np.percentile(rows, q, axis=1)


def row_mean(rows: np.ndarray) -> np.ndarray:
    return rows.mean(axis=1)


def _indices(n: int, rows: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` resamples of n positions: single draws (block 1), or runs of `block` neighbours from random
    starts (the moving-block bootstrap), cut to n. Neighbours move together, so values that were
    correlated in the run (requests served in the same batches) stay correlated in every resample."""
    block = max(1, min(block, n))
    if block == 1:
        return rng.integers(0, n, size=(rows, n))
    starts = rng.integers(0, n - block + 1, size=(rows, -(-n // block)))
    return (starts[:, :, None] + np.arange(block)).reshape(rows, -1)[:, :n]


def _resampled(
    data: np.ndarray, statistic: RowStatistic, n_resamples: int, rng: np.random.Generator, block: int = 1
) -> np.ndarray:
    out = np.empty(n_resamples)
    batch = max(1, _BOOTSTRAP_BATCH_ELEMENTS // data.size)
    for start in range(0, n_resamples, batch):
        stop = min(start + batch, n_resamples)
        out[start:stop] = statistic(data[_indices(data.size, stop - start, block, rng)])
    return out


def bootstrap_change_pct(
    a: Sequence[float],
    b: Sequence[float],
    statistic: RowStatistic,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    blocks: tuple[int, int] = (1, 1),
) -> tuple[float, float] | None:
    """Interval of the relative change 100 * (stat(b) - stat(a)) / stat(a), in percent.

    The two samples are resampled independently (two runs share no requests), each
    pair of resamples gives one change, and the interval is the central `confidence`
    share of those changes. A change whose interval holds 0 is not evidence of a
    difference. None when either side is empty or stat(a) is 0 in most resamples.

    `blocks` > 1 resamples a side in runs of that many neighbours (values in time order):
    requests served together are not independent, and treating them as if they were makes
    the interval too narrow (see `_indices`).
    """
    _check_resampling(n_resamples, confidence)
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0:
        return None
    rng = np.random.default_rng(seed)
    sa = _resampled(xa, statistic, n_resamples, rng, blocks[0])
    sb = _resampled(xb, statistic, n_resamples, rng, blocks[1])
    usable = sa != 0
    if usable.sum() < n_resamples / 2:
        return None
    return _central(100.0 * (sb[usable] - sa[usable]) / sa[usable], confidence)
