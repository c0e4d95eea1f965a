"""The catalogs under planner/data: models, GPUs, weight formats, engines, and the bundled formats' measured quality.

SLO profiles are not here: they are shared with the readiness checklist, in one file read
through `planner/slo_targets.py`.

Each JSON file is validated by a pydantic schema with extra="forbid" (an unknown or
misspelt field is an error), then turned into the frozen specs the math uses.
Every figure in the files carries its source.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from planner.errors import CatalogError, UnknownNameError
from planner.model_spec import Count, ModelSpec, MoeSpec, Size, build_model_spec
from planner.vllm_memory import VllmVersions

DATA_DIR = Path(__file__).resolve().parent / "data"
QualityTier = Literal["none", "negligible", "small", "moderate", "large"]
ComputeKind = Literal["fp32", "bf16", "fp16", "fp8", "int8"]
CC_PATTERN = r"^\d+\.\d+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- models -------------------------------------------------------------------------


class MoeEntry(_Strict):
    n_experts: Size
    experts_per_token: Size
    expert_intermediate_size: Size
    moe_layers: Size
    shared_experts: Count = 0


class MlaEntry(_Strict):
    kv_lora_rank: Size
    qk_rope_head_dim: Size


class ModelEntry(_Strict):
    id: str = Field(pattern=r"^[a-z0-9.\-]+$")
    name: str
    hf_repo: str | None = None
    architecture: str
    n_layers: Size
    hidden_size: Size
    n_heads: Size
    n_kv_heads: Size
    head_dim: Size
    intermediate_size: Size
    vocab_size: Size
    max_context: Size
    tied_embeddings: bool
    qkv_bias: bool = False
    sliding_window: Size | None = None
    sliding_window_layers: Size | None = None
    mla: MlaEntry | None = None
    moe: MoeEntry | None = None
    params_total: PositiveInt | None = None
    params_active: PositiveInt | None = None
    source: str = Field(min_length=1)

    def to_spec(self) -> ModelSpec:
        fields = self.model_dump(exclude={"mla", "moe", "params_total", "params_active"})
        fields["moe"] = MoeSpec(**self.moe.model_dump()) if self.moe else None
        if self.mla:
            fields.update(self.mla.model_dump())
        try:
            return build_model_spec(fields, self.params_total, self.params_active)
        except ValueError as exc:
            raise CatalogError(f"models.json: {exc}") from exc


class ModelsFile(_Strict):
    about: str
    models: list[ModelEntry]


# -- GPUs ---------------------------------------------------------------------------


class Tflops(_Strict):
    fp16: PositiveFloat | None
    bf16: PositiveFloat | None
    fp8: PositiveFloat | None
    int8: PositiveFloat | None


class GpuEntry(_Strict):
    id: str = Field(pattern=r"^[a-z0-9.\-]+$")
    name: str
    vendor: Literal["nvidia", "amd", "intel"]
    memory_gb: PositiveFloat
    usable_mib: PositiveInt
    bandwidth_gb_s: PositiveFloat
    tflops: Tflops
    compute_capability: str | None = Field(pattern=CC_PATTERN)
    interconnect: Literal["nvlink", "pcie", "infinity-fabric", "roce"]
    price_per_hour: float = Field(ge=0)
    nvml_names: list[str]
    peer_to_peer: bool = True  # False: the driver refuses peer access between two of them (GeForce RTX 40)
    source: str = Field(min_length=1)
    unsupported: str | None = None  # why no engine the planner models runs on it (kept for its figures)


class GpusFile(_Strict):
    about: str
    price_source: str
    gpus: list[GpuEntry]


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One accelerator model: per-GPU memory, bandwidth and dense FLOP/s by compute kind."""

    id: str
    name: str
    vendor: str
    memory_bytes: int
    bandwidth_bytes_s: float
    flops: dict[str, float | None]
    compute_capability: str | None
    interconnect: str
    price_per_hour: float
    nvml_names: tuple[str, ...] = ()
    source: str = ""
    unsupported: str | None = None
    peer_to_peer: bool = True


