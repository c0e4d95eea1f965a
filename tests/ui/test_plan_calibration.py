"""The Plan page's "Calibrate from a run": fit on saved benchmarks of the bundled engine, then plan with it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from streamlit.testing.v1 import AppTest

from planner.calibrate_cli import runs_of
from planner.recommend import FITTED_KEYS
from planner.tables import calibration_frame
from reports.benchmark_result import load_benchmark_result
from reports.history import History
from reports.home import history_dir

FIXTURE = Path(__file__).parent.parent / "planner" / "fixtures" / "bench_bundled_int4_c1.json"


def test_calibrate_from_saved_runs_labels_the_bundled_options(app: AppTest) -> None:
    doc = load_benchmark_result(FIXTURE)
    # the recorded requests fifteen times over: enough inter-token gaps to measure their scatter
    records = [replace(r, request_id=k * 100 + r.request_id) for k in range(15) for r in doc.runs[0].records]
    doc = doc.model_copy(update={"runs": [doc.runs[0].model_copy(update={"records": records})]})
    measured = runs_of(doc, "fixture")[0].gap_spread
    assert measured
    history = History(history_dir())
    history.save(doc)
    run = doc.runs[0].model_copy(update={"profile": "concurrency:2"})
    history.save(doc.model_copy(update={"id": f"{doc.id}-c2", "runs": [run]}))
    app.switch_page("app_pages/plan.py").run()
    app.selectbox(key="plan_model").set_value("smollm2-135m")
    app.selectbox(key="plan_gpu").set_value("cpu").run()
    fit = app.multiselect(key="plan_cal_fit")
    assert len(fit.options) == 2
    fit.set_value([doc.id, f"{doc.id}-c2"]).run()
    app.checkbox(key="plan_cal_scatter").check()  # calibrate --pass-spread measured
    app.button(key="plan_calibrate").click().run()
    assert not app.exception and not app.error
    assert app.session_state["plan_calibration_doc"].values.pass_spread == round(measured, 4)
    assert app.text_input(key="plan_calibration").value.endswith(".json")
    assert any("fit runs, after (2)" in c.value for c in app.code)
    # the predicted-vs-measured chart: one panel per metric, both runs before and after the fit
    specs = [json.loads(e.proto.spec) for e in app.get("vega_lite_chart")]
    (spec,) = [s for s in specs if "facet" in s]
    assert spec["facet"]["column"]["field"] == "metric"
    rows = calibration_frame(app.session_state["plan_calibration_doc"])
    assert set(rows["stage"]) == {"before", "after"} and set(rows["runs"]) == {"fit on"}
    assert len(rows) == 2 * 2 * 3  # runs x stages x metrics
    # each run's own interval of its median TTFT and TPOT, for the bars; throughput has none
    summary = doc.runs[0].summary
    ttft = rows[(rows["metric"] == "ttft_ms") & (rows["run"] == "concurrency:1")].iloc[0]
    assert (ttft["measured_low"], ttft["measured_high"]) == tuple(summary.p50_ttft_ms_ci95)
    assert rows[rows["metric"] == "output_tok_s"]["measured_low"].isna().all()
    assert any(layer["mark"]["type"] == "rule" for layer in spec["spec"]["layer"])
    table = app.dataframe[0].value
    bundled = table[table["engine"].str.startswith("Preflight bundled")]
    assert (
        len(bundled) and bundled["calibrated"].all() and not table[~table.index.isin(bundled.index)]["calibrated"].any()
    )
    # the picked bundled option says whose figures these are, in its line and in its assumption table
    app.selectbox(key="plan_option").set_value(int(bundled.index[0])).run()
    (line,) = [s.value for s in app.success if s.value.startswith("calibrated from ")]
    assert app.text_input(key="plan_calibration").value in line
    (expander,) = [e for e in app.expander if e.label == "How each figure is predicted"]
    how = expander.dataframe[0].value
    calibrated = how[how["source"] == "calibrated"]
    assert {"prefill_flops_efficiency", "step_overhead_ms", "calibration"} <= set(calibrated["assumption"])
    # a price the runs could not determine (on a CPU whose passes are all compute-bound, the bandwidth) stays
    # the catalog's and is not labelled calibrated
    hidden = {FITTED_KEYS[name] for name in app.session_state["plan_calibration_doc"].undetermined}
    assert not hidden & set(calibrated["assumption"])
    assert set(how[how["assumption"] == "calibration"]["setting"]) == {line.removeprefix("calibrated ")}


def _step_log(path: Path) -> Path:
    """A server step log: decode passes at 1 and 8 sequences, prompt passes of two sizes (times in ms)."""
    lines, t = [], 100.0
    for decoding, prompt, ms, count in ((1, 0, 6.0, 60), (8, 0, 18.0, 30), (0, 142, 170.0, 4), (3, 426, 450.0, 3)):
        for _ in range(count):
            lines.append(json.dumps({"t": t, "step_ms": ms - 0.3, "decoding": decoding, "prefill_tokens": prompt}))
            t += ms / 1e3
    lines.append(json.dumps({"t": t, "step_ms": 6.0, "decoding": 1, "prefill_tokens": 0}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_calibrate_prices_passes_from_the_step_log_a_saved_run_kept(app: AppTest, tmp_path: Path) -> None:
    """A saved bundled run whose server kept its step log (the Benchmark page's default) offers it, and the
    calibration then prices passes from it (`calibrate --step-log`)."""
    doc = load_benchmark_result(FIXTURE)
    log = _step_log(tmp_path / "steps.jsonl")
    History(history_dir()).save(doc.model_copy(update={"config": {**doc.config, "step_log": str(log)}}))
    app.switch_page("app_pages/plan.py").run()
    app.selectbox(key="plan_model").set_value("smollm2-135m")
    app.selectbox(key="plan_gpu").set_value("cpu").run()
    app.multiselect(key="plan_cal_fit").set_value([doc.id]).run()
    offer = app.checkbox(key="plan_cal_step_logs")
    assert offer.value and "(1 of 1 fit runs kept one)" in offer.label
    app.button(key="plan_calibrate").click().run()
    assert not app.exception and not app.error
    fitted = app.session_state["plan_calibration_doc"]
    assert fitted.passes is not None and fitted.passes.sources == [str(log)]
    assert any("logged passes" in c.value for c in app.code)
