"""Predicted vs measured: the planner's CPU path against a run of the bundled engine.

Input is what `python -m engine generate --json` prints (timings.prefill_tok_s,
timings.decode_tok_s, prompt/completion token counts, load.quant, load.device,
load.weight_bytes). The prediction uses the same lengths, this CPU's measured bandwidth,
FLOP/s and per-op dispatch time, and the bundled engine's figures in engines.json.
The error per metric is predicted / measured - 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from planner.catalog import Catalog
from planner.errors import PlannerError
from planner.model_spec import ModelSpec
from planner.predict import catalog_efficiency, dispatch_overhead_s, kv_dtype_bytes
from planner.roofline import Device, decode_step, prefill
from planner.sizing import weight_bytes


@dataclass(frozen=True, slots=True)
class MeasuredRun:
    """One bundled-engine generation as its JSON reports it; None where it did not time anything."""

    quant: str
    device: str
    prompt_tokens: int
    completion_tokens: int
    prefill_tok_s: float | None
    decode_tok_s: float | None
    weight_bytes: int | None

    @classmethod
    def from_engine_json(cls, data: dict) -> MeasuredRun:
        try:
            timings, load = data["timings"], data["load"]
            return cls(
                quant=str(load["quant"]),
                device=str(load["device"]),
                prompt_tokens=int(data["prompt_tokens"]),
                completion_tokens=int(data["completion_tokens"]),
                prefill_tok_s=timings.get("prefill_tok_s"),
                decode_tok_s=timings.get("decode_tok_s"),
                weight_bytes=load.get("weight_bytes"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlannerError(
                f"not a `python -m engine generate --json` result (missing or bad {exc}); "
                "it needs prompt_tokens, completion_tokens, timings and load"
            ) from exc


@dataclass(frozen=True, slots=True)
class ComparisonRow:
    """One row of a Comparison: a metric's prediction, its measurement (None: not measured) and their ratio."""

    metric: str
    unit: str
    predicted: float
    measured: float | None

    @property
    def ratio(self) -> float | None:
        return self.predicted / self.measured if self.measured else None

    @property
    def error(self) -> float | None:
        r = self.ratio
        return None if r is None else r - 1

    def within(self, factor: float) -> bool | None:
        r = self.ratio
        return None if r is None else 1 / factor <= r <= factor


@dataclass(frozen=True, slots=True)
class Comparison:
    """Rows per metric plus the conditions both sides ran under."""

    rows: tuple[ComparisonRow, ...]
    conditions: str

    def within(self, factor: float = 2.0) -> bool:
        """Every measured metric within `factor` of its prediction (unmeasured rows don't count)."""
        return all(r.within(factor) is not False for r in self.rows)

    def to_dict(self) -> dict:
        rows = [asdict(r) | {"ratio": r.ratio, "error": r.error} for r in self.rows]
        return {"conditions": self.conditions, "rows": rows}


def predict_bundled(model: ModelSpec, device: Device, run: MeasuredRun, catalog: Catalog) -> dict[str, float]:
    """The bundled engine's single-stream figures for the run's format and lengths on `device`."""
    engine = catalog.engines["bundled"]
    fmt = catalog.format(f"bundled-{run.quant}")
    eff = catalog_efficiency(engine, device)
    overhead = dispatch_overhead_s(engine, device, model, decode_only=True)
    pre = prefill(
        model,
        fmt,
        device,
        run.prompt_tokens,
        bandwidth_efficiency=eff.decode_bandwidth,
        flops_efficiency=eff.prefill_flops,
        overhead_s=dispatch_overhead_s(engine, device, model),
    )
    context = run.prompt_tokens + run.completion_tokens // 2
    dec = decode_step(
        model,
        fmt,
        device,
        1,
        context,
        bandwidth_efficiency=eff.decode_bandwidth,
        flops_efficiency=eff.prefill_flops,
        overhead_s=overhead,
        kv_dtype_bytes=kv_dtype_bytes(engine, device),
    )
    return {
        "weight_bytes": float(weight_bytes(model, fmt).total),
        "prefill_tok_s": run.prompt_tokens / pre.seconds,
        "decode_tok_s": 1.0 / dec.seconds,
        "decode_overhead_ms": overhead * 1e3,
        "decode_memory_ms": dec.memory_s * 1e3,
    }


def compare(run: MeasuredRun, model: ModelSpec, device: Device, catalog: Catalog) -> Comparison:
    """Prediction error per metric for a measured run of the bundled engine on this device."""
    if device.kind == "cpu" and not run.device.startswith("cpu"):
        raise PlannerError(f"the run was on {run.device!r}; the CPU prediction needs a run with --device cpu")
    pred = predict_bundled(model, device, run, catalog)
    rows = (
        ComparisonRow(
            "weight memory", "MiB", pred["weight_bytes"] / 2**20, run.weight_bytes / 2**20 if run.weight_bytes else None
        ),
        ComparisonRow("prefill", "tok/s", pred["prefill_tok_s"], run.prefill_tok_s),
        ComparisonRow("decode", "tok/s", pred["decode_tok_s"], run.decode_tok_s),
    )
    conditions = (
        f"{model.name}, bundled {run.quant} on {device.name}, {run.prompt_tokens} prompt + "
        f"{run.completion_tokens} output tokens; predicted decode step = {pred['decode_memory_ms']:.1f} ms "
        f"memory + {pred['decode_overhead_ms']:.1f} ms dispatch; " + (device.measured or "")
    )
    return Comparison(rows, conditions)


def format_comparison(c: Comparison) -> list[str]:
    lines = [c.conditions, f"{'metric':<16}{'predicted':>12}{'measured':>12}{'error':>9}  unit"]
    for r in c.rows:
        measured = f"{r.measured:>12.1f}" if r.measured is not None else f"{'not measured':>12}"
        error = f"{r.error * 100:>+8.0f}%" if r.error is not None else f"{'':>9}"
        lines.append(f"{r.metric:<16}{r.predicted:>12.1f}{measured}{error}  {r.unit}")
    lines.append(f"within 2x on every measured metric: {'yes' if c.within(2.0) else 'no'}")
    return lines
