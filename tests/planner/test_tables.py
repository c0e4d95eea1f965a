"""planner.tables without Streamlit: each frame the Plan and Hardware pages show, checked against the plan it came from.

Plans are for catalog GPUs, so nothing is measured and every figure is the planner's own;
the checks are that a table says what the plan says, not what the figures are (those are
test_planner_recommend's and test_planner_sizing's job).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from planner.assumptions import (
    CALIBRATED,
    CATALOG,
    FIGURE_ASSUMPTIONS,
    MEMORY,
    MODEL,
    OTHER_CATALOG,
    TTFT,
    calibration_line,
    figure_values,
    setting_text,
)
from planner.calibrate import calibrate
from planner.calibrate_cli import load_runs
from planner.calibration import save_calibration
from planner.catalog import load_catalog
from planner.compare import Comparison, ComparisonRow
from planner.devices import device_choices
from planner.entrypoints import make_plan
from planner.hardware import detect
from planner.recommend import Plan, PlanOption
from planner.sizing import GIB
from planner.tables import (
    ASSUMPTION_COLUMNS,
    assumptions_frame,
    capacity_frame,
    comparison_frame,
    memory_frame,
    option_label,
    options_frame,
    roofline_frames,
    unfit_frame,
)
from planner.workload import RecommendOptions
from tests.planner.test_recommend import FIXED_CPU, plan

MEMORY_PARTS = ["weights", "activations", "runtime overhead", "KV cache", "unused"]


@pytest.fixture(scope="module")
def plan_8b() -> Plan:
    """The Plan page's default: an 8B model on one H100, 32 streams, with a target rate for the capacity table."""
    opts = RecommendOptions(
        model="llama-3.1-8b", gpu="h100-sxm", concurrency=32, input_tokens=1024, output_tokens=256, qps=2.0
    )
    return make_plan(opts)


@pytest.fixture(scope="module")
def plan_405b() -> Plan:
    """Too big for some options: 405B on eight H100s."""
    return make_plan(
        RecommendOptions(model="llama-3.1-405b", gpu="h100-sxm", gpus=8, slo="mlperf-llama3.1-405b-server")
    )


