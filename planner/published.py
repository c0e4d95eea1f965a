"""Published measurements (planner/data/published.json) that the planner's predictions are held against.

Each point is one configuration exactly as its source states it (model, GPU and count, engine and
version, parallelism, format, memory settings, lengths, load) with what was measured there, the source's
address and the words quoted from it. Nothing here is predicted or rounded: a figure the source does not
print is None. The file is data for `bench/planner_accuracy.py`; the planner itself never reads it.

About a third of the points are held out by a fixed rule (every third point in file order), so that a
constant tuned on the rest can be checked on points it never saw; the loader rejects a file whose split
does not follow the rule, so no one can move a point between halves by hand.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from planner.errors import CatalogError, first_problem
from planner.vllm_memory import SamplerName, TpTransportName

PUBLISHED_PATH = Path(__file__).resolve().parent / "data" / "published.json"
SCHEMA_VERSION = 1
HELD_OUT_EVERY = 3  # the 3rd, 6th, 9th... point in file order is held out

Engine = Literal["vllm", "sglang", "tensorrt-llm", "nim"]
Load = Literal["startup", "concurrency", "rate", "saturated"]
MEMORY_METRICS = ("weights_gib", "kv_cache_gib", "kv_tokens", "gpu_blocks", "max_concurrency", "started")
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "output_tok_s")
METRICS = (*MEMORY_METRICS, *LATENCY_METRICS, "max_output_tok_s")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Conditions(_Strict):
    """How the measurement was taken, as the source states it; None where it does not say."""

    model: str = Field(min_length=1, description="catalog model id with the same shapes, else the HF repo")
    model_source: str = Field(min_length=1, description="the model exactly as the source names it")
    gpu: str | None = Field(None, description="catalog GPU id; None when the source does not say (weights only)")
    gpus: PositiveInt = 1
    engine: Engine
    engine_version: str | None = None
    tp: PositiveInt = 1
    pp: PositiveInt = 1
    format: str = Field(min_length=1, description="weight format id in planner/data/formats.json")
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    vllm_sampler: SamplerName | None = Field(
        None, description="vLLM V1: the sampler the log names, where it is not the release's default"
    )
    tp_transport: TpTransportName = Field(
        "auto", description="host where the log says custom all-reduce is off for want of P2P or across nodes"
    )
    block_size: PositiveInt | None = Field(None, description="KV block size in tokens, where gpu_blocks is given")
    max_model_len: PositiveInt | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="vLLM/SGLang memory fraction")
    kv_cache_free_gpu_mem_fraction: float | None = Field(None, gt=0, le=1, description="TensorRT-LLM's")
    max_num_seqs: PositiveInt | None = None
    max_num_batched_tokens: PositiveInt | None = None
    chunked_prefill: bool | None = Field(
        None, description="as the engine ran: a version's default when the source shows it; None: the planner's default"
    )
    input_tokens: PositiveInt | None = None
    output_tokens: PositiveInt | None = None
    load: Load
    concurrency: PositiveInt | None = None
    request_rate: PositiveFloat | None = Field(None, description="requests per second")


class Measured(_Strict):
    """The figures the source prints. Memory figures are per GPU, as vLLM logs them."""

    weights_gib: PositiveFloat | None = Field(None, description='"Loading model weights took" / "Model loading took"')
    total_gpu_memory_gib: PositiveFloat | None = Field(None, description="the engine's own reading of the GPU")
    kv_cache_gib: PositiveFloat | None = None
    kv_tokens: PositiveInt | None = Field(None, description='"GPU KV cache size: N tokens" or the max-len error')
    gpu_blocks: PositiveInt | None = Field(None, description='"# GPU blocks"')
    max_concurrency: PositiveFloat | None = Field(None, description='"Maximum concurrency for N tokens per request"')
    started: bool | None = Field(None, description="False when the engine refused to start")
    ttft_ms: PositiveFloat | None = None
    tpot_ms: PositiveFloat | None = Field(None, description="TPOT or ITL, as the source names it")
    e2e_ms: PositiveFloat | None = None
    output_tok_s: PositiveFloat | None = Field(None, description="output tokens/s at the stated load")
    max_output_tok_s: PositiveFloat | None = Field(None, description="output tokens/s with requests at max rate")

    def given(self) -> list[str]:
        """The metrics this point measured, in METRICS order."""
        return [name for name in METRICS if getattr(self, name) is not None]


class PublishedPoint(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    split: Literal["fit", "held_out"]
    conditions: Conditions
    measured: Measured
    source_url: str = Field(pattern=r"^https://")
    quote: str = Field(min_length=10, description="the source's words the figures were read from")
    note: str | None = None

    @model_validator(mode="after")
    def _conditions_cover_the_metrics(self) -> PublishedPoint:
        """Each metric needs the conditions a prediction of it takes; say which are missing."""
        c, given = self.conditions, self.measured.given()
        if not given:
            raise ValueError("measures nothing")
        needs: list[str] = []
        if set(given) & {"kv_cache_gib", "kv_tokens", "gpu_blocks", "max_concurrency", "started"}:
            needs += ["gpu"]
            if c.engine in ("vllm", "sglang"):
                needs += ["gpu_memory_utilization"]
        if set(given) & {"max_concurrency", "started"}:
            needs += ["max_model_len"]
        if "gpu_blocks" in given and self.measured.kv_tokens is None:
            needs += ["block_size"]
        if set(given) & set(LATENCY_METRICS):
            needs += ["gpu", "input_tokens", "output_tokens"]
            if c.concurrency is None and c.request_rate is None:
                raise ValueError("latency figures need concurrency or request_rate")
        if "max_output_tok_s" in given:
            needs += ["gpu", "input_tokens", "output_tokens"]
            if c.load != "saturated":
                raise ValueError("max_output_tok_s is measured under load 'saturated'")
        missing = sorted({n for n in needs if getattr(c, n) is None})
        if missing:
            raise ValueError(f"{', '.join(given)} need conditions {', '.join(missing)}")
        if c.tp * c.pp > c.gpus:
            raise ValueError(f"tp x pp = {c.tp * c.pp} exceeds gpus {c.gpus}")
        return self


class PublishedFile(_Strict):
    schema_version: Literal[1]
    about: str
    held_out_rule: str
    points: list[PublishedPoint]

    @model_validator(mode="after")
    def _ids_unique_and_split_by_rule(self) -> PublishedFile:
        counts = Counter(p.id for p in self.points)
        dupes = sorted(i for i, n in counts.items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate point ids: {', '.join(dupes)}")
        for position, point in enumerate(self.points, start=1):
            wanted = "held_out" if position % HELD_OUT_EVERY == 0 else "fit"
            if point.split != wanted:
                raise ValueError(f"point {position} ({point.id}) must be {wanted!r} by the held-out rule")
        return self

    def split(self, name: Literal["fit", "held_out"]) -> list[PublishedPoint]:
        return [p for p in self.points if p.split == name]

    def metric_counts(self) -> dict[str, int]:
        """How many points measure each metric (a point may measure several)."""
        counts = Counter(m for p in self.points for m in p.measured.given())
        return {m: counts[m] for m in METRICS if counts[m]}


def load_published(path: Path = PUBLISHED_PATH) -> PublishedFile:
    """Read and validate the published measurements; a bad file is one CatalogError line."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"cannot read published measurements {path}: {exc}") from exc
    try:
        return PublishedFile.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{path.name}: {first_problem(exc)} ({exc.error_count()} error(s))") from exc
