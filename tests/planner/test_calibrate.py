"""`python -m planner calibrate` and `--calibration`: fitting predict's values to saved benchmark results.

The results are real BenchmarkResult documents: one recorded from the bundled engine (int4, 1 thread,
4 requests of 32 tokens in / 8 out, fixtures/bench_bundled_int4_c1.json), re-run through the model at
other concurrencies with figures the planner itself predicts for known values, so a fit must find
those values again. The CPU is a fixed measurement, so the numbers do not depend on this machine.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from planner.__main__ import main
from planner.calibrate import (
    BOUNDS,
    CPU_EFFICIENCY_HIGH,
    bounds_for,
    calibrate,
    error_row,
    format_fit,
    gap_spread,
    pool_repeats,
    predictor,
    run_options,
    settle_undetermined,
)
from planner.calibrate_cli import ServedBy, concurrency_of, load_runs, one_token_gaps, runs_of
from planner.calibration import (
    DEFAULT_PASS_SPREAD,
    CalibrationDoc,
    CalibrationRun,
    FittedValues,
    MedianIntervals,
    Metrics,
    load_calibration,
    save_calibration,
)
from planner.catalog import load_catalog
from planner.cpu_probe import GEMM_ROWS, CpuMeasurement
from planner.entrypoints import make_plan, pass_pricer, predict_one
from planner.errors import PlannerError
from planner.hardware import detect
from planner.predict_io import PredictOptions
from planner.report import format_plan
from planner.workload import RecommendOptions
from reports.benchmark_result import BenchmarkResult, load_benchmark_result

FIXTURE = Path(__file__).parent / "fixtures" / "bench_bundled_int4_c1.json"
CAT = load_catalog()
HW = detect()
CPU = CpuMeasurement(
    threads=1,
    copy_bytes_s=18e9,
    triad_bytes_s=20e9,
    bandwidth_curve=((3 * 8 * 2**20, 60e9), (3 * 128 * 2**20, 20e9)),
    fp32_flops=80e9,
    bf16_flops=40e9,
    op_overhead_s=6e-6,
    int4_gemv_weights_s=4e9,
    int4_gemm_weights_s=30e9,
)
TRUTH = FittedValues(decode_bandwidth=0.35, prefill_flops=0.2, step_overhead_ms=9.0, queued_prefills=0.5)
assert GEMM_ROWS  # the gemm rate above is keyed by it


def measure() -> CpuMeasurement:
    return CPU


def result_at(concurrency: int, tmp_path: Path, values: FittedValues = TRUTH) -> Path:
    """The recorded result, as if run at `concurrency` and measured as the planner predicts with `values`."""
    doc = load_benchmark_result(FIXTURE)
    run = doc.runs[0]
    served = runs_of(doc, str(FIXTURE))[0].model_copy(update={"concurrency": concurrency})
    got = predictor(CAT, HW, measure)(served, values)
    summary = run.summary.model_copy(
        update={"median_ttft_ms": got.ttft_ms, "median_tpot_ms": got.tpot_ms, "output_throughput": got.output_tok_s}
    )
    new_run = run.model_copy(update={"profile": f"concurrency:{concurrency}", "summary": summary})
    data = doc.model_copy(update={"runs": [new_run], "id": f"{doc.id}-c{concurrency}"}).model_dump(mode="json")
    path = tmp_path / f"c{concurrency}.json"
    path.write_text(json.dumps(BenchmarkResult.model_validate(data).model_dump(mode="json")))
    return path


def test_a_recorded_result_becomes_a_run_with_what_it_ran_on() -> None:
    (run,) = load_runs([str(FIXTURE)])
    assert (run.model, run.gpu, run.engine, run.format, run.threads) == ("smollm2-135m", "cpu", "bundled", "int4", 1)
    assert run.concurrency == 1 and run.max_num_seqs == 16 and run.output_tokens == 8
    assert run.input_tokens > 32  # the chat template's tokens count too, as the server counted them
    assert run.measured.tpot_ms and run.measured.ttft_ms and run.measured.output_tok_s
    assert concurrency_of("sync") == 1 and concurrency_of("concurrency:8") == 8 and concurrency_of("poisson:2") is None


def test_prompt_tokens_the_prefix_cache_served_are_not_fitted_as_prefill(tmp_path: Path) -> None:
    doc = load_benchmark_result(FIXTURE)
    run = doc.runs[0]
    hits = 16 * run.summary.completed  # the chat template's first block, served from the cache each time
    summary = run.summary.model_copy(update={"cached_input_tokens": hits})
    cached = doc.model_copy(update={"runs": [run.model_copy(update={"summary": summary})]})
    path = tmp_path / "cached.json"
    path.write_text(json.dumps(BenchmarkResult.model_validate(cached.model_dump(mode="json")).model_dump(mode="json")))
    (plain,) = load_runs([str(FIXTURE)])
    (served,) = load_runs([str(path)])
    assert plain.cached_input_tokens == 0 and served.cached_input_tokens == 16
    assert run_options(served).input_tokens == run_options(plain).input_tokens == served.input_tokens
    assert (run_options(plain).cached_input_tokens, run_options(served).cached_input_tokens) == (0, 16)
    faster = predict_one(run_options(served), CAT, HW, measure)
    slower = predict_one(run_options(plain), CAT, HW, measure)
    assert faster.ttft_ms < slower.ttft_ms and faster.kv_tokens == slower.kv_tokens  # prefill less, KV alike
    assert "16 of each" in faster.assumptions["cached_input_tokens"]


def test_a_remote_result_needs_to_be_told_what_served_it(tmp_path: Path) -> None:
    doc = load_benchmark_result(FIXTURE)
    remote = {"kind": "remote", "base_url": "http://10.0.0.1:8000", "model": "m", "api": "chat", "api_key_set": False}
    data = doc.model_dump(mode="json") | {"target": remote}
    path = tmp_path / "remote.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlannerError, match="give --model, --gpu, --engine, --format"):
        load_runs([str(path)])
    (run,) = load_runs([str(path)], ServedBy("llama-3.1-8b", "h100-sxm", "vllm", "bf16"))
    assert (run.model, run.gpu, run.engine, run.threads) == ("llama-3.1-8b", "h100-sxm", "vllm", None)


def test_the_fit_finds_the_values_the_runs_were_measured_with(tmp_path: Path) -> None:
    fit = load_runs([str(result_at(c, tmp_path)) for c in (1, 8)])
    held = load_runs([str(result_at(c, tmp_path)) for c in (2, 4, 16)])
    doc = calibrate(fit, held, CAT, HW, measure, pass_spread=0.0)
    e = doc.error
    assert doc.engine == "bundled" and doc.device_kind == "cpu" and doc.max_num_seqs == 16
    assert e.fit_after.tpot_ms < 1 and e.fit_after.ttft_ms < 1 and e.fit_after.output_tok_s < 1
    assert e.held_out_after and e.held_out_after.tpot_ms < 1 and e.held_out_after.output_tok_s < 1
    assert e.held_out_after.ttft_ms < 1
    assert e.held_out_before and e.held_out_before.tpot_ms > 10  # the catalog's figures were off
    assert doc.values.step_overhead_ms == pytest.approx(TRUTH.step_overhead_ms, rel=0.05)
    assert doc.cpu is not None and doc.cpu.fp32_flops == CPU.fp32_flops
    assert [r.concurrency for r in doc.held_out] == [2, 4, 16]


def _scaled(run: CalibrationRun, factor: float, name: str) -> CalibrationRun:
    m = run.measured
    measured = m.model_copy(
        update={"ttft_ms": m.ttft_ms * factor, "tpot_ms": m.tpot_ms * factor, "output_tok_s": m.output_tok_s / factor}
    )
    return run.model_copy(update={"id": name, "source": f"{name}.json", "measured": measured})


def test_pooled_repeats_are_predicted_as_one_run_of_their_length(tmp_path: Path) -> None:
    """Identical repeats pool to a point predicted exactly as one of them: the replay is one run that long,
    not a run of all their requests together (which would weigh the opening burst less)."""
    (c16,) = load_runs([str(result_at(16, tmp_path))])
    assert c16.requests is not None
    repeats = [c16.model_copy(update={"id": f"r{i}", "source": f"r{i}.json"}) for i in range(4)]
    (pooled,) = pool_repeats(repeats)
    assert pooled.repeats == 4 and pooled.requests == c16.requests
    predict = predictor(CAT, HW, measure)
    assert predict(pooled, TRUTH) == predict(c16, TRUTH)
    longer = c16.model_copy(update={"requests": 4 * c16.requests})
    assert predict(longer, TRUTH) != predict(c16, TRUTH)  # the run's length is part of what is replayed
    uneven = [c16.model_copy(update={"requests": n}) for n in (20, 40, 20, 80)]
    assert pool_repeats(uneven)[0].requests == 20  # the lower median: a length one of the runs had


def test_repeats_of_one_condition_are_one_point_at_their_median(tmp_path: Path) -> None:
    """Three rounds of concurrency 1 (one slow) and one of 8: two points, the slow round outvoted."""
    (c1,) = load_runs([str(result_at(1, tmp_path))])
    (c8,) = load_runs([str(result_at(8, tmp_path))])
    rounds = [_scaled(c1, 0.97, "r1"), _scaled(c8, 1.0, "r1c8"), _scaled(c1, 1.0, "r2"), _scaled(c1, 1.4, "r3")]
    pooled, eight = pool_repeats(rounds)
    assert pooled.repeats == 3 and eight.repeats == 1 and eight == rounds[1]
    assert pooled.measured.tpot_ms == pytest.approx(c1.measured.tpot_ms)
    assert pooled.measured.output_tok_s == pytest.approx(c1.measured.output_tok_s)
    assert pooled.source == "r1.json, r2.json, r3.json" and pooled.requests == c1.requests  # one run's length
    other_length = c1.model_copy(update={"output_tokens": c1.output_tokens + 1})
    assert len(pool_repeats([c1, other_length])) == 2  # other conditions are not repeats
    doc = calibrate(rounds, (), CAT, HW, measure, pass_spread=0.0)
    assert [(r.concurrency, r.repeats) for r in doc.runs] == [(1, 3), (8, 1)]
    assert doc.error.fit_after.tpot_ms < 1  # the median is the truth the runs were measured around
    lines = format_fit(doc)
    assert "from 4 run(s)" in lines[0] and any("(median of 3 runs)" in line for line in lines)


def test_a_run_keeps_the_intervals_of_its_medians(tmp_path: Path) -> None:
    """The benchmark's bootstrap intervals of the median TTFT and TPOT travel with the run; a result
    without them (an older one) gives none rather than a made-up width."""
    (run,) = load_runs([str(FIXTURE)])
    summary = load_benchmark_result(FIXTURE).runs[0].summary
    assert run.measured_ci95 == MedianIntervals(ttft_ms=summary.p50_ttft_ms_ci95, tpot_ms=summary.p50_tpot_ms_ci95)
    doc = load_benchmark_result(FIXTURE)
    bare = doc.runs[0].summary.model_copy(update={"p50_ttft_ms_ci95": None, "p50_tpot_ms_ci95": None})
    data = doc.model_copy(update={"runs": [doc.runs[0].model_copy(update={"summary": bare})]})
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(data.model_dump(mode="json")))
    (old,) = load_runs([str(path)])
    assert old.measured_ci95 is None


def test_pooled_repeats_keep_the_interval_of_one_run(tmp_path: Path) -> None:
    """The pooled point is predicted as one run of the repeats' length, so it is held to one such run's
    interval: the median of the repeats' bounds."""
    (c1,) = load_runs([str(FIXTURE)])
    bounds = [((90.0, 110.0), (9.0, 12.0)), ((95.0, 120.0), (8.0, 10.0)), ((80.0, 100.0), None)]
    repeats = [
        c1.model_copy(update={"id": f"r{i}", "measured_ci95": MedianIntervals(ttft_ms=t, tpot_ms=p)})
        for i, (t, p) in enumerate(bounds)
    ]
    (pooled,) = pool_repeats([*repeats, c1.model_copy(update={"id": "r3", "measured_ci95": None})])
    assert pooled.repeats == 4
    assert pooled.measured_ci95 == MedianIntervals(ttft_ms=(90.0, 110.0), tpot_ms=(8.5, 11.0))


