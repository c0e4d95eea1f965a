"""The planner's results as data frames for the pages, built here so that they are tested without Streamlit.

A Plan for the Plan page (options, memory breakdown, roofline, capacity, what cannot run, and the
assumptions behind one option's figures);
the detected GPUs and a predicted-vs-measured comparison for the Hardware page.
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from planner.assumptions import assumption_rows
from planner.calibration import METRICS, CalibrationDoc
from planner.compare import Comparison
from planner.hardware import Hardware, gib
from planner.recommend import Plan, PlanOption
from planner.sizing import GIB


def option_label(o: PlanOption) -> str:
    split = f" TP{o.tp}" + (f"xPP{o.pp}" if o.pp > 1 else "") if o.tp * o.pp > 1 else ""
    return f"#{o.rank} {o.engine_label} {o.format_label}{split}"


def options_frame(plan: Plan) -> pd.DataFrame:
    rows = []
    for o in plan.options:
        p, m = o.prediction, o.memory
        if p is None or m is None:
            continue
        rows.append(
            {
                "rank": o.rank,
                "engine": o.engine_label,
                "format": o.format_label,
                "TP x PP": f"{o.tp} x {o.pp}",
                "replicas": o.replicas,
                "GiB per device": round(m.weights_bytes / GIB, 1),
                "batch": p.batch,
                "TTFT ms": round(p.ttft_ms, 1),
                "TPOT ms": round(p.tpot_ms, 2),
                "busy replicas": p.busy_replicas,
                "out tok/s at this load": round(p.output_tok_s),
                "saturated out tok/s (prefill incl.)": round(p.max_output_tok_s),
                "meets SLO": o.meets_slo,
                "quality": o.quality,
                "calibrated": o.calibrated,
            }
        )
    return pd.DataFrame(rows)


ASSUMPTION_COLUMNS = ["figure", "value", "assumption", "setting", "source"]


def assumptions_frame(option: PlanOption) -> pd.DataFrame:
    """How each figure of one option is predicted: one row per figure and assumption behind it, with the
    setting the prediction used and whether it is calibrated or the catalog's (planner.assumptions)."""
    return pd.DataFrame([asdict(r) for r in assumption_rows(option)], columns=ASSUMPTION_COLUMNS)


def unfit_frame(plan: Plan) -> pd.DataFrame:
    return pd.DataFrame([{"engine": o.engine_label, "format": o.format_label, "why not": o.reason} for o in plan.unfit])


def memory_frame(plan: Plan, top: int = 8) -> pd.DataFrame:
    """Per-device memory of the top options, stacked: weights, activations, overhead, KV cache, unused."""
    rows = []
    for o in plan.options[:top]:
        m = o.memory
        if m is None:
            continue
        kv = max(0, m.kv_budget_bytes)
        used = m.weights_bytes + m.activation_bytes + m.overhead_bytes + kv
        parts = {
            "weights": m.weights_bytes,
            "activations": m.activation_bytes,
            "runtime overhead": m.overhead_bytes,
            "KV cache": kv,
            "unused": max(0, m.device_bytes - used),
        }
        rows += [{"option": option_label(o), "part": k, "GiB": v / GIB} for k, v in parts.items()]
    return pd.DataFrame(rows)


def roofline_frames(plan: Plan, top: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(roof, points): the device's attainable TFLOP/s over arithmetic intensity for each compute
    rate the top options use, and each option's decode step placed on it."""
    d = plan.device
    points, ridges = [], {}
    for o in plan.options[:top]:
        p = o.prediction
        if p is None:
            continue
        peak = p.ridge_point * d.bandwidth_bytes_s
        tflops = peak / 1e12
        ridges[f"roof at {tflops:,.0f} TFLOP/s" if tflops >= 100 else f"roof at {tflops:.3g} TFLOP/s"] = peak
        achieved = p.decode_flops / (p.decode_step_ms / 1e3) / max(1, o.tp * o.pp)
        points.append(
            {
                "option": option_label(o),
                "FLOP/byte": p.arithmetic_intensity,
                "TFLOP/s per device": achieved / 1e12,
                "bound": p.decode_bound,
            }
        )
    roof = []
    for name, peak in ridges.items():
        for e in range(-1, 5):
            for x in (1, 3):
                ai = x * 10.0**e
                attainable = min(peak, ai * d.bandwidth_bytes_s)
                roof.append({"roof": name, "FLOP/byte": ai, "TFLOP/s per device": attainable / 1e12})
    return pd.DataFrame(roof), pd.DataFrame(points)


def capacity_frame(plan: Plan) -> pd.DataFrame:
    rows = []
    for o in plan.options:
        c = o.capacity
        if c is None:
            continue
        rows.append(
            {
                "option": option_label(o),
                "batch within TPOT target": c.batch,
                "TPOT ms": round(c.tpot_ms, 2),
                "req/s per replica": round(c.rps_per_replica, 3),
                "devices per replica": c.devices_per_replica,
                "replicas": c.replicas,
                "devices": c.devices,
                "$ per hour": None if c.cost_per_hour is None else round(c.cost_per_hour, 2),
                "$ per M output tokens": None
                if c.cost_per_m_output_tokens is None
                else round(c.cost_per_m_output_tokens, 4),
            }
        )
    return pd.DataFrame(rows)


def gpu_frame(hw: Hardware) -> pd.DataFrame:
    """One row per detected GPU; memory as GiB text, a figure NVML could not give as "not measured"."""
    return pd.DataFrame(
        [
            {
                "index": g.index,
                "name": g.name,
                "memory total": gib(g.total_memory_bytes),
                "memory used": gib(g.used_memory_bytes),
                "compute capability": g.compute_capability or "not measured",
                "source": g.source,
            }
            for g in hw.gpus
        ]
    )


def calibration_frame(doc: CalibrationDoc) -> pd.DataFrame:
    """One row per run, metric and stage (before / after the fit): measured against predicted, for the
    predicted-vs-measured chart, with the run's own 95% interval of the measured median where it has one
    (a prediction inside it is as close as that run can tell). Runs the fit used and runs held out are
    told apart."""
    rows = []
    for kind, runs in (("fit on", doc.runs), ("held out", doc.held_out)):
        for run in runs:
            for stage, predicted in (("before", run.predicted_before), ("after", run.predicted_after)):
                for metric in METRICS:
                    got, want = getattr(predicted, metric, None), getattr(run.measured, metric)
                    low, high = run.ci95(metric) or (None, None)
                    if got is not None and want is not None:
                        rows.append(
                            {"run": run.profile, "runs": kind, "stage": stage, "metric": metric, "measured": want}
                            | {"measured_low": low, "measured_high": high, "predicted": got}
                        )
    columns = ["run", "runs", "stage", "metric", "measured", "measured_low", "measured_high", "predicted"]
    return pd.DataFrame(rows, columns=columns)


def comparison_frame(comparison: Comparison) -> pd.DataFrame:
    """Predicted vs measured per metric; the error in percent, None where the metric was not measured."""
    return pd.DataFrame(
        [
            {
                "metric": r.metric,
                "unit": r.unit,
                "predicted": r.predicted,
                "measured": r.measured,
                "error %": None if r.error is None else 100 * r.error,
            }
            for r in comparison.rows
        ]
    )
