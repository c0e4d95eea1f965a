"""Ranked serving options (format x engine x parallelism) for a model, hardware and workload.

For each engine that runs on the device and each weight format it supports, the plan
sizes memory (planner.sizing), picks the smallest tensor-parallel size that holds the
workload, predicts TTFT / TPOT / throughput (planner.roofline) and capacity, checks the
SLO profile, and writes the launch command. Ranking: options that meet the SLO first;
among those, near-lossless formats (quality none/negligible) first; then predicted
throughput x the format's quality weight. Options that cannot run are kept with the reason.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from planner.capacity import Capacity, Replica, plan_capacity
from planner.catalog import Catalog, EngineSpec, FormatSpec
from planner.errors import WorkloadError
from planner.launch import LaunchSpec, launch_command
from planner.model_files import DEFAULT_MAX_CONFIG_BYTES, model_from_file
from planner.model_spec import ModelSpec
from planner.predict import (
    DEFAULT_KNOBS,
    Efficiency,
    Knobs,
    PlannedConfig,
    memory_config,
    predict_config,
    scheduler_limits,
    vllm_rule_of,
)
from planner.quality import quality_note
from planner.roofline import Device, Parallel, cc_at_least, compute_kind, ridge_point
from planner.sizing import GIB, MemoryConfig, MemoryPlan, plan_memory, sixteen_bit_layout_problem
from planner.workload import Workload

NEAR_LOSSLESS = ("none", "negligible")
TIE_FRACTION = 0.10
MAX_NODES = 16


@dataclass(frozen=True, slots=True)
class Prediction:
    """Predicted means for one busy replica decoding `batch` sequences; rates cover all replicas.

    `output_tok_s` is at the workload's concurrency (busy replicas only, prefill included);
    `max_output_tok_s` is saturated: every replica at its largest batch, each request paying its prefill.
    """

    batch: int
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    output_tok_s: float
    max_output_tok_s: float
    busy_replicas: int
    max_batch: int
    decode_step_ms: float
    decode_bound: str
    prefill_bound: str
    decode_bytes: float
    decode_flops: float
    arithmetic_intensity: float
    ridge_point: float


@dataclass(slots=True)
class PlanOption:
    """One way to serve the model; `reason` says why it cannot when `fits` is False."""

    engine: str
    engine_label: str
    format: str
    format_label: str
    fits: bool
    reason: str | None = None
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    memory: MemoryPlan | None = None
    prediction: Prediction | None = None
    capacity: Capacity | None = None
    meets_slo: bool = False
    queues: bool = False  # holds fewer sequences than the requested concurrency
    slo_misses: list[str] = field(default_factory=list)
    quality: str = ""
    quality_note: str = ""
    score: float = 0.0
    rank: int | None = None
    why: list[str] = field(default_factory=list)
    launch: str = ""
    calibrated: bool = False
    calibration: str | None = None  # which values came from the calibration file
    # predict_config's own list of every figure the prediction used (planner.assumptions shows it per figure)
    assumptions: dict[str, str | float | int | bool] = field(default_factory=dict)
    calibrated_keys: tuple[str, ...] = ()  # the keys of `assumptions` whose values the calibration set

    @property
    def devices_per_replica(self) -> int:
        return self.tp * self.pp

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class Plan:
    """The ranked options (fitting first) and those that cannot run, with notes on assumptions."""

    model: ModelSpec
    device: Device
    workload: Workload
    options: list[PlanOption]
    unfit: list[PlanOption]
    notes: list[str]

    @property
    def best(self) -> PlanOption | None:
        return self.options[0] if self.options else None

    def bundled_option(self) -> PlanOption | None:
        """The best bundled-engine option: what "benchmark this plan" hands to the Benchmark page."""
        return next((o for o in self.options if o.engine == "bundled"), None)

    def to_dict(self) -> dict:
        return {
            "model": asdict(self.model),
            "device": asdict(self.device),
            "workload": asdict(self.workload),
            "options": [o.to_dict() for o in self.options],
            "unfit": [o.to_dict() for o in self.unfit],
            "notes": self.notes,
        }


def resolve_model(name: str, catalog: Catalog, max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES) -> ModelSpec:
    """A catalog id/name, or a path to a config.json or GGUF file."""
    looks_like_path = name.endswith((".json", ".gguf")) or ("/" in name and Path(name).expanduser().exists())
    return model_from_file(name, max_config_bytes) if looks_like_path else catalog.model(name)


def _memory_config(
    engine: EngineSpec, device: Device, catalog: Catalog, context: int, tp: int = 1, asked: Knobs = DEFAULT_KNOBS
) -> MemoryConfig:
    """The memory budget `predict_config` would use, for the quick fits-at-this-TP questions."""
    knobs = knobs_for(engine, asked)
    limits = scheduler_limits(engine, device, context, Parallel(tp), catalog, knobs)
    return memory_config(engine, device, catalog, limits, knobs)


def knobs_for(engine: EngineSpec, asked: Knobs) -> Knobs:
    """The settings a plan asked for, as this engine takes them: vLLM's own (its sampler, a logged CUDA-graph
    estimate) only reach vLLM options; the TP transport and the engine version (ignored elsewhere) reach all."""
    if engine.id == "vllm":
        return asked
    return replace(asked, vllm_sampler=None, cuda_graph_reserve_gib=None)


def cannot_run(engine: EngineSpec, fmt: FormatSpec, model: ModelSpec, device: Device) -> str | None:
    if engine.architectures and (
        model.architecture not in engine.architectures or model.moe or model.uses_mla or model.sliding_window
    ):
        return f"{engine.label} runs dense {'/'.join(engine.architectures)}-architecture models only"
    layout_problem = sixteen_bit_layout_problem(model, fmt)
    if layout_problem:
        return layout_problem
    if device.kind == "gpu" and fmt.compute == "bf16" and device.flops.get("bf16") is None:
        return f"{device.name} has no BF16: use FP16"
    needed = (engine.format_min_cc or {}).get(fmt.id, fmt.min_cc)
    if device.kind == "gpu" and not cc_at_least(device, needed):
        return (
            f"{fmt.label} on {engine.label} needs compute capability >= {needed}; "
            f"{device.name} has {device.compute_capability}"
        )
    kind = compute_kind(device, fmt)
    if device.kind == "gpu" and kind != "fp32" and not device.flops.get(kind):
        # no compute capability to rule it out (AMD, custom GPUs) and no rate to time it with
        return (
            f"{device.name} has no {kind.upper()} tensor rate in its figures (gpus.json, or {kind}= for a custom GPU)"
        )
    return None


def _tp_candidates(engine: EngineSpec, model: ModelSpec, limit: int) -> list[int]:
    if engine.batching == "single":
        return [1]
    out, tp = [], 1
    while tp <= limit:
        if model.n_heads % tp == 0 and (model.n_kv_heads % tp == 0 or tp % model.n_kv_heads == 0):
            out.append(tp)
        tp *= 2
    return out


@dataclass(frozen=True, slots=True)
class AppliedCalibration:
    """A calibration file's values for one engine on this device, and the line that labels them."""

    engine_id: str
    efficiency: Efficiency
    max_num_seqs: int | None
    label: str
    undetermined: tuple[str, ...] = ()  # fitted values' names the runs could not determine (the catalog's)

    @property
    def keys(self) -> tuple[str, ...]:
        """The assumption keys whose values come from the file: its efficiencies and fixed costs per pass and
        per sequence (less those its runs could not determine, which stay the catalog's), the TTFT line that
        names its queued prefills, its batch limit where it has one, and the line naming the file."""
        seqs = ("max_num_seqs",) if self.max_num_seqs else ()
        fitted = tuple(key for name, key in FITTED_KEYS.items() if name not in self.undetermined)
        return (*fitted, "ttft", *seqs, "calibration")


