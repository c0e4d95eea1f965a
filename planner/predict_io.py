"""`python -m planner predict`: what the user asks (PredictOptions) and the one JSON object it prints
(PredictResult); the calibration file it may apply is planner.calibration's. The math is
planner.predict's, the same the recommender ranks; this module only names things and checks them.

Memory keys are per GPU, as vLLM logs them. `request_s` is completed requests per second at the given
load; `max_concurrency_at_max_model_len` is vLLM's "Maximum concurrency for N tokens per request".
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner.catalog import Catalog, EngineSpec, FormatSpec
from planner.errors import PlannerError, UnknownNameError
from planner.model_files import DEFAULT_MAX_CONFIG_BYTES
from planner.predict import ConfigPrediction
from planner.sizing import GIB
from planner.vllm_memory import CudaGraphReserveGib, EngineVersion, TpTransportKind, VllmSampler
from planner.workload import DEFAULT_INPUT_TOKENS, DEFAULT_OUTPUT_TOKENS, CachedInputTokens, check_cached_input

# The names the issue and users write for a format, to the catalog's ids.
FORMAT_ALIASES = {"awq-int4": "awq", "gptq-int4": "gptq", "int8-w8a8": "int8", "fp8-w8a8": "fp8"}


class PredictOptions(BaseModel):
    """One configuration to predict. Unknown fields are an error; None means the engine's default."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="catalog model id (e.g. llama-3.1-8b), or a path to a config.json or .gguf file")
    gpu: str = Field("detected", description="catalog GPU id (e.g. h100-sxm), 'cpu', or 'detected' for this machine")
    gpus: int = Field(1, ge=1, le=1024, description="how many of those GPUs you have; the rest of TP x PP are replicas")
    tp: int = Field(1, ge=1, le=64, description="tensor-parallel size of one replica")
    pp: int = Field(1, ge=1, le=64, description="pipeline-parallel size of one replica")
    engine: str = Field("vllm", description="vllm, sglang, tensorrt-llm, llama.cpp or bundled")
    engine_version: EngineVersion = None
    format: str = Field("bf16", description="weight format id (bf16, fp8, int8, awq-int4, gptq-int4, gguf-q4_k_m, ...)")
    kv_cache_dtype: Literal["auto", "fp8"] = Field("auto", description="KV cache dtype: fp8 halves its bytes")
    vllm_sampler: VllmSampler = None
    tp_transport: TpTransportKind = "auto"
    cuda_graph_reserve_gib: CudaGraphReserveGib = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="vLLM's --gpu-memory-utilization")
    max_num_seqs: int | None = Field(None, ge=1, description="--max-num-seqs (default: the engine's, by device)")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="--max-num-batched-tokens (engine default)")
    max_model_len: int | None = Field(None, ge=16, description="--max-model-len (default: the model's, as vLLM does)")
    enable_chunked_prefill: bool | None = Field(None, description="chunked prefill (default: the engine's)")
    input_tokens: int = Field(DEFAULT_INPUT_TOKENS, ge=1, description="prompt tokens per request")
    cached_input_tokens: CachedInputTokens = 0
    output_tokens: int = Field(DEFAULT_OUTPUT_TOKENS, ge=1, description="output tokens per request")
    concurrency: int | None = Field(None, ge=1, le=100_000, description="requests in flight (default: 1)")
    qps: float | None = Field(None, gt=0, description="request arrivals per second, instead of --concurrency")
    requests: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="predict a benchmark of this many requests, first burst included (default: the steady state); "
        "used where the engine's scheduler is replayed",
    )
    calibration: str | None = Field(
        None, description="a file from `python -m planner calibrate`: its fitted values replace the catalog's"
    )
    max_config_bytes: int = Field(
        DEFAULT_MAX_CONFIG_BYTES, ge=1, description="the largest config.json read as --model (a GGUF is memory-mapped)"
    )

    @model_validator(mode="after")
    def _one_load(self) -> PredictOptions:
        if self.concurrency is not None and self.qps is not None:
            raise ValueError("give --concurrency or --qps, not both")
        check_cached_input(self.cached_input_tokens, self.input_tokens, f"input_tokens {self.input_tokens}")
        if self.max_model_len is not None and self.input_tokens + self.output_tokens > self.max_model_len:
            raise ValueError(
                f"input_tokens + output_tokens = {self.input_tokens + self.output_tokens} exceeds max_model_len "
                f"{self.max_model_len}"
            )
        return self


def resolve_format(name: str, engine: EngineSpec, catalog: Catalog) -> FormatSpec:
    """A format the engine runs, by catalog id, alias (awq-int4), gguf-<id> or the bundled engine's quant."""
    wanted = name.strip().lower()
    wanted = FORMAT_ALIASES.get(wanted, wanted).removeprefix("gguf-")
    if engine.id == "bundled" and f"bundled-{wanted}" in catalog.formats:
        wanted = f"bundled-{wanted}"
    fmt = catalog.format(wanted)
    if fmt.id not in engine.formats:
        raise PlannerError(f"{engine.label} does not run {fmt.label}; its formats: {', '.join(engine.formats)}")
    return fmt


