"""One configuration (model x device x engine x format x split x load) predicted: memory per GPU,
latency, throughput at the given load and saturated, and the assumptions behind each figure.

`recommend` ranks what `predict_config` computes, and `python -m planner predict` prints it, so the
table and the single prediction can never disagree.

Load: `concurrency` requests in flight (a closed loop), or `qps` arrivals per second (Little's law:
in flight = rate x end-to-end time). A replica decodes min(its share of the requests, the batch
limit) sequences; only replicas with a request count ("busy replicas"). The output rate at load is
in-flight requests x output tokens / end-to-end time, so below one replica's batch it is set by
latency, never by idle replicas. The saturated rate charges every request its prefill, which stalls
the batch, plus its share of decode steps at the largest batch: max_num_seqs and the KV cache allow.
TTFT is one prompt on an idle replica: no queueing delay is modelled yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from planner.catalog import Catalog, EngineSpec, FormatSpec, SchedulerDefaults
from planner.model_spec import ModelSpec
from planner.roofline import Device, Parallel, StepTime, decode_step, prefill
from planner.sizing import GIB, MemoryConfig, MemoryPlan, plan_memory
from planner.workload import Workload

QPS_ITERATIONS = 30  # fixed-point steps for the batch a request rate settles at


@dataclass(frozen=True, slots=True)
class Knobs:
    """Engine settings the user may pin; None means the engine's own default."""

    kv_cache_dtype: str = "auto"  # "auto" (the model's 16-bit dtype) | "fp8"
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool | None = None


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Fractions of peak bandwidth (decode) and FLOP/s (prefill) the engine reaches on this device, and,
    from a calibration, the measured fixed cost of a forward pass that replaces the dispatch estimate."""

    decode_bandwidth: float
    prefill_flops: float
    step_overhead_s: float | None = None
    # Other in-flight requests' prompts prefilled before a new request's first token, per other request:
    # closed-loop requests of equal length finish and arrive in waves, so a wave's prompts queue behind
    # each other (about half of them, FCFS). 0: an idle replica, the uncalibrated figure.
    queued_prefills: float = 0.0


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """The batch limits a replica runs with: `max_num_seqs` None means only the KV cache limits it."""

    max_num_seqs: int | None
    max_num_batched_tokens: int
    chunked_prefill: bool
    source: str


def dispatch_overhead_s(engine: EngineSpec, device: Device, model: ModelSpec) -> float:
    """Per-forward time a pure-PyTorch engine spends issuing ops: layers x ops per layer x time per op
    (measured on CPU; an assumed launch cost on GPU). Zero for engines without the figure."""
    if not engine.dispatch_ops_per_layer:
        return 0.0
    per_op = device.op_overhead_s if device.kind == "cpu" else (engine.gpu_op_overhead_us or 0) * 1e-6
    return model.n_layers * engine.dispatch_ops_per_layer * (per_op or 0.0)


def kv_dtype_bytes(engine: EngineSpec, device: Device, kv_cache_dtype: str = "auto") -> int:
    """Bytes per cached K/V element: fp8 halves the 16-bit cache; the bundled engine's CPU path computes
    (and caches) in fp32."""
    if engine.id == "bundled" and device.kind == "cpu":
        return 4
    return 1 if kv_cache_dtype == "fp8" else 2


def _defaults_for(engine_id: str, catalog: Catalog) -> SchedulerDefaults:
    """The engine's own defaults; an engine without a verified entry is sized with vLLM's (an assumption)."""
    table = catalog.engines_file.scheduler_defaults
    return table.get(engine_id) or table["vllm"]


def scheduler_limits(
    engine: EngineSpec, device: Device, context: int, par: Parallel, catalog: Catalog, knobs: Knobs
) -> SchedulerLimits:
    """max_num_seqs / max_num_batched_tokens / chunked prefill as the engine would resolve them.

    vLLM: the device decides the defaults (large-memory GPUs get more), chunked prefill off raises the
    batched tokens to max_model_len, the tokens never exceed seqs x max_model_len and the seqs never
    exceed the tokens. Engines without their own entry are sized with vLLM's numbers for activations
    but get no sequence cap beyond their KV cache unless the user sets one.
    """
    d = _defaults_for(engine.id, catalog)
    own = engine.id in catalog.engines_file.scheduler_defaults
    seqs, tokens = d.max_num_seqs, d.max_num_batched_tokens
    big = d.large_memory
    name = device.name.lower()
    if (
        device.kind == "gpu"
        and big is not None
        and device.memory_bytes >= big.min_gib * GIB
        and not any(x in name for x in big.exclude_names)
    ):
        seqs, tokens = big.max_num_seqs, big.max_num_batched_tokens
    if device.kind == "cpu" and d.cpu is not None:
        world = par.devices if d.cpu.per_rank else 1
        seqs, tokens = d.cpu.max_num_seqs * world, d.cpu.max_num_batched_tokens * world
    chunked = d.chunked_prefill if knobs.chunked_prefill is None else knobs.chunked_prefill
    if knobs.max_num_seqs is not None:
        seqs = knobs.max_num_seqs
    if knobs.max_num_batched_tokens is not None:
        tokens = knobs.max_num_batched_tokens
    else:
        if not chunked:
            tokens = max(context, tokens)
        tokens = min(seqs * context, tokens)
    if knobs.max_num_seqs is None:
        seqs = min(seqs, tokens)
    cap = seqs if (own or knobs.max_num_seqs is not None) else None
    where = d.source if own else f"no verified defaults for {engine.label}: vLLM's used for activations"
    return SchedulerLimits(cap, tokens, chunked, f"{d.version}: {where}" if own else where)


def memory_config(
    engine: EngineSpec, device: Device, catalog: Catalog, limits: SchedulerLimits, knobs: Knobs
) -> MemoryConfig:
    """How this engine budgets memory on this device, with the batch limits it runs with."""
    ef = catalog.engines_file
    vm = ef.vllm_memory
    plain_overhead = (
        int(ef.cpu_runtime_overhead_gib * GIB)
        if device.kind == "cpu"
        else max(int(vm.overhead_min_gib * GIB), int(vm.overhead_fraction * device.memory_bytes))
    )
    act = vm.activation_per_token
    return MemoryConfig(
        mode=engine.memory_model,
        utilization=knobs.gpu_memory_utilization or vm.gpu_memory_utilization,
        kv_free_fraction=vm.kv_free_fraction,
        block_size=vm.block_size,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        max_num_seqs=limits.max_num_seqs or _defaults_for(engine.id, catalog).max_num_seqs,
        chunked_prefill=limits.chunked_prefill,
        overhead_min_bytes=int(vm.overhead_min_gib * GIB),
        overhead_fraction=vm.overhead_fraction,
        tp_rank_overhead_bytes=int(ef.tp_rank_overhead.gib * GIB),
        fixed_overhead_bytes=plain_overhead,
        kv_dtype_bytes=kv_dtype_bytes(engine, device, knobs.kv_cache_dtype),
        act_ffn=act.ffn,
        act_hidden=act.hidden,
        act_bytes=act.bytes,
    )


@dataclass(slots=True)
class ConfigPrediction:
    """Everything one configuration predicts. Timing fields are None when it does not fit.

    Memory is per device. `batch` is the sequences one busy replica decodes at this load; `max_batch`
    the most it can (max_num_seqs and the KV cache). Rates cover all replicas.
    """

    fits: bool
    reason: str | None
    memory: MemoryPlan
    limits: SchedulerLimits
    replicas: int
    efficiency: Efficiency
    assumptions: dict[str, str | float | int | bool]
    kv_batch_limit: int = 0
    max_batch: int = 0
    batch: int = 0
    busy_replicas: int = 0
    in_flight: float = 0.0
    decode: StepTime | None = None
    prefill: StepTime | None = None
    tpot_load_s: float = 0.0
    saturated_tpot_s: float = 0.0
    e2e_s: float = 0.0
    output_tok_s: float = 0.0
    max_output_tok_s: float = 0.0
    requests_s: float = 0.0
    saturated: bool = False  # the request rate exceeds what the replicas can serve: the queue grows
    notes: list[str] = field(default_factory=list)
    step_s: Callable[[int], float] | None = None  # decode step time at a batch, for the capacity table

    ttft_wait_s: float = 0.0  # a calibrated wait for the other prompts' prefill (0: an idle replica)

    @property
    def ttft_s(self) -> float:
        return (self.prefill.seconds if self.prefill else 0.0) + self.ttft_wait_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token at this load: the decode step plus the other requests' prefill work."""
        return self.tpot_load_s