# A calibration's fitted values and the assumption keys that show them.
FITTED_KEYS = {
    "decode_bandwidth": "decode_bandwidth_efficiency",
    "prefill_flops": "prefill_flops_efficiency",
    "step_overhead_ms": "step_overhead_ms",
    "seq_overhead_us": "seq_overhead_us",
    "prompt_overhead_ms": "prompt_pass_overhead_ms",
    "ingest_ms": "ingest_ms",
}


@dataclass(frozen=True, slots=True)
class _Ctx:
    model: ModelSpec
    device: Device
    workload: Workload
    catalog: Catalog
    calibration: AppliedCalibration | None = None
    # What the user pinned for every option: vLLM's release, sampler and CUDA-graph estimate, the TP transport.
    knobs: Knobs = DEFAULT_KNOBS


def _evaluate(ctx: _Ctx, engine: EngineSpec, fmt: FormatSpec, par: Parallel, engine_id: str) -> PlanOption:
    """What `predict_config` computes for one engine x format x parallelism, plus the SLO check,
    capacity and launch command."""
    m, dev, w = ctx.model, ctx.device, ctx.workload
    cal = ctx.calibration if ctx.calibration and ctx.calibration.engine_id == engine.id else None
    knobs = replace(knobs_for(engine, ctx.knobs), max_num_seqs=cal.max_num_seqs if cal else None)
    config = PlannedConfig(m, dev, engine, fmt, par, w, ctx.catalog, knobs, cal.efficiency if cal else None)
    cp = predict_config(config)
    if cal is not None:
        cp.assumptions["calibration"] = cal.label  # as `predict --calibration` lists it
    mem = cp.memory
    label = ctx.catalog.engines_file.distributed.label if engine_id == "vllm-ray" else engine.label
    opt = PlanOption(
        engine_id,
        label,
        fmt.id,
        fmt.label,
        cp.fits,
        tp=par.tp,
        pp=par.pp,
        memory=mem,
        quality=fmt.quality,
        quality_note=quality_note(fmt, ctx.catalog),
        calibrated=cal is not None,
        calibration=cal.label if cal else None,
        assumptions=cp.assumptions,
        calibrated_keys=cal.keys if cal else (),
    )
    if not cp.fits:
        opt.reason = cp.reason
        return opt
    opt.replicas = cp.replicas
    dec, pre, step = cp.decode, cp.prefill, cp.step_s
    assert dec is not None and pre is not None and step is not None
    opt.prediction = Prediction(
        batch=cp.batch,
        ttft_ms=cp.ttft_s * 1e3,
        tpot_ms=cp.tpot_s * 1e3,
        e2e_ms=cp.e2e_s * 1e3,
        output_tok_s=cp.output_tok_s,
        max_output_tok_s=cp.max_output_tok_s,
        busy_replicas=cp.busy_replicas,
        max_batch=cp.max_batch,
        decode_step_ms=dec.seconds * 1e3,
        decode_bound=dec.bound,
        prefill_bound=pre.bound,
        decode_bytes=dec.bytes_read,
        decode_flops=dec.flops,
        arithmetic_intensity=dec.flops / dec.bytes_read,
        ridge_point=ridge_point(dev, fmt),
    )
    slo = w.slo
    p = opt.prediction
    misses = []
    if slo.ttft_ms is not None and p.ttft_ms > slo.ttft_ms:
        misses.append(f"TTFT {p.ttft_ms:.0f} ms > {slo.ttft_ms:g} ms")
    if slo.tpot_ms is not None and p.tpot_ms > slo.tpot_ms:
        misses.append(f"TPOT {p.tpot_ms:.1f} ms > {slo.tpot_ms:g} ms")
    if slo.e2e_ms is not None and p.e2e_ms > slo.e2e_ms:
        misses.append(f"E2E {p.e2e_ms:.0f} ms > {slo.e2e_ms:g} ms")
    per_replica = math.ceil(w.concurrency / opt.replicas)
    if cp.batch < per_replica:
        opt.queues = True
        misses.append(f"holds {cp.batch} of {per_replica} concurrent requests per replica; the rest queue")
    opt.slo_misses, opt.meets_slo = misses, not misses
    replica = Replica(step, cp.ttft_s, cp.max_batch, par.devices)
    tpot_target = slo.tpot_ms / 1e3 if slo.tpot_ms else None
    opt.capacity = plan_capacity(replica, w.output_tokens, dev.price_per_hour or None, tpot_target, w.qps)
    opt.score = p.output_tok_s * ctx.catalog.quality_weight(fmt.quality)
    # Continuous-batching servers keep their own --max-num-seqs default (the plan sized the KV cache for
    # more than the workload's batch); slot servers and the one-at-a-time bundled engine need the number.
    launch_seqs = None if engine.batching == "continuous" else cp.batch
    opt.launch = launch_command(
        LaunchSpec(
            engine_id,
            fmt,
            m,
            dev.kind,
            par.tp,
            par.pp,
            w.context,
            launch_seqs,
            ctx.catalog.engines_file.vllm_memory.gpu_memory_utilization,
            dev.threads,
            _planned_for(ctx, engine),
        )
    )
    opt.why = _why(ctx, opt, engine, mem, p)
    return opt


