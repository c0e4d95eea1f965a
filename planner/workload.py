"""What the user asks the planner: the options (pydantic, shared by the CLI and the Plan
page, their descriptions drive --help and tooltips) and the Workload the math uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.model_files import DEFAULT_MAX_CONFIG_BYTES
from planner.vllm_memory import CudaGraphReserveGib, EngineVersion, TpTransportKind, VllmSampler

DEFAULT_INPUT_TOKENS = 1024
DEFAULT_OUTPUT_TOKENS = 256

CachedInputTokens = Annotated[
    int,
    Field(
        ge=0,
        description="of the prompt, tokens the engine's prefix cache serves (a prompt start every request shares, "
        "in whole cache blocks: 16 tokens on vLLM and the bundled engine); planned as costing no prefill",
    ),
]


def check_cached_input(cached: int, prompt_tokens: int, prompt: str) -> None:
    """ValueError unless the cached start is shorter than the prompt (`prompt` names it in the message): an
    engine computes at least a prompt's last token, whatever its cache holds."""
    if cached >= prompt_tokens:
        raise ValueError(
            f"cached_input_tokens {cached} must be below {prompt}: an engine computes at least a prompt's last token"
        )


class RecommendOptions(BaseModel):
    """One planning request. Unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="catalog model id (e.g. llama-3.1-8b), or a path to a config.json or .gguf file")
    gpu: str = Field(
        "detected",
        description="catalog GPU id (e.g. h100-sxm), 'cpu', 'detected' for this machine, or a GPU given inline: "
        "custom:mem=24GiB,bw=936GB/s,bf16=71TF (optional fp8=...TF, int8=...TOPS, vendor=amd)",
    )
    gpus: int = Field(1, ge=1, le=1024, description="how many of those GPUs you have (ignored on CPU)")
    context: int = Field(8192, ge=16, description="--max-model-len: the longest request (prompt + output) allowed")
    concurrency: int = Field(1, ge=1, le=100_000, description="requests in flight at once, across all replicas")
    input_tokens: int | None = Field(
        None, ge=1, description=f"typical prompt length (default: {DEFAULT_INPUT_TOKENS}, at most 3/4 of the context)"
    )
    output_tokens: int | None = Field(
        None, ge=1, description=f"typical output length (default: {DEFAULT_OUTPUT_TOKENS}, within the context)"
    )
    cached_input_tokens: CachedInputTokens = 0
    engine_version: EngineVersion = None
    vllm_sampler: VllmSampler = None
    tp_transport: TpTransportKind = "auto"
    cuda_graph_reserve_gib: CudaGraphReserveGib = None
    slo: str = Field(
        "chat",
        description="SLO profile name from reports/data/slo_profiles.json, the same profiles the readiness "
        "checklist uses (e.g. chat, batch, mlperf-llama3.1-8b-server)",
    )
    qps: float | None = Field(None, gt=0, description="target requests per second, for the capacity table")
    price_per_hour: float | None = Field(None, ge=0, description="$ per GPU-hour (default: the catalog's figure)")
    calibration: str | None = Field(
        None, description="a file from `python -m planner calibrate`: its engine's options use the fitted values"
    )
    max_config_bytes: int = Field(
        DEFAULT_MAX_CONFIG_BYTES, ge=1, description="the largest config.json read as --model (a GGUF is memory-mapped)"
    )

    @model_validator(mode="after")
    def _lengths_fit(self) -> RecommendOptions:
        inp, out = self.lengths()
        if inp + out > self.context:
            raise ValueError(
                f"input_tokens + output_tokens = {inp + out} exceeds context {self.context}: "
                "raise the context or shorten the request"
            )
        check_cached_input(self.cached_input_tokens, inp, f"the prompt's {inp} tokens")
        return self

    def lengths(self) -> tuple[int, int]:
        """(input, output) tokens with the defaults applied."""
        inp = self.input_tokens or min(DEFAULT_INPUT_TOKENS, self.context * 3 // 4)
        out = self.output_tokens or max(1, min(DEFAULT_OUTPUT_TOKENS, self.context - inp))
        return inp, out


@dataclass(frozen=True, slots=True)
class SloTargets:
    """The latency limits the planner holds a configuration to, one per metric, with where each comes from.

    Plain numbers, built from a shipped SLO profile by `planner.slo_targets` (the planner's math never reads
    the profile schema itself). Each `*_at` says which percentile the profile states the limit at ("p95"),
    because the planner predicts means and the plan says so next to them. None: no limit on that metric.
    """

    name: str
    source: str
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    ttft_at: str = ""
    tpot_at: str = ""
    e2e_at: str = ""

    def describe(self) -> str:
        """The limits in words: 'TTFT p95 500 ms, TPOT p99 50 ms, E2E p99 10000 ms'."""
        limits = (("TTFT", self.ttft_ms, self.ttft_at), ("TPOT", self.tpot_ms, self.tpot_at))
        parts = [f"{metric} {at} {ms:g} ms" for metric, ms, at in (*limits, ("E2E", self.e2e_ms, self.e2e_at)) if ms]
        return ", ".join(parts) or "no latency limits"


def computed_input_tokens(input_tokens: int, cached_input_tokens: int) -> int:
    """Prompt tokens a request's prefill computes: the prompt less what the prefix cache served (at least
    one: the last token is always computed, for its logits)."""
    return max(1, input_tokens - cached_input_tokens)


@dataclass(frozen=True, slots=True)
class Workload:
    """Lengths, concurrency and latency targets for one deployment."""

    context: int
    concurrency: int
    input_tokens: int
    output_tokens: int
    slo: SloTargets
    qps: float | None = None
    requests: int | None = None  # a benchmark of this many requests (None: the steady state)
    cached_input_tokens: int = 0  # of each prompt, tokens the engine's prefix cache serves: no prefill for them

    @property
    def computed_input_tokens(self) -> int:
        return computed_input_tokens(self.input_tokens, self.cached_input_tokens)

    @property
    def seq_tokens(self) -> int:
        """Tokens a finished request holds in the KV cache."""
        return self.input_tokens + self.output_tokens

    @property
    def decode_context(self) -> int:
        """Mean tokens cached while decoding: the prompt plus half the output."""
        return self.input_tokens + self.output_tokens // 2
