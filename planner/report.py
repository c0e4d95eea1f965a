"""Fixed-width console text for a Plan (label column, value column, a rule per section)."""

from __future__ import annotations

from planner.recommend import Plan, PlanOption
from planner.sizing import GIB

RULE = "-" * 100


def _device_line(plan: Plan) -> str:
    d = plan.device
    if d.kind == "cpu":
        return f"{d.name} (CPU, {d.memory_bytes / GIB:.1f} GiB RAM available)"
    price = f", ${d.price_per_hour:g}/GPU-hour" if d.price_per_hour else ""
    return f"{d.count} x {d.name} ({d.memory_bytes / GIB:.1f} GiB each{price})"


def _row(o: PlanOption) -> str:
    p, mem = o.prediction, o.memory
    if p is None or mem is None:
        return f"{o.rank:>3}  {o.engine_label} {o.format_label}: {o.reason}"
    split = f"TP{o.tp}" + (f"xPP{o.pp}" if o.pp > 1 else "") + (f" x{o.replicas}" if o.replicas > 1 else "")
    slo = "yes" if o.meets_slo else "no"
    return (
        f"{o.rank:>3}  {o.engine_label[:24]:<24} {o.format_label[:24]:<24} {split:<9} "
        f"{mem.weights_bytes / GIB:>7.1f} {p.batch:>5} {p.ttft_ms:>8.0f} {p.tpot_ms:>7.1f} "
        f"{p.output_tok_s:>9.0f} {p.max_output_tok_s:>9.0f}  {slo:<4} {o.quality}"
        + ("  (calibrated)" if o.calibrated else "")
    )


def format_plan(plan: Plan, top: int = 10, details: int = 3) -> list[str]:
    """The plan as console lines: conditions, the ranked table, the top options' reasons and
    launch commands, what cannot run and why, and the assumptions."""
    w, m = plan.workload, plan.model
    lines = [
        f"{'Model':<14}{m.name} ({m.params_total / 1e9:.2f}B params"
        + (f", {m.params_active / 1e9:.1f}B active" if m.params_active != m.params_total else "")
        + ")",
        f"{'Hardware':<14}{_device_line(plan)}",
        f"{'Workload':<14}context {w.context}, {w.concurrency} concurrent, {w.input_tokens} in"
        + (f" ({w.cached_input_tokens} from the prefix cache)" if w.cached_input_tokens else "")
        + f" / {w.output_tokens} out"
        + (f", target {w.qps:g} req/s" if w.qps else ""),
        f"{'SLO':<14}{w.slo.name}: {w.slo.describe()}",
        RULE,
        f"{'#':>3}  {'engine':<24} {'format':<24} {'split':<9} {'GiB/dev':>7} {'batch':>5} {'TTFT ms':>8} "
        f"{'TPOT ms':>7} {'tok/s@load':>9} {'tok/s max':>9}  {'SLO':<4} quality",
    ]
    lines += [_row(o) for o in plan.options[:top]]
    if len(plan.options) > top:
        lines.append(f"     ... {len(plan.options) - top} more (--top {len(plan.options)} shows all)")
    for o in plan.options[:details]:
        lines += [RULE, f"#{o.rank} {o.engine_label}, {o.format_label}"]
        lines += [f"  - {why}" for why in o.why]
        if o.calibration:
            lines.append(f"  - calibrated: {o.calibration}")
        if o.slo_misses:
            lines.append(f"  - SLO misses: {'; '.join(o.slo_misses)}")
        cap = o.capacity
        if cap is not None and cap.cost_per_m_output_tokens is not None:
            lines.append(f"  - capacity: {cap.note}: ${cap.cost_per_m_output_tokens:.3f} per million output tokens")
        lines += ["  launch:"] + [f"    {line}" for line in o.launch.splitlines()]
    if plan.unfit:
        lines += [RULE, "Cannot run here:"]
        lines += [f"  {o.engine_label}, {o.format_label}: {o.reason}" for o in plan.unfit]
    lines += [
        RULE,
        "tok/s@load: output rate at this concurrency (busy replicas, prefill included); "
        "tok/s max: saturated capacity, every replica at its largest batch, prefill included",
    ]
    lines += [f"note: {n}" for n in plan.notes]
    return lines
