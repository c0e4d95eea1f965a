"""The planner's two entry points, shared by its CLI and the pages: make a plan, and compare a measured run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from planner.catalog import Catalog, load_catalog
from planner.compare import Comparison, MeasuredRun, compare
from planner.devices import resolve_device
from planner.errors import WorkloadError
from planner.hardware import Hardware
from planner.predict import Knobs, predict_config
from planner.predict_io import (
    PredictOptions,
    PredictResult,
    build_result,
    calibrated_efficiency,
    load_calibration,
    resolve_engine,
    resolve_format,
)
from planner.recommend import Plan, cannot_run, recommend, resolve_model, tp_efficiency
from planner.roofline import Parallel
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
    model = resolve_model(opts.model, cat, opts.max_config_bytes)
    device = resolve_device(opts.gpu, opts.gpus, cat, opts.price_per_hour, hw, measure)
    inp, out = opts.lengths()
    workload = Workload(opts.context, opts.concurrency, inp, out, cat.slo(opts.slo), opts.qps)
    return recommend(model, device, workload, cat)


def predict_one(
    opts: PredictOptions,
    catalog: Catalog | None = None,
    hw: Hardware | None = None,
    measure: Callable[[], CpuMeasurement] | None = None,
) -> PredictResult:
    """One configuration predicted with the recommender's own code path (`predict_config`)."""
    cat = catalog or load_catalog()
    model = resolve_model(opts.model, cat, opts.max_config_bytes)
    device = resolve_device(opts.gpu, opts.gpus, cat, None, hw, measure)
    engine = resolve_engine(opts.engine, cat)
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
    workload = Workload(context, opts.concurrency or 1, opts.input_tokens, opts.output_tokens, cat.slo("chat"))
    knobs = Knobs(
        opts.kv_cache_dtype,
        opts.gpu_memory_utilization,
        opts.max_num_seqs,
        opts.max_num_batched_tokens,
        opts.enable_chunked_prefill,
    )
    efficiency = None
    if opts.calibration:
        efficiency = calibrated_efficiency(load_calibration(opts.calibration), engine, device.kind)
    par = Parallel(opts.tp, opts.pp, tp_efficiency(engine, device, opts.tp, opts.pp, cat))
    cp = predict_config(model, device, engine, fmt, par, workload, cat, knobs, efficiency, opts.qps)
    names = {"model": model.name, "device": device.name, "engine": engine.label, "format": fmt.label}
    return build_result(opts, names, cp, context, calibrated=efficiency is not None)


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