@pytest.fixture(scope="module")
def plan_calibrated(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """SmolLM2 on this CPU (a fixed measurement) with a calibration fitted on the recorded bundled run:
    the bundled options are calibrated, llama.cpp's are not."""
    fixture = Path(__file__).parent / "fixtures" / "bench_bundled_int4_c1.json"
    doc = calibrate(load_runs([str(fixture)]), (), load_catalog(), detect(), lambda: FIXED_CPU, pass_spread=0.0)
    path = save_calibration(doc, tmp_path_factory.mktemp("calibration") / "cal.json")
    return plan(model="smollm2-135m", gpu="cpu", context=2048, concurrency=2, calibration=str(path))


def test_option_label_names_rank_engine_format_and_split(plan_8b: Plan) -> None:
    option = plan_8b.options[0]
    assert option_label(option) == f"#1 {option.engine_label} {option.format_label}"
    assert option_label(replace(option, tp=8)) == f"#1 {option.engine_label} {option.format_label} TP8"
    assert option_label(replace(option, tp=2, pp=2)) == f"#1 {option.engine_label} {option.format_label} TP2xPP2"


def test_options_frame_has_one_row_per_option_in_rank_order(plan_8b: Plan) -> None:
    frame = options_frame(plan_8b)
    assert list(frame.columns) == [
        "rank",
        "engine",
        "format",
        "TP x PP",
        "replicas",
        "GiB per device",
        "batch",
        "TTFT ms",
        "TPOT ms",
        "busy replicas",
        "out tok/s at this load",
        "saturated out tok/s (prefill incl.)",
        "meets SLO",
        "quality",
        "calibrated",
    ]
    assert not frame["calibrated"].any()  # no calibration file given
    assert list(frame["rank"]) == [o.rank for o in plan_8b.options] == list(range(1, len(plan_8b.options) + 1))
    best, row = plan_8b.options[0], frame.iloc[0]
    assert (row["engine"], row["format"], row["TP x PP"]) == (best.engine_label, best.format_label, "1 x 1")
    assert row["TTFT ms"] == round(best.prediction.ttft_ms, 1)
    assert row["TPOT ms"] == round(best.prediction.tpot_ms, 2)
    assert row["GiB per device"] == round(best.memory.weights_bytes / GIB, 1)
    assert bool(row["meets SLO"]) is best.meets_slo


def test_memory_frame_stacks_five_parts_that_fill_the_device(plan_8b: Plan) -> None:
    frame = memory_frame(plan_8b, top=3)
    assert list(frame["option"].unique()) == [option_label(o) for o in plan_8b.options[:3]]
    for option in plan_8b.options[:3]:
        parts = frame[frame["option"] == option_label(option)]
        assert list(parts["part"]) == MEMORY_PARTS
        assert (parts["GiB"] >= 0).all()
        assert parts["GiB"].sum() == pytest.approx(option.memory.device_bytes / GIB)


def test_roofline_points_sit_under_their_roof(plan_8b: Plan) -> None:
    roof, points = roofline_frames(plan_8b, top=4)
    assert list(points["option"]) == [option_label(o) for o in plan_8b.options[:4]]
    # "overhead": the step's fixed cost (launch, schedule, sample) outlasts both its reads and its FLOPs
    assert set(points["bound"]) <= {"memory", "compute", "overhead"}
    bandwidth_tflops = plan_8b.device.bandwidth_bytes_s / 1e12
    for _, line in roof.groupby("roof"):
        peak = line["TFLOP/s per device"].max()
        assert list(line["FLOP/byte"]) == sorted(line["FLOP/byte"])
        expected = [min(peak, ai * bandwidth_tflops) for ai in line["FLOP/byte"]]
        assert list(line["TFLOP/s per device"]) == pytest.approx(expected)
    highest = roof["TFLOP/s per device"].max()
    assert (points["TFLOP/s per device"] <= highest).all()


def test_capacity_frame_prices_each_option(plan_8b: Plan) -> None:
    frame = capacity_frame(plan_8b)
    with_capacity = [o for o in plan_8b.options if o.capacity is not None]
    assert list(frame["option"]) == [option_label(o) for o in with_capacity]
    best, row = with_capacity[0].capacity, frame.iloc[0]
    assert (row["batch within TPOT target"], row["devices"]) == (best.batch, best.devices)
    assert row["$ per hour"] == round(best.cost_per_hour, 2)  # the catalog's price for an H100


def test_unfit_frame_says_why_each_option_cannot_run(plan_405b: Plan) -> None:
    frame = unfit_frame(plan_405b)
    assert list(frame.columns) == ["engine", "format", "why not"]
    assert list(frame["why not"]) == [o.reason for o in plan_405b.unfit]
    assert len(frame) == len(plan_405b.unfit) > 0


def test_comparison_frame_gives_the_error_in_percent_and_none_when_not_measured() -> None:
    rows = (ComparisonRow("decode", "tok/s", 90.0, 60.0), ComparisonRow("prefill", "tok/s", 100.0, None))
    frame = comparison_frame(Comparison(rows, "conditions"))
    assert list(frame.columns) == ["metric", "unit", "predicted", "measured", "error %"]
    assert frame.iloc[0].to_dict() == {
        "metric": "decode",
        "unit": "tok/s",
        "predicted": 90.0,
        "measured": 60.0,
        "error %": 50.0,
    }
    assert frame["error %"].isna().tolist() == [False, True]


def test_device_choices_offer_this_machine_this_cpu_the_catalog_then_a_custom_gpu() -> None:
    catalog = load_catalog()
    choices = device_choices(catalog)
    assert list(choices)[:2] == ["detected", "cpu"]
    plannable = [gpu_id for gpu_id, spec in catalog.gpus.items() if not spec.unsupported]
    assert list(choices)[2:] == [*plannable, "custom"]
    assert "gaudi2" in catalog.gpus and "gaudi2" not in plannable  # in the catalog for its figures only
    assert choices["h100-sxm"] == catalog.gpus["h100-sxm"].name


def _sources(option: PlanOption) -> dict[str, set[str]]:
    frame = assumptions_frame(option)
    return {key: set(frame[frame["assumption"] == key]["source"]) for key in set(frame["assumption"])}


def test_assumptions_frame_lists_each_figure_with_the_settings_the_prediction_used(plan_8b: Plan) -> None:
    best = plan_8b.options[0]
    frame = assumptions_frame(best)
    assert list(frame.columns) == ASSUMPTION_COLUMNS == ["figure", "value", "assumption", "setting", "source"]
    values = figure_values(best)
    assert list(dict.fromkeys(frame["figure"])) == list(FIGURE_ASSUMPTIONS) == list(values)
    for figure, rows in frame.groupby("figure", sort=False):
        assert set(rows["value"]) == {values[figure]}
        assert list(rows["assumption"]) == [k for k in FIGURE_ASSUMPTIONS[figure] if k in best.assumptions]
    for row in frame.itertuples():
        assert row.setting == setting_text(best.assumptions[row.assumption])  # the prediction's own, not recomputed
    assert set(frame["assumption"]) == set(best.assumptions)  # every figure the prediction used is shown
    assert values[TTFT] == f"{best.prediction.ttft_ms:,.1f} ms"
    assert frame[frame["assumption"] == "decode_bandwidth_efficiency"]["setting"].iloc[0] == (
        f"{best.assumptions['decode_bandwidth_efficiency']:.3g}"
    )


def test_an_uncalibrated_option_says_its_figures_are_the_catalogs(plan_8b: Plan) -> None:
    best = plan_8b.options[0]
    assert not best.calibrated and "calibration" not in best.assumptions
    sources = _sources(best)
    assert CALIBRATED not in set().union(*sources.values())
    assert sources["ttft"] == sources["tpot"] == {MODEL}
    assert sources["matmul_precision"] == {OTHER_CATALOG["matmul_precision"]}
    assert sources["decode_bandwidth_efficiency"] == {CATALOG}
    assert calibration_line(best) == "uncalibrated: catalog assumptions (planner/data/engines.json)"


def test_a_calibrated_option_labels_what_the_file_set(plan_calibrated: Plan) -> None:
    bundled = [o for o in plan_calibrated.options if o.engine == "bundled"]
    others = [o for o in plan_calibrated.options if o.engine != "bundled"]
    assert bundled and others
    for option in bundled:
        assert option.calibrated and option.calibration and option.assumptions["calibration"] == option.calibration
        line = calibration_line(option)
        assert line.startswith("calibrated from ") and line.removeprefix("calibrated ") == option.calibration
        assert "cal.json" in line
        frame = assumptions_frame(option)
        sources = _sources(option)
        for key in ("decode_bandwidth_efficiency", "prefill_flops_efficiency", "step_overhead_ms", "calibration"):
            assert sources[key] == {CALIBRATED}
        assert sources["max_num_seqs"] == {CALIBRATED}  # the calibration pins the server's batch limit
        assert sources["block_size"] == {CATALOG}
        # the calibrated label itself is a row of every timing figure
        label_rows = frame[frame["assumption"] == "calibration"]
        assert set(label_rows["setting"]) == {option.calibration}
        assert set(label_rows["figure"]) == set(FIGURE_ASSUMPTIONS) - {MEMORY}
    for option in others:
        assert CALIBRATED not in set(assumptions_frame(option)["source"])
        assert calibration_line(option).startswith("uncalibrated: ")


def test_absent_assumptions_are_skipped_not_invented(plan_8b: Plan, plan_405b: Plan) -> None:
    best = plan_8b.options[0]
    few = replace(best, assumptions={"block_size": 16, "tpot": "decode step"})
    frame = assumptions_frame(few)
    assert set(frame["assumption"]) == {"block_size", "tpot"}
    assert list(frame["figure"]) == [MEMORY, "TPOT", "Saturated output tok/s"]
    assert assumptions_frame(replace(best, assumptions={})).empty
    # an option that cannot run has no timing figures: memory alone, or nothing without a memory plan
    sized = [o for o in plan_405b.unfit if o.memory is not None]
    assert sized and all(set(assumptions_frame(o)["figure"]) <= {MEMORY} for o in sized)
    bare = [o for o in plan_405b.unfit if o.memory is None]
    assert all(assumptions_frame(o).empty and list(assumptions_frame(o).columns) == ASSUMPTION_COLUMNS for o in bare)
