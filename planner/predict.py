"""One configuration (model x device x engine x format x split x load) predicted: memory per GPU,
latency, throughput at the given load and saturated, and the assumptions behind each figure.

`recommend` ranks what `predict_config` computes, and `python -m planner predict` prints it, so the
table and the single prediction can never disagree.

Load: `concurrency` requests in flight (a closed loop), or `qps` arrivals per second (Little's law:
in flight = rate x end-to-end time). A replica decodes min(its share of the requests, the batch
limit) sequences; only replicas with a request count ("busy replicas"). How a batch turns into TTFT,
TPOT and rates under load (mixed prefill/decode passes, the prefill queue, waiting for a slot past
capacity, the batched-token budget) is planner.loaded's job; this module resolves the engine's
limits, memory and efficiencies and hands them over.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from planner.catalog import Catalog, EngineSpec, FormatSpec, SchedulerDefaults
from planner.catalog import Efficiency as CatalogEfficiency
from planner.loaded import Budget, Loaded, StepCost, allreduce_s, at_batch, prompt_service_s, sustainable_batch
from planner.model_spec import ModelSpec
from planner.replay import REPLAYS, STEADY_WAVES, ReplayLimits, ReplayResult, replay_closed_loop
from planner.roofline import Device, Parallel, StepTime, compute_kind, decode_step, prefill
from planner.sizing import GIB, MemoryConfig, MemoryPlan, plan_memory
from planner.vllm_memory import ResolvedVllmMemory, rule_assumptions, rule_for_engine
from planner.workload import Workload

QPS_ITERATIONS = 30  # fixed-point steps for the batch a request rate settles at
# Output tokens a replay may step through (about 45k a second on 2 cores): beyond, the analytic model answers.
REPLAY_MAX_TOKENS = 400_000


@dataclass(frozen=True, slots=True)
class Knobs:
    """Engine settings the user may pin; None means the engine's own default."""

    kv_cache_dtype: str = "auto"  # "auto" (the model's 16-bit dtype) | "fp8"
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool | None = None
    # vLLM's release or engine generation ("0.10.1.1", "V0"): which memory rule its profile follows
    # (planner.vllm_memory); None plans the catalog's default release. Other engines ignore it.
    engine_version: str | None = None
    # vLLM V1's top-k/top-p sampler when it is not the release's default ("flashinfer" | "pytorch").
    vllm_sampler: str | None = None
    # How a tensor-parallel group's GPUs exchange data: "p2p" (NVLink or PCIe peer-to-peer in one node),
    # "host" (through host memory or the network: no P2P, or a group spanning nodes), or "auto" (p2p unless
    # the device has no peer-to-peer). Only p2p keeps the per-rank GPU buffers of NCCL's P2P transport and
    # vLLM's custom all-reduce.
    tp_transport: str = "auto"
    # vLLM >= 0.21's CUDA-graph estimate as its start-up log printed it, taken out of the KV cache; None: not
    # charged (no public rule sizes it; the assumptions say so).
    cuda_graph_reserve_gib: float | None = None


