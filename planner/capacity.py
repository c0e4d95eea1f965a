"""Capacity: how many replicas and GPUs a target request rate needs, and what a million
output tokens costs.

One replica running B sequences spends, per request, its prefill time (which stalls
decoding) plus its share of decode steps, output x TPOT(B) / B. So it completes
    rps = 1 / (prefill_s + output_tokens x TPOT(B) / B)
requests per second, at the largest B that memory allows and whose TPOT meets the SLO.
Replicas = ceil(target rps / rps per replica); cost per million output tokens
= replicas x devices per replica x $/device-hour / (output tokens per hour / 1e6).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capacity:
    """One option's capacity at its best SLO-meeting batch; costs None without a price."""

    batch: int
    tpot_ms: float
    meets_tpot: bool
    rps_per_replica: float
    output_tok_s_per_replica: float
    devices_per_replica: int
    target_rps: float | None
    replicas: int | None
    devices: int | None
    cost_per_hour: float | None
    cost_per_m_output_tokens: float | None
    note: str


def best_batch(tpot_s: Callable[[int], float], max_batch: int, tpot_target_s: float | None) -> int:
    """Largest batch in 1..max_batch whose TPOT meets the target (TPOT grows with batch)."""
    if tpot_target_s is None or tpot_s(max_batch) <= tpot_target_s:
        return max_batch
    lo, hi = 1, max_batch  # tpot(lo) may already miss: then 1 is the least bad
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tpot_s(mid) <= tpot_target_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True, slots=True)
class Replica:
    """One serving replica: TPOT as a function of batch, prefill time, batch limit, devices."""

    tpot_s: Callable[[int], float]
    prefill_s: float
    max_batch: int
    devices: int


def plan_capacity(
    replica: Replica,
    output_tokens: int,
    price_per_device_hour: float | None,
    tpot_target_s: float | None = None,
    target_rps: float | None = None,
) -> Capacity:
    """Replicas for `target_rps` (or one replica at full load when None) and the cost of serving it."""
    if replica.max_batch < 1:
        raise ValueError("max_batch must be at least 1: the option does not fit")
    devices_per_replica = replica.devices
    b = best_batch(replica.tpot_s, replica.max_batch, tpot_target_s)
    tpot = replica.tpot_s(b)
    rps = 1.0 / (replica.prefill_s + output_tokens * tpot / b)
    tok_s = rps * output_tokens
    replicas = math.ceil(target_rps / rps) if target_rps else None
    devices = replicas * devices_per_replica if replicas else None
    priced = price_per_device_hour is not None and price_per_device_hour > 0
    if target_rps and priced:
        cost_h = devices * price_per_device_hour  # type: ignore[operator]
        per_m = cost_h / (target_rps * output_tokens * 3600 / 1e6)
        note = (
            f"{replicas} replica(s) of {devices_per_replica} device(s) for {target_rps:g} req/s "
            f"(each serves up to {rps:.2f} req/s, at batch {b})"
        )
    elif priced:
        cost_h = devices_per_replica * price_per_device_hour  # type: ignore[operator]
        per_m = cost_h / (tok_s * 3600 / 1e6)
        note = f"one replica at full load (batch {b}); give a target QPS for replica counts"
    else:
        cost_h = per_m = None
        note = "no price per device-hour: cost not computed"
    meets = tpot_target_s is None or tpot <= tpot_target_s
    if not meets:
        note = f"TPOT target missed even at batch 1 ({tpot * 1e3:.0f} ms); " + note
    return Capacity(
        batch=b,
        tpot_ms=tpot * 1e3,
        meets_tpot=meets,
        rps_per_replica=rps,
        output_tok_s_per_replica=tok_s,
        devices_per_replica=devices_per_replica,
        target_rps=target_rps,
        replicas=replicas,
        devices=devices,
        cost_per_hour=cost_h,
        cost_per_m_output_tokens=per_m,
        note=note,
    )
