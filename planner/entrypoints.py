"""The planner's two entry points, shared by its CLI and the pages: make a plan, and compare a measured run."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from planner.catalog import Catalog, load_catalog
from planner.compare import Comparison, MeasuredRun, compare
from planner.devices import resolve_device
from planner.hardware import Hardware
from planner.recommend import Plan, recommend, resolve_model
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