def _why(ctx: _Ctx, opt: PlanOption, engine: EngineSpec, mem: MemoryPlan, p: Prediction) -> list[str]:
    w = ctx.workload
    unit = "GPU" if ctx.device.kind == "gpu" else "CPU RAM"
    lines = [
        f"memory per {unit}: {mem.weights_bytes / GIB:.1f} GiB weights + {mem.kv_budget_bytes / GIB:.1f} GiB KV cache "
        f"-> {mem.max_seqs_at_context} sequence(s) at {w.context} tokens, {mem.max_seqs_at_workload} at {w.seq_tokens}",
        f"output {p.output_tok_s:.0f} tok/s at concurrency {w.concurrency}; saturated {p.max_output_tok_s:.0f} tok/s "
        f"(batch {p.max_batch}, prefill included)",
        f"decode is {p.decode_bound}-bound at batch {p.batch}: {p.decode_bytes / 1e9:.2f} GB read per step, "
        f"{p.arithmetic_intensity:.0f} FLOP/byte vs the device's ridge at {p.ridge_point:.0f}",
        f"quality ({opt.quality}): {opt.quality_note}",
    ]
    if opt.tp > 1 or opt.pp > 1:
        split = f"TP {opt.tp}" + (f" x PP {opt.pp} across {opt.pp} nodes" if opt.pp > 1 else "")
        lines.append(
            f"{split}: of the splits that hold the weights and this workload's KV cache, the one "
            "with the best predicted output rate at this concurrency (busy replicas only; below one "
            "replica's batch that is the lowest latency)"
        )
    if opt.replicas > 1:
        lines.append(
            f"{opt.replicas} replicas (data parallel) over {ctx.device.count} GPUs; "
            f"{p.busy_replicas} busy at concurrency {w.concurrency}"
        )
    lines.append(f"{engine.label}: {engine.note}")
    return lines