def _gpu_spec(e: GpuEntry) -> GpuSpec:
    flops = {k: (v * 1e12 if v is not None else None) for k, v in e.tflops.model_dump().items()}
    return GpuSpec(
        e.id,
        e.name,
        e.vendor,
        e.usable_mib * 2**20,
        e.bandwidth_gb_s * 1e9,
        flops,
        e.compute_capability,
        e.interconnect,
        e.price_per_hour,
        tuple(e.nvml_names),
        e.source,
        e.unsupported,
        e.peer_to_peer,
    )


# -- formats, engines, SLO profiles --------------------------------------------------


CpuKernel = Literal["int4", "int8", "fp8", "q8_0", "fp32", "bf16"]
"""The kernels planner.cpu_probe times on this CPU (its KERNEL_MAKERS), which a bundled format's layers call."""


class FormatSpec(_Strict):
    id: str
    label: str
    family: Literal["hf", "gguf", "bundled"]
    bits_per_weight: PositiveFloat
    embedding_bits: PositiveFloat | None
    compute: ComputeKind
    min_cc: str | None = Field(pattern=CC_PATTERN)
    weight_only_below_cc: str | None = Field(None, pattern=CC_PATTERN)
    quality: QualityTier
    quality_note: str
    vllm_quantization: str | None = None
    engine_quant: str | None = None
    cpu_kernel: CpuKernel | None = None  # the kernel the bundled engine's linear layers call on CPU
    cpu_embedding_kernel: CpuKernel | None = None
    # Parts of the transformer body a mixed-precision checkpoint keeps at 16 bits (planner.sizing):
    # attention = every layer's Q/K/V/O projections, edge_layers = the first and last layers whole.
    sixteen_bit_parts: list[Literal["attention", "edge_layers"]] = []
    # A layout only published checkpoints have: predict takes it when named, recommend never proposes it.
    checkpoint_only: bool = False
    source: str = Field(min_length=1)


class QualityTiers(_Strict):
    about: str
    none: float = Field(gt=0, le=1)
    negligible: float = Field(gt=0, le=1)
    small: float = Field(gt=0, le=1)
    moderate: float = Field(gt=0, le=1)
    large: float = Field(gt=0, le=1)


class FormatsFile(_Strict):
    about: str
    quality_tiers: QualityTiers
    formats: list[FormatSpec]


def _repeated(names: list[str]) -> list[str]:
    """The names that appear more than once, sorted (each catalog list's ids must be unique)."""
    return sorted(n for n, count in Counter(names).items() if count > 1)


# -- measured quality of the bundled engine's formats ---------------------------------


class MeasuredFormat(_Strict):
    """One bundled format scored against the fp32 model on the shipped evaluation text (engine/studies/quant.py)."""

    engine_quant: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    perplexity: PositiveFloat
    mean_kl_nats: float = Field(ge=0, description="mean KL(fp32 || format) over the scored positions, in nats")
    top1_agreement: float = Field(ge=0, le=1, description="share of positions whose most likely token is fp32's")
    positions: PositiveInt = Field(description="scored next-token positions")


class MeasuredQualityFile(_Strict):
    """planner/data/measured_quality.json: written by bench/planner_quality.py from one run of the quant study,
    never by hand; the command, date and revision say how to reproduce it."""

    schema_version: Literal[1]
    about: str
    model: str = Field(min_length=1, description="the model measured (the bundled GGUF)")
    model_file: str = Field(min_length=1)
    file_tensor_types: str
    reference: str = Field(min_length=1)
    eval_text: str = Field(min_length=1)
    eval_tokens: PositiveInt
    eval_window: PositiveInt
    command: str = Field(min_length=1)
    date_utc: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    machine: str = Field(min_length=1)
    formats: list[MeasuredFormat] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_row_each_and_the_reference(self) -> MeasuredQualityFile:
        names = [f.engine_quant for f in self.formats]
        dupes = _repeated(names)
        if dupes:
            raise ValueError(f"duplicate engine_quant rows: {', '.join(dupes)}")
        if self.reference not in names:
            raise ValueError(f"no row for the reference {self.reference!r}")
        return self

    @cached_property
    def by_quant(self) -> dict[str, MeasuredFormat]:
        return {f.engine_quant: f for f in self.formats}