def _unfit_reason(mem: MemoryPlan, context: int) -> str:
    if mem.kv_budget_bytes < 0:  # the weights alone overflow: no KV budget to speak of
        room = f"needs {-mem.kv_budget_bytes / GIB:.1f} GiB more than the device has before any KV cache"
        return (
            f"does not fit: {mem.weights_bytes / GIB:.1f} GiB of weights per device {room}; one "
            f"{context}-token sequence needs {mem.shortfall_bytes() / GIB:.1f} GiB more per device"
        )
    text = (
        f"does not fit: {mem.weights_bytes / GIB:.1f} GiB of weights per device leaves "
        f"{mem.kv_budget_bytes / GIB:.1f} GiB for the KV cache; one {context}-token sequence needs "
        f"{mem.shortfall_bytes() / GIB:.1f} GiB more per device"
    )
    refusal = mem.refusal()
    return f"{text}. vLLM would refuse to start: {refusal}" if refusal and mem.block_size > 1 else text


def predict_config(
    model: ModelSpec,
    device: Device,
    engine: EngineSpec,
    fmt: FormatSpec,
    par: Parallel,
    workload: Workload,
    catalog: Catalog,
    knobs: Knobs = Knobs(),
    efficiency: Efficiency | None = None,
    qps: float | None = None,
) -> ConfigPrediction:
    """Memory, latency and throughput for one configuration at `workload.concurrency` (or at `qps`
    arrivals per second when given). `efficiency` replaces the engine's catalog figures (calibration)."""
    limits = scheduler_limits(engine, device, workload.context, par, catalog, knobs)
    cfg = memory_config(engine, device, catalog, limits, knobs)
    mem = plan_memory(model, fmt, device.memory_bytes, workload.context, workload.seq_tokens, cfg, par.tp, par.pp)
    cat_eff = engine.efficiency["cpu" if device.kind == "cpu" else "gpu"]
    eff = efficiency or Efficiency(cat_eff.decode_bandwidth, cat_eff.prefill_flops)
    overhead = dispatch_overhead_s(engine, device, model) if eff.step_overhead_s is None else eff.step_overhead_s
    batching = engine.batching
    if batching == "single" and (knobs.max_num_seqs or 1) > 1:
        batching = "continuous"  # `python -m engine serve --max-num-seqs N` batches continuously, chunking prefill
    kv_bytes = cfg.kv_dtype_bytes
    assumptions: dict[str, str | float | int | bool] = {
        "decode_bandwidth_efficiency": eff.decode_bandwidth,
        "prefill_flops_efficiency": eff.prefill_flops,
        "tensor_parallel_efficiency": par.efficiency,
        "dispatch_overhead_ms": overhead * 1e3,
        "gpu_memory_utilization": cfg.utilization,
        "block_size": mem.block_size,
        "kv_cache_dtype_bytes": kv_bytes,
        "activation_gib": mem.activation_bytes / GIB,
        "runtime_overhead_gib": mem.overhead_bytes / GIB,
        "max_num_batched_tokens": limits.max_num_batched_tokens,
        "max_num_seqs": limits.max_num_seqs if limits.max_num_seqs is not None else "KV cache only",
        "chunked_prefill": limits.chunked_prefill,
        "batching": batching,
        "scheduler_defaults": limits.source,
        "ttft": "one prompt on an idle replica (no queueing delay)"
        if not eff.queued_prefills
        else f"one prompt, plus {eff.queued_prefills:.3g} of each other in-flight prompt's prefill (calibrated)",
        "tpot": f"decode step at {workload.decode_context} cached tokens per sequence, plus the other "
        "in-flight requests' prefill FLOPs spread over this request's output (chunked prefill)",
    }
    replicas = max(1, device.count // par.devices) if device.kind == "gpu" else 1
    out = ConfigPrediction(mem.fits, None, mem, limits, replicas, eff, assumptions)
    if not mem.fits:
        out.reason = _unfit_reason(mem, workload.context)
        return out

    def decode_at(b: int) -> StepTime:
        return decode_step(
            model,
            fmt,
            device,
            b,
            workload.decode_context,
            bandwidth_efficiency=eff.decode_bandwidth,
            flops_efficiency=eff.prefill_flops,
            parallel=par,
            overhead_s=overhead,
            kv_dtype_bytes=kv_bytes,
        )

    def step(b: int) -> float:
        return decode_at(b).seconds

    pre = prefill(
        model,
        fmt,
        device,
        workload.input_tokens,
        bandwidth_efficiency=eff.decode_bandwidth,
        flops_efficiency=eff.prefill_flops,
        parallel=par,
        overhead_s=overhead,
    )
    kv_cap = {"single": 1, "slots": mem.max_seqs_at_context}.get(batching, mem.max_seqs_at_workload)
    cap = max(1, min(kv_cap, limits.max_num_seqs) if limits.max_num_seqs else kv_cap)
    n_out = workload.output_tokens
    # The other sequences' prompts share the steps (chunked prefill) or stall them: each of the b - 1
    # others adds its prefill FLOPs once over this sequence's n_out steps.
    prefill_work_s = pre.compute_s if batching == "continuous" else 0.0

    def tpot_at(b: int) -> float:
        return step(b) + (b - 1) * prefill_work_s / n_out

    def wait_at(b: int) -> float:
        return eff.queued_prefills * (b - 1) * pre.seconds

    def e2e_at(b: int) -> float:
        return pre.seconds + wait_at(b) + (n_out - 1) * tpot_at(b)

    max_rps = replicas * cap / e2e_at(cap)
    if qps is None:
        batch = max(1, min(math.ceil(workload.concurrency / replicas), cap))
        in_flight = float(min(workload.concurrency, replicas * cap))
    else:
        batch = 1
        for _ in range(QPS_ITERATIONS):
            wanted = max(1, min(math.ceil(qps * e2e_at(batch) / replicas), cap))
            if wanted == batch:
                break
            batch = wanted
        in_flight = min(qps * e2e_at(batch), float(replicas * cap))
    e2e = e2e_at(batch)
    rps = min(in_flight / e2e, max_rps)
    if qps is not None:
        out.saturated = qps > max_rps
        rps = min(qps, max_rps)
        if out.saturated:
            out.notes.append(
                f"{qps:g} req/s exceeds the {max_rps:.2f} req/s these replicas serve: the queue grows without bound"
            )
    out.kv_batch_limit, out.max_batch, out.batch = kv_cap, cap, batch
    out.busy_replicas = min(replicas, max(1, math.ceil(in_flight / batch)))
    out.in_flight = in_flight
    out.decode, out.prefill = decode_at(batch), pre
    out.tpot_load_s = tpot_at(batch)
    out.ttft_wait_s = wait_at(batch)
    out.saturated_tpot_s = tpot_at(cap)
    out.e2e_s = e2e
    out.requests_s = rps
    out.output_tok_s = rps * n_out
    out.max_output_tok_s = max_rps * n_out
    out.step_s = step
    return out