DEFAULT_KNOBS = Knobs()  # nothing pinned: every engine's own defaults, vLLM's default release


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Fractions of peak bandwidth (decode) and FLOP/s (prefill) the engine reaches on this device, and,
    from a calibration, the measured fixed cost of a forward pass that replaces the dispatch estimate."""

    decode_bandwidth: float
    prefill_flops: float
    step_overhead_s: float | None = None
    # A calibrated extra wait before the first token, in shares of each other in-flight prompt's prefill
    # (closed-loop requests of equal length can arrive in waves). 0: the M/D/1 prefill queue alone.
    queued_prefills: float = 0.0
    prefill_flops_fp8: float | None = None  # share of the FP8 peak (None: prefill_flops)
    seq_overhead_s: float = 0.0  # per sequence in the batch, per forward pass
    pass_spread: float = 0.0  # measured sd of ln pass time: a replay prices its passes with this scatter
    ingest_s: float = 0.0  # server time per arriving request before its scheduler sees it (one at a time)
    prompt_overhead_s: float = 0.0  # a pass carrying prompt tokens costs this much more than its FLOPs say

    def flops_for(self, compute: str) -> float:
        return self.prefill_flops_fp8 if compute == "fp8" and self.prefill_flops_fp8 else self.prefill_flops


@dataclass(frozen=True, slots=True)
class PlannedConfig:
    """One configuration to plan (model x device x engine x format x split x load) with the catalog, the
    user's knobs and any calibrated efficiency: what `predict_config` and `pass_pricing` both take, so
    a configuration is named once and priced the same way by each."""

    model: ModelSpec
    device: Device
    engine: EngineSpec
    fmt: FormatSpec
    par: Parallel
    workload: Workload
    catalog: Catalog
    knobs: Knobs = DEFAULT_KNOBS
    efficiency: Efficiency | None = None  # replaces the engine's catalog figures (calibration)


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """The batch limits a replica runs with: `max_num_seqs` None means only the KV cache limits it."""

    max_num_seqs: int | None
    max_num_batched_tokens: int
    chunked_prefill: bool
    source: str
    prefill_chunk_tokens: int | None = None  # most prompt tokens one sequence computes per pass
    replayed: bool = False  # closed loops are replayed through this scheduler (planner/replay.py)


def dispatch_overhead_s(engine: EngineSpec, device: Device, model: ModelSpec, decode_only: bool = False) -> float:
    """Per-forward time a pure-PyTorch engine spends issuing ops: layers x ops per layer x time per op
    (measured on CPU; on a GPU the launch cost, or for a `decode_only` pass the in-graph cost of an op where
    the engine replays decode from CUDA graphs). Zero for engines without the figure."""
    if not engine.dispatch_ops_per_layer:
        return 0.0
    if device.kind == "cpu":
        per_op = device.op_overhead_s or 0.0
    else:
        graphed = engine.gpu_graph_op_us if decode_only else None
        per_op = (graphed or engine.gpu_op_overhead_us or 0.0) * 1e-6
    return model.n_layers * engine.dispatch_ops_per_layer * per_op


def resolved_kv_cache_dtype(engine: EngineSpec, kv_cache_dtype: str = "auto", fmt: FormatSpec | None = None) -> str:
    """What "auto" means for this engine and format: the checkpoint's own KV quantization where the engine
    follows it (TensorRT-LLM on ModelOpt FP8 checkpoints), else the model's 16-bit dtype."""
    if kv_cache_dtype != "auto" or fmt is None or not engine.checkpoint_kv_cache_dtype:
        return kv_cache_dtype
    return engine.checkpoint_kv_cache_dtype.get(fmt.id, "auto")


def kv_dtype_bytes(
    engine: EngineSpec, device: Device, kv_cache_dtype: str = "auto", fmt: FormatSpec | None = None
) -> int:
    """Bytes per cached K/V element: fp8 halves the 16-bit cache; the bundled engine's CPU path computes
    (and caches) in fp32."""
    if engine.id == "bundled" and device.kind == "cpu":
        return 4
    return 1 if resolved_kv_cache_dtype(engine, kv_cache_dtype, fmt) == "fp8" else 2


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
        if not chunked and d.unchunked_raises_to_context:
            tokens = max(context, tokens)
        tokens = max(tokens, seqs) if d.budget_covers_seqs else min(seqs * context, tokens)
    if knobs.max_num_seqs is None:
        seqs = min(seqs, tokens)
    cap = seqs if (own or knobs.max_num_seqs is not None) else None
    where = d.source if own else f"no verified defaults for {engine.label}: vLLM's used for activations"
    return SchedulerLimits(
        cap,
        tokens,
        chunked,
        f"{d.version}: {where}" if own else where,
        d.prefill_chunk_tokens if own else None,
        d.replayed and own and chunked,
    )


def vllm_rule_of(engine: EngineSpec, catalog: Catalog, knobs: Knobs) -> ResolvedVllmMemory | None:
    """vLLM's memory rule as these settings pin it (release, sampler, logged CUDA-graph estimate); None
    for other engines. The one call memory, assumptions and launch lines share."""
    table = catalog.engines_file.vllm_versions
    return rule_for_engine(engine.id, table, knobs.engine_version, knobs.vllm_sampler, knobs.cuda_graph_reserve_gib)


def tp_transport_of(knobs: Knobs, device: Device) -> str:
    """The transport a tensor-parallel group uses: as asked, or for "auto" what the device allows."""
    if knobs.tp_transport != "auto":
        return knobs.tp_transport
    return "p2p" if device.peer_to_peer else "host"