def test_the_error_rows_count_the_predictions_inside_the_runs_own_intervals() -> None:
    """A miss inside the run's own interval is within what the run could measure; the rows say how many."""
    (c1,) = load_runs([str(FIXTURE)])
    runs = [
        c1.model_copy(update={"measured": Metrics(ttft_ms=100, tpot_ms=10), "measured_ci95": ci})
        for ci in (
            MedianIntervals(ttft_ms=(95.0, 105.0), tpot_ms=(9.0, 11.0)),
            MedianIntervals(ttft_ms=(98.0, 102.0), tpot_ms=(9.5, 10.5)),
            None,
        )
    ]
    predicted = [Metrics(ttft_ms=104, tpot_ms=10.8), Metrics(ttft_ms=104, tpot_ms=10.2), Metrics(ttft_ms=104)]
    row = error_row(runs, predicted)
    assert row.ttft_ms == pytest.approx(4) and row.tpot_ms == pytest.approx(5)
    assert row.inside_ci95 is not None
    assert (row.inside_ci95.ttft_ms, row.inside_ci95.tpot_ms) == ((1, 2), (2, 2))
    assert error_row(runs[2:], predicted[2:]).inside_ci95 is None  # no run with an interval: no count


def test_the_calibration_prints_each_runs_interval_and_the_count_inside(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    lines = format_fit(doc)
    ci = doc.runs[0].measured_ci95
    assert ci is not None and ci.tpot_ms is not None
    assert any(f"[{ci.tpot_ms[0]:.1f}-{ci.tpot_ms[1]:.1f}]" in line for line in lines)
    assert any(line.startswith("median absolute error") and "inside the runs' 95% CI" in line for line in lines)
    inside = doc.error.fit_after.inside_ci95
    assert inside is not None and inside.tpot_ms is not None and inside.tpot_ms[1] == 2
    assert f"{inside.tpot_ms[0]}/2" in next(line for line in lines if line.startswith("fit runs, after"))


def test_the_fit_keeps_within_its_bounds(tmp_path: Path) -> None:
    """Runs that would need an impossible efficiency get the bound, not a figure beyond reason: on a CPU
    the peak is the probe's reading, which a drifting machine can take low, so the bound is wider there
    than a datasheet's 1.5."""
    fast = FittedValues.model_construct(decode_bandwidth=40.0, prefill_flops=40.0, step_overhead_ms=0.0)
    doc = calibrate(load_runs([str(result_at(1, tmp_path, fast))]), (), CAT, HW, measure, pass_spread=0.0)
    assert doc.values.decode_bandwidth <= CPU_EFFICIENCY_HIGH and doc.values.prefill_flops <= CPU_EFFICIENCY_HIGH
    assert doc.values.step_overhead_ms >= 0
    assert bounds_for("gpu") == BOUNDS and BOUNDS["prefill_flops"][1] == 1.5
    assert bounds_for("cpu")["prefill_flops"][1] == CPU_EFFICIENCY_HIGH


def _doc(tmp_path: Path) -> CalibrationDoc:
    return calibrate(load_runs([str(result_at(c, tmp_path)) for c in (1, 8)]), (), CAT, HW, measure, pass_spread=0.0)


def test_the_calibration_file_round_trips(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    path = save_calibration(doc, tmp_path / "cal.json")
    assert load_calibration(path) == doc
    data = json.loads(path.read_text())
    assert data["kind"] == "preflight.planner-calibration" and data["schema_version"] == 1
    # a calibration written before runs kept their medians' intervals still loads, without them
    for run in data["runs"]:
        del run["measured_ci95"]
    for row in data["error"].values():
        if isinstance(row, dict):
            del row["inside_ci95"]
    path.write_text(json.dumps(data))
    old = load_calibration(path)
    assert old.runs[0].measured_ci95 is None and old.error.fit_after.inside_ci95 is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot read the calibration file"),
        ("[]", "calibration file"),
        (json.dumps({"kind": "preflight.benchmark-result"}), "not 'preflight.planner-calibration'"),
        (json.dumps({"kind": "preflight.planner-calibration", "schema_version": 7}), "calibrate again"),
    ],
)
def test_a_corrupt_calibration_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cal.json"
    path.write_text(text)
    with pytest.raises(PlannerError, match=message):
        load_calibration(path)