class Efficiency(_Strict):
    """An engine's share of a device's peaks, and what each forward pass costs beyond them."""

    decode_bandwidth: float = Field(gt=0, le=1)
    prefill_flops: float = Field(gt=0, le=1)
    prefill_flops_fp8: float | None = Field(None, gt=0, le=1, description="share of the FP8 peak; None: prefill_flops")
    step_overhead_us: float = Field(0.0, ge=0, description="fixed cost of a forward pass: launch, schedule, sample")
    seq_overhead_us: float = Field(0.0, ge=0, description="cost per sequence in the batch per forward pass")
    source: str | None = None

    def flops_for(self, compute: str) -> float:
        """The FLOP/s share for a matmul precision: FP8 GEMMs reach less of their (doubled) peak."""
        return self.prefill_flops_fp8 if compute == "fp8" and self.prefill_flops_fp8 else self.prefill_flops


class EngineSpec(_Strict):
    id: str
    label: str
    vendors: list[Literal["nvidia", "amd"]]
    cpu: bool
    formats: list[str]
    batching: Literal["continuous", "slots", "single"]
    memory_model: Literal["utilization", "free_fraction", "plain"]
    efficiency: dict[Literal["gpu", "cpu"], Efficiency]
    note: str
    source: str = Field(min_length=1)
    architectures: list[str] | None = None
    format_min_cc: dict[str, str] | None = None  # this engine's own floor for a format
    dispatch_ops_per_layer: PositiveInt | None = None
    gpu_op_overhead_us: PositiveFloat | None = None  # an op launched from Python on a GPU (eager passes)
    # An op replayed inside a CUDA graph, which the engine uses for decode-only passes on a GPU: what is left
    # per op is the GPU's own floor for a small kernel, not the launch.
    gpu_graph_op_us: PositiveFloat | None = None
    # The KV-cache dtype "auto" resolves to for a format's checkpoints, and why.
    checkpoint_kv_cache_dtype: dict[str, Literal["fp8"]] | None = None
    checkpoint_kv_cache_source: str | None = None


class DistributedSpec(_Strict):
    engine: str
    gpus_per_node: PositiveInt
    label: str
    note: str
    source: str


class ActivationPerToken(_Strict):
    """Elements per batched token at the profiling pass's peak: ffn-sized (split by TP) and hidden-sized buffers."""

    ffn: float = Field(ge=0)
    hidden: float = Field(ge=0)
    bytes: PositiveInt


class VllmMemory(_Strict):
    block_size: PositiveInt
    gpu_memory_utilization: float = Field(gt=0, le=1)
    overhead_min_gib: float = Field(ge=0)
    overhead_fraction: float = Field(ge=0, lt=1)
    kv_free_fraction: float = Field(gt=0, le=1)
    activation_per_token: ActivationPerToken
    source: str


class TpRankOverhead(_Strict):
    gib: float = Field(ge=0)
    source: str = Field(min_length=1)


class TpTransport(_Strict):
    """What a tensor-parallel group's GPUs exchange through decides whether per-rank GPU buffers exist."""

    p2p: str = Field(min_length=1)
    host: str = Field(min_length=1)
    source: str = Field(min_length=1)

    def describe(self, kind: str) -> str:
        return f"{kind}: {self.p2p if kind == 'p2p' else self.host}"


class BatchLimits(_Strict):
    max_num_seqs: PositiveInt
    max_num_batched_tokens: PositiveInt