def resolve_engine(name: str, catalog: Catalog) -> EngineSpec:
    wanted = name.strip().lower()
    if wanted not in catalog.engines:
        raise UnknownNameError("engine", name, [], sorted(catalog.engines))
    return catalog.engines[wanted]


class PredictResult(BaseModel):
    """The printed prediction. Latency and throughput are None when the configuration does not fit."""

    model_config = ConfigDict(extra="forbid")

    model: str
    device: str
    gpus: int
    engine: str
    format: str
    tp: int
    pp: int
    replicas: int
    max_model_len: int
    input_tokens: int
    output_tokens: int
    concurrency: int | None
    qps: float | None
    # memory, per GPU
    weights_gib: float
    kv_cache_gib: float
    kv_tokens: int
    max_concurrent_seqs: int
    max_concurrency_at_max_model_len: float
    fits: bool
    reason: str | None
    # latency and throughput (means)
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    output_tok_s: float | None
    max_output_tok_s: float | None
    request_s: float | None
    batch: int | None
    busy_replicas: int | None
    # what drives them
    assumptions: dict[str, str | float | int | bool]
    calibrated: bool
    notes: list[str]


def build_result(
    opts: PredictOptions, names: dict[str, str], cp: ConfigPrediction, max_model_len: int, calibrated: bool
) -> PredictResult:
    """The JSON object from one ConfigPrediction (`names`: model, device, engine, format as shown)."""
    mem = cp.memory
    fits = cp.fits
    return PredictResult(
        model=names["model"],
        device=names["device"],
        gpus=opts.gpus,
        engine=names["engine"],
        format=names["format"],
        tp=opts.tp,
        pp=opts.pp,
        replicas=cp.replicas,
        max_model_len=max_model_len,
        input_tokens=opts.input_tokens,
        output_tokens=opts.output_tokens,
        concurrency=None if opts.qps is not None else (opts.concurrency or 1),
        qps=opts.qps,
        weights_gib=round(mem.weights_bytes / GIB, 3),
        kv_cache_gib=round(max(0, mem.kv_budget_bytes) / GIB, 3),
        kv_tokens=mem.kv_tokens if mem.block_size > 1 else max(0, mem.kv_budget_bytes) // mem.kv_bytes_per_token,
        max_concurrent_seqs=cp.max_batch if fits else 0,
        max_concurrency_at_max_model_len=round(mem.kv_tokens / max_model_len, 2) if mem.block_size > 1 else 0.0,
        fits=fits,
        reason=cp.reason,
        ttft_ms=cp.ttft_s * 1e3 if fits else None,
        tpot_ms=cp.tpot_s * 1e3 if fits else None,
        e2e_ms=cp.e2e_s * 1e3 if fits else None,
        output_tok_s=cp.output_tok_s if fits else None,
        max_output_tok_s=cp.max_output_tok_s if fits else None,
        request_s=cp.requests_s if fits else None,
        batch=cp.batch if fits else None,
        busy_replicas=cp.busy_replicas if fits else None,
        assumptions=cp.assumptions,
        calibrated=calibrated,
        notes=cp.notes,
    )


def format_result(r: PredictResult) -> list[str]:
    """Console lines: the configuration, memory per GPU, then latency and throughput (or why it cannot run)."""
    load = f"{r.qps:g} req/s" if r.qps is not None else f"concurrency {r.concurrency}"
    lines = [
        f"{r.model} on {r.gpus} x {r.device}: {r.engine} {r.format}, TP {r.tp} x PP {r.pp}, {r.replicas} replica(s)",
        f"max_model_len {r.max_model_len}, {r.input_tokens} in / {r.output_tokens} out, {load}",
        f"memory per device: {r.weights_gib:.2f} GiB weights, {r.kv_cache_gib:.2f} GiB KV cache = "
        f"{r.kv_tokens} tokens, {r.max_concurrent_seqs} concurrent sequences",
    ]
    if not r.fits:
        return [*lines, r.reason or "does not fit"]
    lines += [
        f"TTFT {r.ttft_ms:.1f} ms, TPOT {r.tpot_ms:.2f} ms, E2E {r.e2e_ms:.0f} ms (means)",
        f"output {r.output_tok_s:.0f} tok/s at this load ({r.request_s:.2f} req/s, {r.busy_replicas} busy replica(s)); "
        f"saturated {r.max_output_tok_s:.0f} tok/s, prefill included",
        "calibrated" if r.calibrated else "uncalibrated: the engine's efficiencies are catalog assumptions",
    ]
    return lines + [f"note: {n}" for n in r.notes]