def memory_config(
    engine: EngineSpec,
    device: Device,
    catalog: Catalog,
    limits: SchedulerLimits,
    knobs: Knobs,
    fmt: FormatSpec | None = None,
) -> MemoryConfig:
    """How this engine budgets memory on this device, with the batch limits it runs with. The user's memory
    fraction is vLLM's --gpu-memory-utilization, or TensorRT-LLM's --kv_cache_free_gpu_memory_fraction."""
    ef = catalog.engines_file
    vm = ef.vllm_memory
    plain_overhead = (
        int(ef.cpu_runtime_overhead_gib * GIB)
        if device.kind == "cpu"
        else max(int(vm.overhead_min_gib * GIB), int(vm.overhead_fraction * device.memory_bytes))
    )
    act = vm.activation_per_token
    rule = vllm_rule_of(engine, catalog, knobs)
    r = rule.regime if rule is not None else None
    # A vLLM release's own profile terms; other engines keep MemoryConfig's (the V0 rule's) defaults.
    version_terms: dict = {}
    if r is not None:
        version_terms = {
            "sampler_bytes_per_logit": r.sampler_bytes_per_logit,
            "sampler_holds_hidden": r.sampler_holds_hidden_states,
            "non_torch_bytes": None if r.non_torch_gib is None else int(r.non_torch_gib * GIB),
            "graph_reserve_bytes": int((rule.graph_reserve_gib or 0) * GIB),
        }
    rank_gib = ef.tp_rank_overhead.gib if r is None or r.tp_rank_gib is None else r.tp_rank_gib
    if tp_transport_of(knobs, device) == "host":
        rank_gib = 0.0  # engines.json tp_transport: the per-rank buffers exist only between peer-to-peer GPUs
    return MemoryConfig(
        mode=engine.memory_model,
        utilization=(knobs.gpu_memory_utilization if engine.memory_model == "utilization" else None)
        or vm.gpu_memory_utilization,
        kv_free_fraction=(knobs.gpu_memory_utilization if engine.memory_model == "free_fraction" else None)
        or vm.kv_free_fraction,
        block_size=vm.block_size,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        max_num_seqs=limits.max_num_seqs or _defaults_for(engine.id, catalog).max_num_seqs,
        chunked_prefill=limits.chunked_prefill,
        overhead_min_bytes=int(vm.overhead_min_gib * GIB),
        overhead_fraction=vm.overhead_fraction,
        tp_rank_overhead_bytes=int(rank_gib * GIB),
        fixed_overhead_bytes=plain_overhead,
        kv_dtype_bytes=kv_dtype_bytes(engine, device, knobs.kv_cache_dtype, fmt),
        act_ffn=act.ffn,
        act_hidden=act.hidden,
        act_bytes=act.bytes,
        **version_terms,
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
    saturated_e2e_s: float = 0.0  # one request's service with every slot busy (no queue)
    e2e_s: float = 0.0
    output_tok_s: float = 0.0
    max_output_tok_s: float = 0.0
    requests_s: float = 0.0
    saturated: bool = False  # the request rate exceeds what the replicas can serve: the queue grows
    notes: list[str] = field(default_factory=list)
    step_s: Callable[[int], float] | None = None  # decode step time at a batch, for the capacity table

    prompt_s: float = 0.0  # the request's own prompt, chunk by chunk beside the batch's decodes
    ttft_wait_s: float = 0.0  # waiting for the prompts ahead (M/D/1) and, past capacity, for a slot

    @property
    def ttft_s(self) -> float:
        return self.prompt_s + self.ttft_wait_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token at this load: the decode step plus the other requests' prefill work."""
        return self.tpot_load_s


def replayer(
    cost: StepCost,
    limits: SchedulerLimits,
    cap: int,
    batching: str,
    n_in: int,
    n_out: int,
    clients: int,
    requests: int | None,
    spread: float = 0.0,
    ingest_s: float = 0.0,
) -> Callable[[int, int | None], ReplayResult] | None:
    """Closed loops through the engine's own scheduler, where the planner knows it and the replay stays
    short (REPLAY_MAX_TOKENS); None elsewhere."""
    if not (limits.replayed and batching == "continuous" and limits.prefill_chunk_tokens):
        return None
    if max(cap, clients) * STEADY_WAVES * n_out > REPLAY_MAX_TOKENS or (requests or 0) * n_out > REPLAY_MAX_TOKENS:
        return None  # a replay this long would take minutes in Python: the analytic model answers instead
    rl = ReplayLimits(cap, max(limits.max_num_batched_tokens, cap), limits.prefill_chunk_tokens)
    return lambda clients, requests: replay_closed_loop(cost, rl, clients, n_in, n_out, requests, spread, ingest_s)


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


@dataclass(frozen=True, slots=True)
class Pricing:
    """How one configuration prices a forward pass: the efficiencies and fixed cost in force, and the price."""

    eff: Efficiency
    overhead_s: float
    precision: str  # the matmuls' compute kind (compute_kind)
    flops_eff: float  # eff's FLOP/s share for that kind
    comm: Callable[[float], float]  # all-reduce time of a pass over this many tokens
    cost: StepCost


def catalog_efficiency(engine: EngineSpec, device: Device) -> CatalogEfficiency:
    """The engine's catalog efficiencies and fixed costs for this kind of device."""
    return engine.efficiency["cpu" if device.kind == "cpu" else "gpu"]


def pass_pricing(config: PlannedConfig) -> Pricing:
    """The price of one forward pass of a replica (StepCost), with `config.efficiency` in place of the
    catalog's figures. One home for it: `predict_config` prices its passes here, and a calibration fits a
    server's logged passes against the same function (planner.calibrate)."""
    model, device, engine, fmt, par = config.model, config.device, config.engine, config.fmt, config.par
    workload, catalog, knobs, efficiency = config.workload, config.catalog, config.knobs, config.efficiency
    cat_eff = catalog_efficiency(engine, device)
    eff = efficiency or Efficiency(
        cat_eff.decode_bandwidth,
        cat_eff.prefill_flops,
        prefill_flops_fp8=cat_eff.prefill_flops_fp8,
        seq_overhead_s=cat_eff.seq_overhead_us * 1e-6,
    )
    if eff.step_overhead_s is None:
        graphed = dispatch_overhead_s(engine, device, model, decode_only=True)
        overhead = graphed + cat_eff.step_overhead_us * 1e-6
        # a pass that carries prompt tokens runs eagerly where decode-only passes replay a graph
        eager_extra = dispatch_overhead_s(engine, device, model) - graphed
    else:
        overhead, eager_extra = eff.step_overhead_s, 0.0
    precision = compute_kind(device, fmt)
    flops_eff = eff.flops_for(precision)
    kv_bytes = kv_dtype_bytes(engine, device, knobs.kv_cache_dtype, fmt)
    links = catalog.engines_file.tensor_parallel_efficiency.links(device.interconnect)
    layers_per_stage = math.ceil(model.n_layers / par.pp)

    def comm(tokens: float) -> float:
        return allreduce_s(tokens, model.hidden_size, par.tp, layers_per_stage, links)

    def decode_at(b: int) -> StepTime:
        return decode_step(
            model,
            fmt,
            device,
            b,
            workload.decode_context,
            bandwidth_efficiency=eff.decode_bandwidth,
            flops_efficiency=flops_eff,
            parallel=par,
            overhead_s=overhead,
            kv_dtype_bytes=kv_bytes,
        )

    pre = prefill(
        model,
        fmt,
        device,
        workload.computed_input_tokens,
        bandwidth_efficiency=eff.decode_bandwidth,
        flops_efficiency=flops_eff,
        parallel=par,
        overhead_s=overhead + eager_extra,
    )
    prompt_fixed = eff.prompt_overhead_s + eager_extra
    cost = StepCost(decode_at, pre, workload.computed_input_tokens, overhead, eff.seq_overhead_s, comm, prompt_fixed)
    return Pricing(eff, overhead, precision, flops_eff, comm, cost)


def predict_config(config: PlannedConfig, qps: float | None = None) -> ConfigPrediction:
    """Memory, latency and throughput for one configuration at `config.workload.concurrency` (or at `qps`
    arrivals per second when given). `config.efficiency` replaces the engine's catalog figures (calibration)."""
    model, device, engine, fmt, par = config.model, config.device, config.engine, config.fmt, config.par
    workload, catalog, knobs = config.workload, config.catalog, config.knobs
    limits = scheduler_limits(engine, device, workload.context, par, catalog, knobs)
    cfg = memory_config(engine, device, catalog, limits, knobs, fmt)
    mem = plan_memory(model, fmt, device.memory_bytes, workload.context, workload.seq_tokens, cfg, par.tp, par.pp)
    pricing = pass_pricing(config)
    eff, overhead, flops_eff, comm = pricing.eff, pricing.overhead_s, pricing.flops_eff, pricing.comm
    cat_eff = catalog_efficiency(engine, device)
    batching = engine.batching
    if batching == "single" and (knobs.max_num_seqs or 1) > 1:
        batching = "continuous"  # `python -m engine serve --max-num-seqs N` batches continuously, chunking prefill
    kv_bytes = cfg.kv_dtype_bytes
    assumptions: dict[str, str | float | int | bool] = {
        "decode_bandwidth_efficiency": eff.decode_bandwidth,
        "prefill_flops_efficiency": flops_eff,
        "matmul_precision": pricing.precision,
        "tensor_parallel_efficiency": par.efficiency,
        "step_overhead_ms": overhead * 1e3,
        "seq_overhead_us": eff.seq_overhead_s * 1e6,
        "prompt_pass_overhead_ms": pricing.cost.prompt_fixed_s * 1e3,
        "ingest_ms": eff.ingest_s * 1e3,
        "allreduce_ms_per_decode_token": comm(1) * 1e3,
        "gpu_memory_utilization": cfg.utilization if cfg.mode == "utilization" else cfg.kv_free_fraction,
        "block_size": mem.block_size,
        "kv_cache_dtype": resolved_kv_cache_dtype(engine, knobs.kv_cache_dtype, fmt),
        "kv_cache_dtype_bytes": kv_bytes,
        "activation_gib": mem.activation_bytes / GIB,
        "runtime_overhead_gib": mem.overhead_bytes / GIB,
        **rule_assumptions(vllm_rule_of(engine, catalog, knobs)),
        "max_num_batched_tokens": limits.max_num_batched_tokens,
        "max_num_seqs": limits.max_num_seqs if limits.max_num_seqs is not None else "KV cache only",
        "chunked_prefill": limits.chunked_prefill,
        "batching": batching,
        "scheduler_defaults": limits.source,
        "efficiency_source": cat_eff.source or engine.source,
        "ttft": "own prompt chunk by chunk beside the batch's decodes, plus an M/D/1 wait for the prompts ahead"
        + (f", plus {eff.queued_prefills:.3g} of each other prompt (calibrated)" if eff.queued_prefills else "")
        + "; past the replicas' capacity, the wait for a slot",
        "tpot": f"decode step at {workload.decode_context} cached tokens per sequence; the steps that carry "
        "the other sequences' replacement prompts cost their prefill FLOPs too",
    }
    if par.tp > 1:
        transport = tp_transport_of(knobs, device)
        why = (
            f" (auto: the {device.name} has no peer-to-peer)"
            if knobs.tp_transport == "auto" and transport == "host"
            else ""
        )
        assumptions["tp_transport"] = catalog.engines_file.tp_transport.describe(transport) + why
    if workload.cached_input_tokens:
        assumptions["cached_input_tokens"] = (
            f"{workload.cached_input_tokens} of each {workload.input_tokens}-token prompt served by the prefix cache: "
            f"prefill computes {workload.computed_input_tokens}; the KV cache holds the whole prompt"
        )
    replicas = max(1, device.count // par.devices) if device.kind == "gpu" else 1
    out = ConfigPrediction(mem.fits, None, mem, limits, replicas, eff, assumptions)
    if not mem.fits:
        out.reason = _unfit_reason(mem, workload.context)
        return out

    cost = pricing.cost
    decode_at, pre = cost.decode, cost.prompt
    kv_cap = {"single": 1, "slots": mem.max_seqs_at_context}.get(batching, mem.max_seqs_at_workload)
    cap = max(1, min(kv_cap, limits.max_num_seqs) if limits.max_num_seqs else kv_cap)
    # One at a time, or slots: prompts are not chunked beside other sequences' decodes.
    budget = Budget(limits.max_num_batched_tokens, limits.chunked_prefill and batching == "continuous")
    n_in, n_out = workload.computed_input_tokens, workload.output_tokens  # prefill work: cached tokens cost none
    sat_batch = sustainable_batch(cap, budget, n_in, n_out)

    def extra_wait(b: int) -> float:
        return eff.queued_prefills * (b - 1) * pre.seconds

    def loaded(b: int, arrivals_s: float | None = None) -> Loaded:
        return at_batch(cost, budget, b, n_in, n_out, arrivals_s=arrivals_s, extra_wait=extra_wait)

    capacity = replicas * sat_batch
    replay = (
        replayer(
            cost,
            limits,
            cap,
            batching,
            n_in,
            n_out,
            workload.concurrency,
            workload.requests,
            eff.pass_spread,
            eff.ingest_s,
        )
        if qps is None
        else None
    )
    assumptions["closed_loop"] = "replayed" if replay is not None else "analytic"
    if replay is not None:
        # The engine's own scheduler, pass by pass: saturated = every slot's client sending.
        sat = replay(sat_batch, None)
        busy = Loaded(sat_batch, 0.0, sat.ttft_s, sat.tpot_s, sat.e2e_s)
        service_sat, max_rps = sat.e2e_s, replicas * sat.requests_s
    else:
        # Saturated: every slot busy, no queue counted in the request's own service (the queue is the excess).
        busy = loaded(sat_batch)
        service_sat = busy.e2e_s - busy.queue_s + extra_wait(sat_batch)
        max_rps = replicas * sat_batch / service_sat
    if replay is not None:
        clients = math.ceil(workload.concurrency / replicas)
        same = clients == sat_batch and not workload.requests
        r = sat if same else replay(clients, math.ceil(workload.requests / replicas) if workload.requests else None)
        batch = max(1, min(round(r.mean_batch), sat_batch))
        alone = prompt_service_s(cost, budget, batch - 1, n_in)
        state = Loaded(batch, max(0.0, r.ttft_s - alone), min(alone, r.ttft_s), r.tpot_s, r.e2e_s)
        in_flight = min(r.mean_batch * replicas, float(capacity))
        rps = r.requests_s * replicas
        assumptions["ttft"] = assumptions["tpot"] = (
            f"the engine's scheduler replayed pass by pass ({limits.max_num_batched_tokens} tokens per pass, "
            f"{limits.prefill_chunk_tokens} per prompt chunk, decodes first, prompts first come first served), "
            f"{clients} closed-loop client(s) starting together, "
            + (f"{workload.requests} requests" if workload.requests else "steady state after the first wave")
            + (
                f"; each pass's time scattered by a measured sd of ln {eff.pass_spread:.3g}, "
                f"{REPLAYS} seeded replays pooled"
                if eff.pass_spread
                else ""
            )
        )
    elif qps is None:
        clients = workload.concurrency
        batch = max(1, min(math.ceil(clients / replicas), sat_batch))
        in_flight = float(min(clients, capacity))
        if clients > capacity:
            # Closed loop past capacity: every slot busy (the saturated state), and each client's cycle is
            # clients / max_rps, so the rest of it is spent waiting for a slot.
            slot_wait = max(0.0, clients / max_rps - service_sat)
            state = replace(busy, queue_s=busy.queue_s + slot_wait, e2e_s=busy.e2e_s + slot_wait)
            rps = max_rps
        else:
            state = loaded(batch)
            rps = min(in_flight / state.e2e_s, max_rps)
    else:
        per_replica = qps / replicas
        out.saturated = qps > max_rps
        batch = 1
        state = loaded(batch, per_replica)
        for _ in range(QPS_ITERATIONS):
            wanted = max(
                1, min(math.ceil(per_replica * state.e2e_s) if math.isfinite(state.e2e_s) else sat_batch, sat_batch)
            )
            if wanted == batch:
                break
            batch = wanted
            state = loaded(batch, per_replica)
        in_flight = min(qps * state.e2e_s, float(capacity)) if math.isfinite(state.e2e_s) else float(capacity)
        rps = min(qps, max_rps)
        if out.saturated:
            out.notes.append(
                f"{qps:g} req/s exceeds the {max_rps:.2f} req/s these replicas serve: the queue grows without bound"
            )
    out.kv_batch_limit, out.max_batch, out.batch = kv_cap, sat_batch, batch
    out.busy_replicas = min(replicas, max(1, math.ceil(in_flight / batch)))
    out.in_flight = in_flight
    out.decode, out.prefill = decode_at(batch), pre
    out.prompt_s = state.prompt_s
    out.tpot_load_s = state.tpot_s
    out.ttft_wait_s = state.queue_s
    out.saturated_tpot_s = busy.tpot_s
    out.saturated_e2e_s = service_sat
    out.e2e_s = state.e2e_s
    out.requests_s = rps
    out.output_tok_s = rps * n_out
    out.max_output_tok_s = max_rps * n_out
    out.step_s = cost
    return out