def tp_efficiency(engine: EngineSpec, device: Device, tp: int, pp: int, catalog: Catalog) -> float:
    """Share of ideal scaling a TP x PP split keeps beyond its all-reduces (priced per pass in
    planner.loaded): llama.cpp's row split gains nothing, and a pipeline across nodes keeps the
    multi-node figure."""
    effs = catalog.engines_file.tensor_parallel_efficiency
    eff = 1.0 / tp if engine.id == "llama.cpp" and tp > 1 else 1.0
    return eff * (effs.multi_node if pp > 1 else 1.0)


def _best_parallel(ctx: _Ctx, engine: EngineSpec, fmt: FormatSpec) -> PlanOption:
    """The TP size with the best score among those meeting the SLO, else among those holding the
    concurrency, else among those that fit; unfit at every size: the largest tried, with the reason."""
    dev = ctx.device
    node = ctx.catalog.engines_file.distributed.gpus_per_node
    limit = min(dev.count, node) if dev.kind == "gpu" else 1
    tried: list[PlanOption] = []
    for tp in _tp_candidates(engine, ctx.model, limit):
        eff = tp_efficiency(engine, dev, tp, 1, ctx.catalog)
        tried.append(_evaluate(ctx, engine, fmt, Parallel(tp, 1, eff), engine.id))
    fitting = [o for o in tried if o.fits]
    for wanted in (lambda o: o.meets_slo, lambda o: not o.queues, lambda o: True):
        group = [o for o in fitting if wanted(o)]
        if group:
            return max(group, key=lambda o: (o.score, -o.tp))
    last = tried[-1]
    if dev.kind == "gpu" and limit < node and engine.batching != "single":
        need = _gpus_needed(ctx, engine, fmt, node)
        if need:
            last.reason = f"needs {need} GPUs with tensor parallel (TP {need}); you have {dev.count}"
    return last