class LargeMemoryLimits(BatchLimits):
    min_gib: PositiveFloat
    exclude_names: list[str] = []


class CpuLimits(BatchLimits):
    per_rank: bool = False  # multiplied by TP x PP (vLLM's CPU defaults scale with the world size)


class SchedulerDefaults(_Strict):
    """An engine's own batch limits when the user sets none, and where they come from."""

    max_num_seqs: PositiveInt
    max_num_batched_tokens: PositiveInt
    chunked_prefill: bool
    # With prefill unchunked, vLLM raises the batched-token limit to max_model_len; TensorRT-LLM keeps it.
    unchunked_raises_to_context: bool = True
    large_memory: LargeMemoryLimits | None = None
    cpu: CpuLimits | None = None
    # The budget is raised to max_num_seqs when that is larger (the bundled engine: max(512, seqs)).
    budget_covers_seqs: bool = False
    # Most prompt tokens one sequence computes per pass (None: the budget alone limits a chunk).
    prefill_chunk_tokens: PositiveInt | None = None
    # The planner knows this scheduling policy exactly and replays closed loops pass by pass
    # (planner/replay.py); it needs chunked prefill and a chunk size.
    replayed: bool = False
    version: str = Field(min_length=1)
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _replay_needs_chunks(self) -> SchedulerDefaults:
        if self.replayed and not (self.chunked_prefill and self.prefill_chunk_tokens):
            raise ValueError("a replayed scheduler needs chunked_prefill and prefill_chunk_tokens")
        return self


class AllReduceAlgorithm(_Strict):
    """One all-reduce algorithm on a link: time = latency + 2 (tp - 1) / tp x bytes / bus bandwidth."""

    latency_us: PositiveFloat
    bus_gb_s: PositiveFloat


class AllReduceLink(_Strict):
    algorithms: list[AllReduceAlgorithm] = Field(min_length=1)  # the engine picks the fastest per message
    source: str = Field(min_length=1)


class TpEfficiency(_Strict):
    """Tensor parallelism's cost: all-reduces priced per link, and the share of ideal scaling a pipeline
    across nodes keeps (bubbles and the inter-node hop)."""

    multi_node: float = Field(gt=0, le=1)
    allreduce: dict[Literal["nvlink", "infinity-fabric", "pcie"], AllReduceLink]
    source: str

    def links(self, interconnect: str) -> list[tuple[float, float]]:
        """(latency s, bus bytes/s) of each algorithm on this link."""
        link = self.allreduce.get(interconnect) or self.allreduce["pcie"]  # type: ignore[call-overload]
        return [(a.latency_us * 1e-6, a.bus_gb_s * 1e9) for a in link.algorithms]


class EnginesFile(_Strict):
    about: str
    engines: list[EngineSpec]
    distributed: DistributedSpec
    vllm_memory: VllmMemory
    tp_rank_overhead: TpRankOverhead
    tp_transport: TpTransport
    vllm_versions: VllmVersions
    scheduler_defaults: dict[str, SchedulerDefaults]
    tensor_parallel_efficiency: TpEfficiency
    cpu_runtime_overhead_gib: float = Field(ge=0)


# -- the catalog ----------------------------------------------------------------------


