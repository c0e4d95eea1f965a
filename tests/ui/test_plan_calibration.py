"""The Plan page's "Calibrate from a run": fit on saved benchmarks of the bundled engine, then plan with it."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from reports.benchmark_result import load_benchmark_result
from reports.history import History
from reports.home import history_dir

FIXTURE = Path(__file__).parent.parent / "planner" / "fixtures" / "bench_bundled_int4_c1.json"


def test_calibrate_from_saved_runs_labels_the_bundled_options(app: AppTest) -> None:
    doc = load_benchmark_result(FIXTURE)
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
    app.button(key="plan_calibrate").click().run()
    assert not app.exception and not app.error
    assert app.text_input(key="plan_calibration").value.endswith(".json")
    assert any("fit runs, after (2)" in c.value for c in app.code)
    table = app.dataframe[0].value
    bundled = table[table["engine"].str.startswith("Preflight bundled")]
    assert (
        len(bundled) and bundled["calibrated"].all() and not table[~table.index.isin(bundled.index)]["calibrated"].any()
    )