def _planned_for(ctx: _Ctx, engine: EngineSpec) -> str | None:
    """vLLM's launch line naming the release whose memory rule the plan used; None for other engines."""
    rule = vllm_rule_of(engine, ctx.catalog, knobs_for(engine, ctx.knobs))
    return rule.planned_for() if rule else None


def _gpus_needed(ctx: _Ctx, engine: EngineSpec, fmt: FormatSpec, node: int) -> int | None:
    w = ctx.workload
    for tp in _tp_candidates(engine, ctx.model, node):
        cfg = _memory_config(engine, ctx.device, ctx.catalog, w.context, tp, ctx.knobs)
        if plan_memory(ctx.model, fmt, ctx.device.memory_bytes, w.context, w.seq_tokens, cfg, tp).fits:
            return tp
    return None


def _distributed(ctx: _Ctx, engine: EngineSpec, fmt: FormatSpec) -> PlanOption | None:
    """vLLM + Ray over several nodes when one node of this GPU cannot hold the model."""
    dist = ctx.catalog.engines_file.distributed
    node = dist.gpus_per_node
    if node not in _tp_candidates(engine, ctx.model, node):
        return None
    effs = ctx.catalog.engines_file.tensor_parallel_efficiency
    eff = effs.multi_node
    w = ctx.workload
    cfg = _memory_config(engine, ctx.device, ctx.catalog, w.context, node, ctx.knobs)
    for nodes in range(2, MAX_NODES + 1):
        if plan_memory(ctx.model, fmt, ctx.device.memory_bytes, w.context, w.seq_tokens, cfg, node, nodes).fits:
            if ctx.device.count >= node * nodes:
                return _evaluate(ctx, engine, fmt, Parallel(node, nodes, eff), "vllm-ray")
            return PlanOption(
                "vllm-ray",
                dist.label,
                fmt.id,
                fmt.label,
                False,
                quality=fmt.quality,
                reason=f"needs {nodes} nodes x {node} GPUs = {nodes * node} GPUs (vLLM + Ray: TP {node} "
                f"x PP {nodes}); you have {ctx.device.count}",
            )
    return None


def _rank(options: list[PlanOption], ctx: _Ctx) -> list[PlanOption]:
    def slots_only(o: PlanOption) -> bool:
        """Concurrent GPU serving on an engine without continuous batching (llama.cpp slots, bundled)."""
        engine = ctx.catalog.engines.get(o.engine)
        return (
            ctx.device.kind == "gpu"
            and ctx.workload.concurrency > 1
            and engine is not None
            and engine.batching != "continuous"
        )

    def key(o: PlanOption) -> tuple:
        near = o.quality in NEAR_LOSSLESS
        return (not o.meets_slo, slots_only(o), o.meets_slo and not near, -o.score)

    ranked = sorted(options, key=key)
    for i, o in enumerate(ranked, 1):
        o.rank = i
        if i == 1:
            o.why.insert(
                0,
                "ranked 1st: "
                + ("meets the SLO" if o.meets_slo else "nothing meets the SLO; closest")
                + " with the highest predicted throughput x quality weight"
                + (" among near-lossless formats" if o.meets_slo and o.quality in NEAR_LOSSLESS else ""),
            )
            continue
        first, prev = ranked[0], ranked[i - 2]
        if first.meets_slo and not o.meets_slo:
            reason = "misses the SLO: " + "; ".join(o.slo_misses)
        elif key(o)[1] != key(first)[1]:
            reason = (
                "no continuous batching or paged KV cache: behind the servers built for concurrent GPU "
                "traffic whatever its roofline says"
            )
        elif key(o)[:3] != key(first)[:3]:
            reason = f"meets the SLO but costs more quality ({o.quality}) than the options above"
        else:
            reason = f"{(1 - o.score / first.score) * 100:.0f}% below #1 in throughput x quality weight"
        if prev.score and abs(prev.score - o.score) / prev.score < TIE_FRACTION and key(prev)[:3] == key(o)[:3]:
            reason += f"; within {TIE_FRACTION:.0%} of #{i - 1}, a tie within this model's error"
        o.why.insert(0, f"ranked {i}: {reason}")
    return ranked


