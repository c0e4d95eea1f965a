"""The planner's two entry points, shared by its CLI and the pages: make a plan, and compare a measured run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from planner.calibration import (
    CalibrationDoc,
    FittedValues,
    assumption_line,
    load_calibration,
    pinned_measurement,
)
from planner.catalog import Catalog, EngineSpec, load_catalog
from planner.compare import Comparison, MeasuredRun, compare
from planner.devices import resolve_device
from planner.errors import PlannerError, WorkloadError
from planner.hardware import Hardware
from planner.loaded import StepCost
from planner.predict import Efficiency, Knobs, PlannedConfig, pass_pricing, predict_config
from planner.predict_io import PredictOptions, PredictResult, build_result, resolve_engine, resolve_format
from planner.recommend import AppliedCalibration, Plan, cannot_run, recommend, resolve_model, tp_efficiency
from planner.roofline import Parallel
from planner.slo_targets import DEFAULT_SLO, slo_targets
from planner.vllm_memory import resolve_vllm_memory
from planner.workload import RecommendOptions, Workload

if TYPE_CHECKING:
    from planner.cpu_probe import CpuMeasurement

BUNDLED_MODEL = "smollm2-135m"


def make_plan(
    opts: RecommendOptions,
    catalog: Catalog | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
) -> Plan:
    """Resolve the model, hardware and SLO named in `opts`, then rank every option."""
    cat = catalog or load_catalog()
    cal = load_calibration(opts.calibration) if opts.calibration else None
    version = planned_version(opts.engine_version, cal, cat)  # before the CPU is measured: one line if wrong
    measure = _pinned(cal, measure)
    model = resolve_model(opts.model, cat, opts.max_config_bytes)
    device = resolve_device(opts.gpu, opts.gpus, cat, opts.price_per_hour, hw, measure)
    inp, out = opts.lengths()
    slo = slo_targets(opts.slo)
    cached = opts.cached_input_tokens
    workload = Workload(opts.context, opts.concurrency, inp, out, slo, opts.qps, cached_input_tokens=cached)
    applied = None
    if cal is not None:
        check_calibration(cal, resolve_engine(cal.engine, cat), device.kind)
        line = assumption_line(cal, opts.calibration or "")
        applied = AppliedCalibration(
            cal.engine, efficiency_of(cal.values), cal.max_num_seqs, line, tuple(cal.undetermined)
        )
    knobs = Knobs(
        engine_version=version,
        vllm_sampler=opts.vllm_sampler,
        tp_transport=opts.tp_transport,
        cuda_graph_reserve_gib=opts.cuda_graph_reserve_gib,
    )
    return recommend(model, device, workload, cat, applied, knobs)


def _pinned(
    cal: CalibrationDoc | None, measure: Callable[[], CpuMeasurement] | None
) -> Callable[[], CpuMeasurement] | None:
    """The CPU measurement a calibration was fitted against, unless the caller brings its own."""
    if cal is None or cal.cpu is None or measure is not None:
        return measure
    pinned = pinned_measurement(cal.cpu)
    return lambda: pinned


def efficiency_of(values: FittedValues) -> Efficiency:
    """Fitted values as predict_config takes them."""
    return Efficiency(
        values.decode_bandwidth,
        values.prefill_flops,
        values.step_overhead_ms / 1e3,
        values.queued_prefills,
        seq_overhead_s=values.seq_overhead_us * 1e-6,
        pass_spread=values.pass_spread,
        ingest_s=values.ingest_ms / 1e3,
        prompt_overhead_s=values.prompt_overhead_ms / 1e3,
    )


def check_calibration(doc: CalibrationDoc, engine: EngineSpec, device_kind: str) -> None:
    """A calibration applies to the engine and kind of device it was fitted on, nothing else."""
    if doc.engine != engine.id or doc.device_kind != device_kind:
        raise PlannerError(
            f"the calibration is for {doc.engine} on {doc.device_kind}, not {engine.id} on {device_kind}"
        )


def planned_version(requested: str | None, cal: CalibrationDoc | None, catalog: Catalog) -> str | None:
    """The vLLM version a prediction plans: the one asked for, else the one a vLLM calibration was fitted
    on (None: the catalog's default release). An unreadable version is refused here, whichever engine is
    planned; so is a vLLM calibration asked to serve a release whose memory rule differs from the one its
    fit planned, since its efficiencies absorbed that rule's KV capacity. Calibrations of other engines
    never touch vLLM's figures (they apply to their own engine's options only)."""
    table = catalog.engines_file.vllm_versions
    asked = resolve_vllm_memory(table, requested) if requested is not None else None
    if cal is None or cal.engine != "vllm":
        return requested
    fitted = resolve_vllm_memory(table, cal.engine_version)
    if asked is not None and asked.regime.id != fitted.regime.id:
        raise PlannerError(
            f"the calibration was fitted on {fitted.label()}; {asked.label()} reserves memory another way: "
            f"plan {cal.engine_version or table.default} with it, or calibrate from runs of {requested}"
        )
    return requested if requested is not None else cal.engine_version


@dataclass(frozen=True, slots=True)
class _Question:
    """What `PredictOptions` name, resolved against the catalog and the hardware."""

    config: PlannedConfig
    calibration: CalibrationDoc | None


def _resolve(
    opts: PredictOptions,
    catalog: Catalog | None,
    hw: Hardware | None,
    measure: Callable[[], CpuMeasurement] | None,
    values: FittedValues | None,
) -> _Question:
    cat = catalog or load_catalog()
    cal = load_calibration(opts.calibration) if opts.calibration else None
    measure = _pinned(cal, measure)
    model = resolve_model(opts.model, cat, opts.max_config_bytes)
    device = resolve_device(opts.gpu, opts.gpus, cat, None, hw, measure)
    engine = resolve_engine(opts.engine, cat)
    if cal is not None:
        check_calibration(cal, engine, device.kind)
        values = cal.values
    fmt = resolve_format(opts.format, engine, cat)
    why_not = cannot_run(engine, fmt, model, device)
    if why_not:
        raise WorkloadError(why_not)
    devices = opts.tp * opts.pp
    if device.kind == "gpu" and devices > device.count:
        raise WorkloadError(f"TP {opts.tp} x PP {opts.pp} needs {devices} GPUs; --gpus is {device.count}")
    if device.kind == "cpu" and devices > 1:
        raise WorkloadError("tensor and pipeline parallelism are planned for GPUs only")
    if model.n_heads % opts.tp or (model.n_kv_heads % opts.tp and opts.tp % model.n_kv_heads):
        raise WorkloadError(f"TP {opts.tp} does not divide {model.name}'s {model.n_heads} attention heads evenly")
    context = opts.max_model_len or model.max_context
    if context > model.max_context:
        raise WorkloadError(f"max_model_len {context} exceeds {model.name}'s maximum of {model.max_context} tokens")
    if opts.input_tokens + opts.output_tokens > context:
        raise WorkloadError(f"input_tokens + output_tokens exceeds max_model_len {context}")
    workload = Workload(
        context,
        opts.concurrency or 1,
        opts.input_tokens,
        opts.output_tokens,
        slo_targets(DEFAULT_SLO),
        requests=opts.requests,
        cached_input_tokens=opts.cached_input_tokens,
    )
    knobs = Knobs(
        opts.kv_cache_dtype,
        opts.gpu_memory_utilization,
        opts.max_num_seqs or (cal.max_num_seqs if cal else None),
        opts.max_num_batched_tokens,
        opts.enable_chunked_prefill,
        planned_version(opts.engine_version, cal, cat),
        opts.vllm_sampler,
        opts.tp_transport,
        opts.cuda_graph_reserve_gib,
    )
    efficiency = efficiency_of(values) if values is not None else None
    par = Parallel(opts.tp, opts.pp, tp_efficiency(engine, device, opts.tp, opts.pp, cat))
    return _Question(PlannedConfig(model, device, engine, fmt, par, workload, cat, knobs, efficiency), cal)


def predict_one(
    opts: PredictOptions,
    catalog: Catalog | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
    values: FittedValues | None = None,
) -> PredictResult:
    """One configuration predicted with the recommender's own code path (`predict_config`).

    `opts.calibration` applies a calibration file (its values, its batch limit unless --max-num-seqs is
    given, and on CPU the measurement it was fitted against); `values` applies trial values directly,
    as the fit does."""
    q = _resolve(opts, catalog, hw, measure, values)
    c = q.config
    cp = predict_config(c, opts.qps)
    names = {"model": c.model.name, "device": c.device.name, "engine": c.engine.label, "format": c.fmt.label}
    if q.calibration is not None:
        cp.assumptions["calibration"] = assumption_line(q.calibration, opts.calibration or "")
    return build_result(opts, names, cp, c.workload.context, calibrated=q.calibration is not None)


def pass_pricer(
    opts: PredictOptions,
    catalog: Catalog | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
) -> Callable[[FittedValues], StepCost]:
    """What `predict_one` would charge for one forward pass of this configuration with given values,
    (decoding sequences, prompt tokens) -> seconds: a calibration fits these prices to a server's logged
    passes. The configuration is resolved once; each call only prices with its values."""
    config = _resolve(opts, catalog, hw, measure, None).config

    def price(values: FittedValues) -> StepCost:
        return pass_pricing(replace(config, efficiency=efficiency_of(values))).cost

    return price


def compare_run(
    data: dict,
    model: str = BUNDLED_MODEL,
    catalog: Catalog | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
) -> Comparison:
    """Prediction error per metric for a `python -m engine generate --json` result run on this CPU."""
    return compare_measured(MeasuredRun.from_engine_json(data), model, catalog, hw, measure)


def compare_measured(
    run: MeasuredRun,
    model: str = BUNDLED_MODEL,
    catalog: Catalog | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
) -> Comparison:
    """Prediction error per metric for a measured bundled-engine run on this CPU, however it was measured."""
    cat = catalog or load_catalog()
    device = resolve_device("cpu", 1, cat, None, hw, measure)
    return compare(run, resolve_model(model, cat), device, cat)