class Catalog(_Strict):
    """The catalog files, cross-checked; look-ups raise UnknownNameError with suggestions."""

    models_file: ModelsFile
    gpus_file: GpusFile
    formats_file: FormatsFile
    engines_file: EnginesFile
    quality_file: MeasuredQualityFile

    @model_validator(mode="after")
    def _cross_check(self) -> Catalog:
        for kind, items in (
            ("model", self.models_file.models),
            ("gpu", self.gpus_file.gpus),
            ("format", self.formats_file.formats),
            ("engine", self.engines_file.engines),
        ):
            dupes = _repeated([i.id for i in items])
            if dupes:
                raise ValueError(f"duplicate {kind} ids: {', '.join(dupes)}")
        known = {f.id for f in self.formats_file.formats}
        for e in self.engines_file.engines:
            missing = [f for f in e.formats if f not in known]
            if missing:
                raise ValueError(f"engine {e.id} lists unknown formats: {', '.join(missing)}")
        # engine_quant (the bundled engine's --quant) says which formats the bundled engine serves: its list
        # in engines.json must name exactly those, so a format added to formats.json cannot go unplanned.
        served = [f.id for f in self.formats_file.formats if f.engine_quant]
        for e in self.engines_file.engines:
            if e.id == "bundled" and sorted(e.formats) != sorted(served):
                raise ValueError(
                    f"engine bundled must list exactly the formats with an engine_quant ({', '.join(served)}); "
                    f"it lists {', '.join(e.formats)}"
                )
        measured = self.quality_file.by_quant
        unmeasured = [f.id for f in self.formats_file.formats if f.engine_quant and f.engine_quant not in measured]
        if unmeasured:
            raise ValueError(f"formats without a row in measured_quality.json: {', '.join(unmeasured)}")
        return self

    @cached_property
    def models(self) -> dict[str, ModelSpec]:
        return {m.id: m.to_spec() for m in self.models_file.models}

    @cached_property
    def gpus(self) -> dict[str, GpuSpec]:
        return {g.id: _gpu_spec(g) for g in self.gpus_file.gpus}

    @cached_property
    def formats(self) -> dict[str, FormatSpec]:
        return {f.id: f for f in self.formats_file.formats}

    @cached_property
    def engines(self) -> dict[str, EngineSpec]:
        return {e.id: e for e in self.engines_file.engines}

    def quality_weight(self, tier: str) -> float:
        return float(getattr(self.formats_file.quality_tiers, tier))

    def model(self, name: str) -> ModelSpec:
        return lookup("model", name, self.models, lambda m: (m.name, m.hf_repo or ""))

    def gpu(self, name: str) -> GpuSpec:
        return lookup("GPU", name, self.gpus, lambda g: (g.name,))

    def format(self, name: str) -> FormatSpec:
        return lookup("weight format", name, self.formats, lambda f: (f.label,))


def lookup(kind: str, name: str, items: dict, aliases) -> object:  # noqa: ANN001
    """By id, or case-insensitively by id, display name or alias; else suggest close ids."""
    if name in items:
        return items[name]
    wanted = name.strip().lower()
    dashed = re.sub(r"[\s_]+", "-", wanted)
    for key, item in items.items():
        if dashed == key.lower() or wanted in (a.lower() for a in aliases(item) if a):
            return item
    suggestions = difflib.get_close_matches(wanted, list(items), n=3, cutoff=0.5)
    suggestions += [k for k in items if wanted and wanted in k and k not in suggestions][:3]
    raise UnknownNameError(kind, name, suggestions, sorted(items))


def _read(path: Path, schema: type[BaseModel]) -> BaseModel:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"cannot read catalog file {path}: {exc}") from exc
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CatalogError(f"{path.name}: {where}: {first['msg']} ({exc.error_count()} error(s))") from exc


@lru_cache(maxsize=4)
def load_catalog(data_dir: Path = DATA_DIR) -> Catalog:
    """Read and validate every file under `data_dir` (cached per directory)."""
    parts = {
        "models_file": _read(data_dir / "models.json", ModelsFile),
        "gpus_file": _read(data_dir / "gpus.json", GpusFile),
        "formats_file": _read(data_dir / "formats.json", FormatsFile),
        "engines_file": _read(data_dir / "engines.json", EnginesFile),
        "quality_file": _read(data_dir / "measured_quality.json", MeasuredQualityFile),
    }
    try:
        cat = Catalog(**parts)
    except ValidationError as exc:
        raise CatalogError(f"catalog under {data_dir}: {exc.errors()[0]['msg']}") from exc
    cat.models  # noqa: B018 - build (and so validate) every ModelSpec now, not at first use
    return cat