def recommend(
    model: ModelSpec,
    device: Device,
    workload: Workload,
    catalog: Catalog,
    calibration: AppliedCalibration | None = None,
    knobs: Knobs = DEFAULT_KNOBS,
) -> Plan:
    """Every option for this model on this device, ranked, plus the ones that cannot run; a calibration
    replaces its engine's efficiencies (and batch limit) and labels those options calibrated. `knobs`
    carries what the user pinned for every option (vLLM's release, sampler and CUDA-graph estimate, the
    TP transport), planned as `predict` plans it."""
    if workload.context > model.max_context:
        raise WorkloadError(
            f"context {workload.context} exceeds {model.name}'s maximum of {model.max_context} tokens: "
            f"use --context {model.max_context} or less"
        )
    ctx = _Ctx(model, device, workload, catalog, calibration, knobs)
    fitting, unfit, skipped = [], [], []
    dist = catalog.engines_file.distributed
    for engine in catalog.engines.values():
        runs = engine.cpu if device.kind == "cpu" else device.vendor in engine.vendors
        if not runs:
            skipped.append(engine.label)
            continue
        for fmt_id in engine.formats:
            fmt = catalog.format(fmt_id)
            if fmt.checkpoint_only:
                continue  # a published checkpoint's layout: predicted when named, never proposed
            if fmt.id == "fp16" and device.flops.get("bf16") is not None:
                continue  # same bytes and speed as BF16, which is listed
            why_not = cannot_run(engine, fmt, model, device)
            if why_not:
                unfit.append(
                    PlanOption(engine.id, engine.label, fmt.id, fmt.label, False, why_not, quality=fmt.quality)
                )
                continue
            opt = _best_parallel(ctx, engine, fmt)
            one_node = device.kind == "gpu" and _gpus_needed(ctx, engine, fmt, dist.gpus_per_node) is not None
            if not opt.fits and device.kind == "gpu" and engine.id == dist.engine and not one_node:
                opt = _distributed(ctx, engine, fmt) or opt
            (fitting if opt.fits else unfit).append(opt)
    if not fitting and not unfit:
        raise WorkloadError(f"no engine in the catalog runs on {device.name}")
    notes = [*model.notes, *_notes(device, workload, skipped)]
    vllm = catalog.engines.get("vllm")
    if vllm is not None and vllm.label not in skipped and (line := _planned_for(ctx, vllm)):
        notes.append(f"vLLM options: {line}; another release reserves different memory at start-up")
    if calibration is not None:
        notes.append(f"calibrated: {calibration.engine_id} options use values {calibration.label}")
    return Plan(model, device, workload, _rank(fitting, ctx), unfit, notes)


def _notes(device: Device, workload: Workload, skipped: list[str]) -> list[str]:
    notes = [
        f"TTFT is one {workload.input_tokens}-token prompt beside the batch's decodes plus the wait for the "
        f"prompts ahead (and for a slot past capacity); TPOT at the batch shown with "
        f"{workload.decode_context} cached tokens per sequence; means, while the {workload.slo.name} SLO "
        f"targets are {workload.slo.describe()}",
        f"output tok/s is at concurrency {workload.concurrency}, counting busy replicas only and each request's "
        "prefill; saturated tok/s (capacity) is every replica at its largest batch, prefill included",
        "engine efficiencies (fractions of peak bandwidth and FLOP/s) are assumptions in planner/data/engines.json",
    ]
    if device.measured:
        notes.append(f"CPU figures {device.measured}")
    if skipped:
        notes.append(f"not considered on {device.name}: {', '.join(skipped)} (need a GPU of another kind)")
    return notes