def test_an_unknown_field_or_a_bad_value_is_refused(tmp_path: Path) -> None:
    data = json.loads(_doc(tmp_path).model_dump_json())
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data | {"surprise": 1}))
    with pytest.raises(PlannerError, match="surprise"):
        load_calibration(path)
    data["values"]["decode_bandwidth"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(PlannerError, match="decode_bandwidth"):
        load_calibration(path)
    with pytest.raises(PlannerError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")


def test_predict_applies_the_calibration_and_labels_it(tmp_path: Path) -> None:
    cal = save_calibration(_doc(tmp_path), tmp_path / "cal.json")
    ask = {"model": "smollm2-135m", "gpu": "cpu", "engine": "bundled", "format": "int4", "concurrency": 4}
    base = predict_one(PredictOptions(**ask), CAT, HW, measure)
    fitted = predict_one(PredictOptions(**ask, calibration=str(cal)), CAT, HW)  # the pinned CPU, no probe
    assert fitted.calibrated and not base.calibrated
    assert "calibration" in fitted.assumptions and "calibration" not in base.assumptions
    assert str(cal) in str(fitted.assumptions["calibration"])
    assert fitted.assumptions["step_overhead_ms"] == pytest.approx(TRUTH.step_overhead_ms, rel=0.05)
    assert fitted.assumptions["batching"] == "continuous" and fitted.batch == 4  # the server's max_num_seqs 16
    assert fitted.tpot_ms != pytest.approx(base.tpot_ms, rel=0.01)
    with pytest.raises(PlannerError, match="not vllm on gpu"):
        predict_one(PredictOptions(model="llama-3.1-8b", gpu="h100-sxm", calibration=str(cal)), CAT, HW)
    # a CPU fit of the bundled engine never reaches vLLM's figures, whichever release is asked
    vllm = PredictOptions(model="llama-3.1-8b", gpu="h100-sxm", engine_version="0.10.1.1", calibration=str(cal))
    with pytest.raises(PlannerError, match="the calibration is for bundled on cpu, not vllm on gpu"):
        predict_one(vllm, CAT, HW)
    gpu_plan = RecommendOptions(model="llama-3.1-8b", gpu="h100-sxm", engine_version="0.10.1.1", calibration=str(cal))
    with pytest.raises(PlannerError, match="the calibration is for bundled on cpu, not bundled on gpu"):
        make_plan(gpu_plan, CAT, HW)


def test_recommend_applies_the_calibration_to_its_engine_only(tmp_path: Path) -> None:
    cal = save_calibration(_doc(tmp_path), tmp_path / "cal.json")
    ask = {"model": "smollm2-135m", "gpu": "cpu", "context": 2048, "concurrency": 2}
    plan = make_plan(RecommendOptions(**ask, calibration=str(cal)), CAT, HW)
    bundled = [o for o in plan.options if o.engine == "bundled"]
    others = [o for o in plan.options if o.engine != "bundled"]
    assert bundled and all(o.calibrated and o.calibration for o in bundled)
    assert not any(o.calibrated for o in others)
    assert any(n.startswith("calibrated:") for n in plan.notes)
    assert any(line.endswith("(calibrated)") for line in format_plan(plan))


def test_a_price_nothing_moves_with_stays_the_catalogs(tmp_path: Path) -> None:
    """This CPU's kernels bound every pass, so the runs say nothing of memory bandwidth: the fitted value
    would be wherever the search stopped, and a memory-bound plan (a bigger model on the same CPU) would
    inherit it. The calibration keeps the catalog's, says so, and does not label that figure calibrated."""
    doc = _doc(tmp_path)
    start = predict_one(run_options(doc.runs[0]), CAT, HW, measure).assumptions["decode_bandwidth_efficiency"]
    assert doc.undetermined == ["decode_bandwidth"] and doc.values.decode_bandwidth == float(start)
    assert any(line.startswith("kept at the catalog's") and "decode_bandwidth" in line for line in format_fit(doc))
    cal = save_calibration(doc, tmp_path / "cal.json")
    assert load_calibration(cal).undetermined == ["decode_bandwidth"]
    plan = make_plan(RecommendOptions(model="smollm2-135m", gpu="cpu", context=2048, calibration=str(cal)), CAT, HW)
    (bundled, *_) = [o for o in plan.options if o.engine == "bundled"]
    assert bundled.calibrated and "decode_bandwidth_efficiency" not in bundled.calibrated_keys
    assert "step_overhead_ms" in bundled.calibrated_keys
    r = predict_one(PredictOptions(model="smollm2-135m", gpu="cpu", engine="bundled", calibration=str(cal)), CAT, HW)
    assert "not determined by its runs, the catalog's: decode_bandwidth" in r.assumptions["calibration"]


def test_only_prices_the_evidence_does_not_depend_on_go_back_toward_the_start() -> None:
    """A price nothing depends on goes back to the catalog's; one the evidence bounds from one side goes to
    the edge nearest the catalog's; one it pins stays."""
    start = FittedValues(decode_bandwidth=1.0, prefill_flops=1.0, step_overhead_ms=5.0)
    fitted = start.model_copy(update={"decode_bandwidth": 3.7, "prefill_flops": 0.6, "step_overhead_ms": 4.0})

    def evidence(v: FittedValues) -> list[float | None]:  # a compute-bound pass: no bandwidth in it
        return [v.step_overhead_ms + 10 / v.prefill_flops, None]

    settled, kept = settle_undetermined(fitted, start, evidence)
    assert kept == ["decode_bandwidth"]
    assert settled == fitted.model_copy(update={"decode_bandwidth": 1.0})

    def memory_bound_below_5(v: FittedValues) -> list[float | None]:  # the runs only say: memory never bound
        return [max(10 / v.decode_bandwidth, 2.0) + v.step_overhead_ms + 10 / v.prefill_flops]

    fast = fitted.model_copy(update={"decode_bandwidth": 8.0})  # memory never bound in the fit
    settled, kept = settle_undetermined(fast, start, memory_bound_below_5)
    assert kept == [] and settled.decode_bandwidth == pytest.approx(5.0, abs=7 / 4096)  # the edge nearest 1
    assert settled.decode_bandwidth >= 5.0 and settled.step_overhead_ms == 4.0  # a pinned price stays fitted


def test_cli_calibrate_then_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fit = [str(result_at(c, tmp_path)) for c in (1, 8)]
    out = tmp_path / "cal.json"
    argv = ["calibrate", "--measured", fit[0], "--more", fit[1], "--hold-out", str(result_at(4, tmp_path))]
    assert main([*argv, "--out", str(out), "--pass-spread", "0.05"]) == 0
    text = capsys.readouterr().out
    assert "fit runs, before (2)" in text and "held-out runs, after (1)" in text and f"wrote {out}" in text
    assert load_calibration(out).values.pass_spread == 0.05
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(out), "--pass-spread", "lots"])
    assert "expected a number or 'measured'" in capsys.readouterr().err
    ask = ["--model", "smollm2-135m", "--gpu", "cpu", "--engine", "bundled", "--format", "int4", "--json"]
    assert main(["predict", *ask, "--calibration", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["calibrated"] is True
    (tmp_path / "bad.json").write_text("{}")
    assert main(["predict", *ask, "--calibration", str(tmp_path / "bad.json")]) == 1
    assert "calibration file" in capsys.readouterr().err
    assert main(["calibrate", "--measured", str(tmp_path / "nope.json"), "--out", str(out)]) == 1
    assert "cannot use" in capsys.readouterr().err


# An intake of 30 ms: on this slow made-up CPU (an 850 ms TTFT at one stream) a few ms would be within the
# fitted prices' own 0.3%.
TRUTH_INTAKE = TRUTH.model_copy(update={"queued_prefills": 0.0, "ingest_ms": 30.0})
TRUTH_LOGGED = TRUTH_INTAKE.model_copy(update={"prompt_overhead_ms": 300.0})  # what only a step log can price
# (decoding sequences, prompt tokens) -> passes, roughly a concurrency-8 run's mix
LOGGED = {(1, 0): 200, (4, 0): 40, (8, 0): 100, (0, 142): 10, (3, 426): 5, (7, 60): 3, (5, 284): 4}


def step_log_at(values: FittedValues, run: CalibrationRun, path: Path, kinds: dict = LOGGED) -> Path:
    """A server's step log whose passes cost exactly what `values` price them at (each step 0.2 ms shorter
    than its gap: the loop's turn-around)."""
    price = pass_pricer(run_options(run), CAT, HW, measure)(values)
    t, lines = 100.0, []
    for (b, p), n in kinds.items():
        for _ in range(n):
            gap = price(b, p)
            lines.append(json.dumps({"t": t, "step_ms": gap * 1e3 - 0.2, "decoding": b, "prefill_tokens": p}))
            t += gap
    lines.append(json.dumps({"t": t, "step_ms": 5.0, "decoding": 1, "prefill_tokens": 0}))  # the last: no gap
    path.write_text("\n".join(lines) + "\n")
    return path


def test_step_log_prices_are_fitted_to_the_passes_and_the_intake_to_the_runs(tmp_path: Path) -> None:
    """Given the servers' step logs, the pass prices come from the logged passes and the server's intake
    time from the runs: both are found as they were measured, and the held-out runs are predicted."""
    fit = load_runs([str(result_at(c, tmp_path, TRUTH_LOGGED)) for c in (1, 8)])
    held = load_runs([str(result_at(c, tmp_path, TRUTH_LOGGED)) for c in (2, 4, 16)])
    log = step_log_at(TRUTH_LOGGED, fit[0], tmp_path / "steps.jsonl")
    # a held-out run's log whose compute cost 10% more than the truth's: its passes are checked, not fitted
    dear = TRUTH_LOGGED.model_copy(update={"prefill_flops": TRUTH_LOGGED.prefill_flops / 1.1})
    held_log = step_log_at(dear, fit[0], tmp_path / "held.jsonl", {(16, 0): 50, (12, 500): 2})
    doc = calibrate(
        fit, held, CAT, HW, measure, step_logs=[str(log)], pass_spread=0.0, held_out_step_logs=[str(held_log)]
    )
    assert doc.passes is not None and doc.passes.passes == sum(LOGGED.values())
    assert doc.passes.bias == pytest.approx(0, abs=0.01)
    ho = doc.held_out_passes
    assert ho is not None and ho.passes == 52 and ho.sources == [str(held_log)]
    assert ho.bias is not None and -0.1 < ho.bias < -0.03  # the fitted prices charge these passes less
    assert any(line.startswith("held-out runs: fitted prices on 52 logged passes") for line in format_fit(doc))
    assert doc.passes.rms_log_residual < 0.01
    assert all(abs(r.fitted_ms / r.measured_ms - 1) < 0.02 for r in doc.passes.rows)
    assert doc.values.ingest_ms == pytest.approx(30.0, rel=0.05)
    # (the fixed cost, bandwidth and per-sequence cost of a decode pass trade against each other freely:
    # the prices above are what the passes pin, not each of the three)
    assert doc.values.prompt_overhead_ms == pytest.approx(300.0, rel=0.1)
    e = doc.error
    assert e.fit_after.ttft_ms < 2 and e.fit_after.tpot_ms < 2 and e.fit_after.output_tok_s < 2
    assert e.held_out_after and max(e.held_out_after.ttft_ms, e.held_out_after.tpot_ms) < 2
    assert "logged passes" in doc.source
    lines = format_fit(doc)
    assert any(line.startswith(f"pass prices fitted to {sum(LOGGED.values())} logged passes") for line in lines)
    assert any("8 decoding +    0 prompt tokens  x100" in line for line in lines)


def test_without_step_logs_the_intake_is_scanned_after_the_prices(tmp_path: Path) -> None:
    fit = load_runs([str(result_at(c, tmp_path, TRUTH_INTAKE)) for c in (1, 8)])
    doc = calibrate(fit, (), CAT, HW, measure, pass_spread=0.0)
    assert doc.passes is None and doc.values.ingest_ms > 0
    assert doc.error.fit_after.ttft_ms < 3 and doc.error.fit_after.tpot_ms < 3


def test_a_step_log_that_cannot_price_prompts_is_refused(tmp_path: Path) -> None:
    fit = load_runs([str(result_at(c, tmp_path)) for c in (1, 8)])
    decode_only = step_log_at(TRUTH, fit[0], tmp_path / "steps.jsonl", {(1, 0): 50, (0, 142): 3})
    with pytest.raises(PlannerError, match="needs decode passes and at least 2 prompt sizes"):
        calibrate(fit, (), CAT, HW, measure, step_logs=[str(decode_only)], pass_spread=0.0)


def test_cli_calibrate_reads_step_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fit = [str(result_at(c, tmp_path, TRUTH_INTAKE)) for c in (1, 8)]
    log = step_log_at(TRUTH_INTAKE, load_runs([fit[0]])[0], tmp_path / "steps.jsonl")
    out = tmp_path / "cal.json"
    argv = ["calibrate", "--measured", fit[0], "--more", fit[1], "--out", str(out), "--step-log", str(log)]
    assert main(argv) == 0
    assert "logged passes" in capsys.readouterr().out
    saved = load_calibration(out)
    assert saved.passes is not None and saved.passes.sources == [str(log)]
    assert (
        "ingest_ms"
        in predict_one(
            PredictOptions(model="smollm2-135m", gpu="cpu", engine="bundled", format="int4", calibration=str(out))
        ).assumptions["calibration"]
    )
    (tmp_path / "bad.jsonl").write_text("garbage\n")
    assert main([*argv[:-1], str(tmp_path / "bad.jsonl")]) == 1
    assert "bad.jsonl:1: not a step-log line" in capsys.readouterr().err
    assert main([*argv, "--hold-out-step-log", str(log)]) == 0  # a held-out run's log: priced, not fitted
    assert "held-out runs: fitted prices on" in capsys.readouterr().out
    assert load_calibration(out).held_out_passes is not None
    assert main([*argv, "--hold-out-step-log", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err


GPU_TRUTH = FittedValues(decode_bandwidth=0.7, prefill_flops=0.45, step_overhead_ms=2.0, queued_prefills=0.2)


def _vllm_runs(tmp_path: Path, version: str) -> list[CalibrationRun]:
    """The recorded result as a remote vLLM target on an H100 at concurrency 1 and 8, measured as the planner
    predicts it with GPU_TRUTH under `version`'s memory rule."""
    doc = load_benchmark_result(FIXTURE)
    remote = {"kind": "remote", "base_url": "http://10.0.0.1:8000", "model": "m", "api": "chat", "api_key_set": False}
    path = tmp_path / "remote.json"
    path.write_text(json.dumps(doc.model_dump(mode="json") | {"target": remote}))
    (run,) = load_runs([str(path)], ServedBy("llama-3.1-8b", "h100-sxm", "vllm", "bf16", version))
    predict = predictor(CAT, HW, None)
    runs = [run.model_copy(update={"concurrency": c, "id": f"{run.id}-c{c}"}) for c in (1, 8)]
    return [r.model_copy(update={"measured": predict(r, GPU_TRUTH)}) for r in runs]


def test_a_vllm_calibration_plans_the_release_it_was_fitted_on(tmp_path: Path) -> None:
    """Issue 22: a calibration's efficiencies absorbed the KV capacity of the release its runs served with,
    so it records that release, plans it when none is asked, and refuses a release whose rule differs."""
    runs = _vllm_runs(tmp_path, "0.10.1.1")
    assert all(r.engine_version == "0.10.1.1" for r in runs)
    doc = calibrate(runs, (), CAT, HW, pass_spread=0.0)
    assert (doc.engine, doc.engine_version, doc.device_kind) == ("vllm", "0.10.1.1", "gpu")
    assert format_fit(doc)[0].startswith("calibrated vllm 0.10.1.1 on NVIDIA H100")
    cal = save_calibration(doc, tmp_path / "vllm.json")
    ask = {"model": "llama-3.1-8b", "gpu": "h100-sxm", "max_model_len": 8192}
    label = "vLLM 0.10.1.1: V1 engine, v1-flashinfer-sampler rule"
    fitted = predict_one(PredictOptions(**ask, calibration=str(cal)), CAT, HW)
    assert fitted.calibrated and fitted.assumptions["vllm_memory_version"] == label
    assert "run(s) of vllm 0.10.1.1 on" in str(fitted.assumptions["calibration"])
    uncalibrated = predict_one(PredictOptions(**ask, engine_version="0.10.1.1"), CAT, HW)
    assert fitted.kv_cache_gib == uncalibrated.kv_cache_gib  # the release's memory, not the default's
    same_rule = predict_one(PredictOptions(**ask, engine_version="0.10.2", calibration=str(cal)), CAT, HW)
    assert same_rule.calibrated and same_rule.kv_cache_gib == fitted.kv_cache_gib
    with pytest.raises(PlannerError, match=f"fitted on {label}; vLLM 0.11.1: .* calibrate from runs of 0.11.1"):
        predict_one(PredictOptions(**ask, engine_version="0.11.1", calibration=str(cal)), CAT, HW)
    plan = make_plan(RecommendOptions(model="llama-3.1-8b", gpu="h100-sxm", calibration=str(cal)), CAT, HW)
    vllm = [o for o in plan.options if o.engine == "vllm"]
    assert vllm and all(o.calibrated and o.assumptions["vllm_memory_version"] == label for o in vllm)
    with pytest.raises(PlannerError, match=f"fitted on {label}"):
        make_plan(
            RecommendOptions(model="llama-3.1-8b", gpu="h100-sxm", engine_version="V0", calibration=str(cal)), CAT, HW
        )
    # a file that names no release was fitted under the planner's default, and says so when refused
    unnamed = save_calibration(doc.model_copy(update={"engine_version": None}), tmp_path / "unnamed.json")
    with pytest.raises(PlannerError, match=r"fitted on vLLM 0\.11\.1 \(planner default"):
        predict_one(PredictOptions(**ask, engine_version="0.10.1.1", calibration=str(unnamed)), CAT, HW)


def test_cli_calibrate_records_the_vllm_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _vllm_runs(tmp_path, "0.10.1.1")  # writes remote.json
    served = ["--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--engine", "vllm", "--format", "bf16"]
    out = tmp_path / "cal.json"
    argv = ["calibrate", "--measured", str(tmp_path / "remote.json"), *served, "--out", str(out)]
    assert main([*argv, "--engine-version", "0.10.1.1"]) == 0
    assert "calibrated vllm 0.10.1.1 on" in capsys.readouterr().out
    assert load_calibration(out).engine_version == "0.10.1.1"
    assert main([*argv, "--engine-version", "newest"]) == 1
    assert "engine version 'newest': give a vLLM release" in capsys.readouterr().err


def test_only_vllm_runs_carry_a_release() -> None:
    bundled = [r.model_copy(update={"engine_version": "0.10.1.1"}) for r in load_runs([str(FIXTURE)])]
    with pytest.raises(PlannerError, match="an engine version names a vLLM release; these runs served with bundled"):
        calibrate(bundled, (), CAT, HW, measure, pass_spread=0.0)


def test_the_gap_spread_is_the_scatter_of_ln_gaps_and_ignores_the_tails() -> None:
    """The interquartile estimate finds a lognormal's sd, and a few coalesced chunks (a gap near 0 then a
    double one) or pauses do not move it as they would a plain sd; too few gaps say nothing."""
    rng = random.Random(7)
    gaps = [0.01 * math.exp(rng.gauss(0, 0.1)) for _ in range(4000)]
    assert gap_spread(gaps) == pytest.approx(0.1, abs=0.008)
    tails = gaps + [1e-5] * 100 + [0.5] * 100
    assert gap_spread(tails) == pytest.approx(0.1, abs=0.015)
    assert gap_spread([*gaps[:49], 0.0]) is None and gap_spread([]) is None


def test_a_result_gives_its_one_token_gaps() -> None:
    doc = load_benchmark_result(FIXTURE)
    run = doc.runs[0]
    gaps = one_token_gaps(run)
    measured = [r for r in run.records if r.ok and not r.warmup]
    assert gaps and len(gaps) <= sum(len(r.itl_s) for r in measured)
    assert all(g in {x for r in measured for x in r.itl_s} for g in gaps)
    assert load_runs([str(FIXTURE)])[0].gap_spread is None  # 4 requests of 8 tokens: too few gaps


def test_a_measured_pass_spread_is_the_lowest_concurrencys_gap_spread(tmp_path: Path) -> None:
    """The pass scatter is measured, never fitted: the c=1 runs' gap spread (pooled repeats at their
    median) by default ("measured"), exact with 0, or a given figure; predictions through the calibration
    replay with it and say so."""
    (c1,) = load_runs([str(result_at(1, tmp_path))])
    (c8,) = load_runs([str(result_at(8, tmp_path))])
    rounds = [c1.model_copy(update={"gap_spread": g, "id": f"r{g}"}) for g in (0.08, 0.1, 0.3)]
    runs = [*rounds, c8.model_copy(update={"gap_spread": 0.4})]
    assert pool_repeats(runs)[0].gap_spread == pytest.approx(0.1)
    exact = calibrate(runs, (), CAT, HW, measure, pass_spread=0.0)
    assert exact.values.pass_spread == 0.0
    assert "scatter by sd of ln 0.1: --pass-spread measured" in format_fit(exact)[2]
    doc = calibrate(runs, (), CAT, HW, measure)
    assert DEFAULT_PASS_SPREAD == "measured"
    assert doc.values.pass_spread == pytest.approx(0.1) and doc.values.step_overhead_ms == exact.values.step_overhead_ms
    assert format_fit(doc)[2] == "pass_spread 0.1"
    assert calibrate(runs, (), CAT, HW, measure, pass_spread=0.2).values.pass_spread == 0.2
    with pytest.raises(PlannerError, match="between 0 and 2"):
        calibrate(runs, (), CAT, HW, measure, pass_spread=-1.0)
    path = save_calibration(doc, tmp_path / "cal.json")
    two = run_options(c1).model_copy(update={"concurrency": 2, "requests": 20, "calibration": str(path)})
    scattered = predict_one(two, CAT, HW, measure)
    assert "sd of ln 0.1, 8 seeded replays pooled" in scattered.assumptions["ttft"]
    assert "pass_spread 0.1" in scattered.assumptions["calibration"]
    exact = save_calibration(doc.model_copy(update={"values": TRUTH}), tmp_path / "exact.json")
    assert (
        "scattered"
        not in predict_one(two.model_copy(update={"calibration": str(exact)}), CAT, HW, measure).assumptions["ttft"]
    )
