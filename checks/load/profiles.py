"""Load profiles and their precomputed arrival schedules.

A profile says when requests become due: `sync` (one at a time), `concurrency:N`
(N in flight, the next sent as one finishes), `constant:RPS` (evenly spaced),
`poisson:RPS[:BURSTINESS]` (gamma-distributed gaps; burstiness 1 is Poisson, below 1
burstier, above 1 more regular, as in vLLM's `--burstiness`), and `sweep` (a ladder of
rates, run by `checks.load.sweep`). Arrival offsets are computed before the run from a
seed, so the schedule never depends on how fast the client happens to be. A `trace`
profile carries its offsets, read from a recorded trace (`checks.load.traces`); it is
built from the trace, never parsed from text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ProfileKind = Literal["sync", "concurrency", "constant", "poisson", "sweep", "trace"]
PROFILE_HELP = "sync | concurrency:N | constant:RPS | poisson:RPS[:BURSTINESS] | sweep"


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """How requests arrive. `max_concurrency` optionally caps in-flight requests of a rate profile."""

    kind: ProfileKind
    concurrency: int | None = None
    rate: float | None = None  # requests per second
    burstiness: float = 1.0
    max_concurrency: int | None = None
    offsets: tuple[float, ...] | None = None  # trace: seconds from the window's start of each measured request
    name: str = ""  # trace: what was replayed, for the label ("azure code.csv x2")

    def __post_init__(self) -> None:
        if (self.kind == "trace") != (self.offsets is not None):
            raise ValueError("a trace profile needs its arrival offsets, and only a trace profile has them")
        if self.offsets is not None and not self.offsets:
            raise ValueError("the trace has no requests to replay")
        if self.kind == "concurrency" and (self.concurrency is None or self.concurrency < 1):
            raise ValueError("concurrency:N needs N >= 1 requests in flight")
        if self.kind in ("constant", "poisson") and (self.rate is None or not 0 < self.rate < math.inf):
            raise ValueError(f"{self.kind}:RPS needs a finite rate above 0 requests per second")
        if not 0 < self.burstiness < math.inf:
            raise ValueError("burstiness must be finite and above 0 (1 = Poisson arrivals)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")

    @classmethod
    def parse(cls, text: str, max_concurrency: int | None = None) -> LoadProfile:
        """Read a profile from its CLI form; a clear ValueError names the accepted forms."""
        name, _, rest = text.strip().partition(":")
        args = rest.split(":") if rest else []
        if name == "trace":
            raise ValueError(
                "the trace profile replays a recorded trace's arrival times: give the trace file (--trace)"
            )
        try:
            if name == "sync" and not args:
                return cls("sync", concurrency=1)
            if name == "sweep" and not args:
                return cls("sweep", max_concurrency=max_concurrency)
            if name == "concurrency" and len(args) == 1:
                return cls("concurrency", concurrency=int(args[0]))
            if name == "constant" and len(args) == 1:
                return cls("constant", rate=float(args[0]), max_concurrency=max_concurrency)
            if name == "poisson" and len(args) in (1, 2):
                burst = float(args[1]) if len(args) == 2 else 1.0
                return cls("poisson", rate=float(args[0]), burstiness=burst, max_concurrency=max_concurrency)
        except ValueError as exc:
            raise ValueError(f"bad load profile {text!r}: {exc}; use {PROFILE_HELP}") from None
        raise ValueError(f"unknown load profile {text!r}; use {PROFILE_HELP}")

    @property
    def is_rate(self) -> bool:
        """True when a schedule (not the client's completions) decides when requests go."""
        return self.kind in ("constant", "poisson", "trace")

    @property
    def label(self) -> str:
        if self.kind == "concurrency":
            return f"concurrency:{self.concurrency}"
        if self.kind == "constant":
            return f"constant:{self.rate:g}"
        if self.kind == "poisson":
            return f"poisson:{self.rate:g}" + (f":{self.burstiness:g}" if self.burstiness != 1.0 else "")
        if self.kind == "trace":
            return f"trace:{self.name}" if self.name else "trace"
        return self.kind

    def in_flight_limit(self) -> int | None:
        """How many requests may be in flight at once (None = unlimited)."""
        if self.kind == "sync":
            return 1
        if self.kind == "concurrency":
            return self.concurrency
        return self.max_concurrency


def arrival_offsets(profile: LoadProfile, n: int, seed: int = 0) -> list[float]:
    """Seconds from the start of the window at which each of `n` requests becomes due (rate profiles).

    A trace gives at most its own requests: fewer than `n` when it is shorter."""
    if profile.offsets is not None:
        return list(profile.offsets[: max(0, n)])
    if not profile.is_rate or profile.rate is None:
        raise ValueError(f"profile {profile.label} has no arrival schedule")
    if n <= 0:
        return []
    if profile.kind == "constant":
        return [i / profile.rate for i in range(n)]
    rng = np.random.default_rng(seed)
    shape = profile.burstiness
    gaps = rng.gamma(shape, 1.0 / (profile.rate * shape), size=n)
    gaps[0] = 0.0  # the first request goes at once
    return np.cumsum(gaps).tolist()
