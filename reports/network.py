"""`NetworkDoc`: the round trip to the target, measured before and after a run.

A remote user's TTFT holds the network: the request travels to the server and
the first token travels back, one round trip on an open connection. The probe
times what the network alone decides, a TCP handshake (one round trip), apart
from what the server adds (TLS, and the first byte of a minimal request), so a
report can say how much of a TTFT is distance. Raw samples are kept; every
figure shown is computed from them.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel, ConfigDict, Field


class RttProbe(BaseModel):
    """One probe: a few fresh connections, each timed at its steps, in milliseconds."""

    model_config = ConfigDict(extra="forbid")

    tcp_connect_ms: list[float] = Field(description="TCP handshake of each fresh connection: one network round trip")
    tls_ms: list[float] = Field(default_factory=list, description="TLS handshake after it (https targets only)")
    first_byte_ms: list[float] = Field(
        default_factory=list, description="a minimal request (GET /v1/models) sent to its first response byte"
    )
    errors: list[str] = Field(default_factory=list, description="why a sample was not taken")

    @property
    def rtt_ms(self) -> float | None:
        """The network round trip: the fastest handshake (queues and scheduling only ever add to it)."""
        return min(self.tcp_connect_ms) if self.tcp_connect_ms else None

    @property
    def first_byte_median_ms(self) -> float | None:
        return statistics.median(self.first_byte_ms) if self.first_byte_ms else None


class NetworkDoc(BaseModel):
    """The probes around a run; `rtt_ms` is the smaller round trip of the two."""

    model_config = ConfigDict(extra="forbid")

    before: RttProbe
    after: RttProbe | None = None

    @property
    def rtt_ms(self) -> float | None:
        found = [p.rtt_ms for p in (self.before, self.after) if p is not None and p.rtt_ms is not None]
        return min(found) if found else None
