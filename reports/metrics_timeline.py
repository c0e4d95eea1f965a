"""The server's own metrics over a load run: `MetricsTimeline`, a list of `MetricsSample`s.

During the benchmark the checklist scrapes the target's `/metrics` about once a second
and maps the server's names (vLLM, SGLang, TGI, llama.cpp's server, Preflight's engine) onto one
vocabulary, so a report shows running and waiting requests and KV-cache usage next to
the client-side latencies whatever served them. A value the server does not export is
None, never 0 (current llama.cpp builds have no KV-usage gauge). A scrape that failed
keeps its time and the reason in `error`, so a gap in the chart is explained, not hidden.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MetricsSource = Literal["vllm", "sglang", "tgi", "llamacpp", "preflight"]


class MetricsSample(BaseModel):
    """One scrape: the mapped values (None: not exported), or the error that stopped it."""

    model_config = ConfigDict(extra="forbid")

    t_s: float = Field(description="seconds since the run's clock zero, when the scrape began")
    running: float | None = Field(None, description="requests in the running batch")
    waiting: float | None = Field(None, description="requests queued for a slot")
    kv_cache_usage: float | None = Field(None, description="fraction of KV-cache blocks in use, 0..1")
    prompt_tokens_total: float | None = Field(None, description="prompt tokens processed since start (counter)")
    generation_tokens_total: float | None = Field(None, description="tokens generated since start (counter)")
    preemptions_total: float | None = Field(None, description="requests preempted for KV blocks (counter)")
    error: str | None = Field(None, description="why this scrape has no values, e.g. 'HTTP 503' or a timeout")


class MetricsTimeline(BaseModel):
    """Every scrape of one run, and which server dialect the names were read in (None: not recognised)."""

    model_config = ConfigDict(extra="forbid")

    source: MetricsSource | None = Field(None, description="whose metric names were found; None: unknown server")
    interval_s: float = Field(description="seconds between scrapes (doubles when a long run is thinned)")
    samples: list[MetricsSample] = Field(default_factory=list)
    note: str | None = Field(None, description="why there is no source, or how the samples were thinned")

    def values(self, name: str) -> list[float]:
        """The measured values of one field (`running`, `kv_cache_usage`, ...), skipping failed and missing ones."""
        if name not in MetricsSample.model_fields or name in ("t_s", "error"):
            raise ValueError(f"{name!r} is not a metrics field; use one of running, waiting, kv_cache_usage, ...")
        return [v for s in self.samples if (v := getattr(s, name)) is not None]

    def peak(self, name: str) -> float | None:
        """The highest value of a field over the run; None when it was never measured."""
        values = self.values(name)
        return max(values) if values else None

    def increase(self, name: str) -> float | None:
        """How much a counter rose from its first to its last measured value; None with under two values."""
        values = self.values(name)
        return values[-1] - values[0] if len(values) >= 2 else None

    @property
    def errors(self) -> list[MetricsSample]:
        return [s for s in self.samples if s.error is not None]

    def describe(self) -> list[str]:
        """What the scrapes saw, in a few lines: how many failed, the peaks, the server's token count.
        One home for the wording the checklist's evidence and the benchmark's console share."""
        errors = self.errors
        lines = [
            f"{len(self.samples)} scrapes every {self.interval_s:g} s of {self.source} metrics, "
            f"{len(errors)} failed" + (f" (first: {errors[0].error} at {errors[0].t_s:.1f} s)" if errors else ""),
            f"peak running {_shown(self.peak('running'))}, peak waiting {_shown(self.peak('waiting'))}, "
            f"peak KV-cache usage {_shown(self.peak('kv_cache_usage'), percent=True)}",
            "generation tokens counted by the server during the run: "
            + _shown(self.increase("generation_tokens_total")),
        ]
        return lines + ([self.note] if self.note else [])


def _shown(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "not exported"
    return f"{value * 100:.1f}%" if percent else f"{value:g}"


def usage_line(running: float | None, kv_cache_usage: float | None) -> str:
    """Running requests and KV-cache usage as one reading reads out."""
    return f"running {_shown(running)}, KV-cache usage {_shown(kv_cache_usage, percent=True)}"


class MetricsFollowUp(BaseModel):
    """After a load that abandons requests (--cancel-rate): did the server's running requests and KV-cache
    usage fall back to what they were before the load? A server that keeps generating for a client that
    left, or keeps its blocks, shows it here."""

    model_config = ConfigDict(extra="forbid")

    baseline: str = Field(description="running and KV-cache usage before the load")
    last: str = Field(description="the last reading taken after the load")
    recovered_after_s: float | None = Field(
        None, ge=0, description="seconds after the load until both were back at the baseline; None: not by the deadline"
    )
    deadline_s: float = Field(gt=0, description="how long the follow-up waited")

    def line(self) -> str:
        if self.recovered_after_s is not None:
            return (
                f"after the abandoned requests: back at the baseline ({self.baseline}) "
                f"{self.recovered_after_s:.1f} s after the load"
            )
        return (
            f"after the abandoned requests: NOT back at the baseline ({self.baseline}) {self.deadline_s:g} s "
            f"after the load: {self.last}; abandoned requests may still hold their slots or KV blocks"
        )
