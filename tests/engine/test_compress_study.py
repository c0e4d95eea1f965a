"""The compression study: the Pareto frontier and the no-saving rule on hand-built figures, then the study itself on
the real engine with three settings (fp32, round-to-nearest int4, 2:4 pruning), its history document, its CLI
command and the Reports page drawing it."""

from __future__ import annotations

import pytest

from engine.studies.base import COMPRESS_SETTINGS, StudyOptions, parse_settings
from engine.studies.compress import compare_with_reference, mark_frontiers
from engine.studies.pareto import pareto_front
from engine.studies.registry import STUDIES, StudyResult, format_study
from engine.study_cli import study_command, study_document
from reports.history import History
from reports.home import history_dir
from reports.study_report import StudyReport
from tests.ui.app_session import open_app

# One torch thread (see tests/engine/test_studies.py); three settings and tiny sizes: a few seconds of work each.
QUICK = StudyOptions(
    device="cpu",
    threads=1,
    compress_settings=("fp32", "rtn-g128", "prune-2:4"),
    quant_prompt_tokens=32,
    quant_decode_tokens=4,
    eval_max_tokens=96,
    eval_window=48,
)


# --- pure units, no model ---------------------------------------------------------------------


def test_pareto_front_keeps_the_points_no_other_beats_on_both_axes() -> None:
    # (bytes, KL), both lower is better: b beats c on both; a and b trade off; d ties a exactly; e is unmeasured.
    points = [(100.0, 0.0), (20.0, 0.5), (30.0, 0.6), (100.0, 0.0), (None, 0.1)]
    assert pareto_front(points, lower_x=True, lower_y=True) == [True, True, False, True, False]
    # (tok/s, KL): more speed is better. The fastest point is on the front whatever its KL; a slower, worse one is not.
    speed = [(10.0, 0.0), (30.0, 0.5), (20.0, 0.6), (5.0, 0.01)]
    assert pareto_front(speed, lower_x=False, lower_y=True) == [True, True, False, False]
    assert pareto_front([], lower_x=True, lower_y=True) == []


def _row(setting: str, weight: int, decode: float, prefill: float, kl: float, **extra: object) -> dict[str, object]:
    return {
        "setting": setting,
        "format": "fp32",
        "weight_bytes": weight,
        "decode_tok_s": decode,
        "prefill_tok_s": prefill,
        "mean_kl_nats": kl,
        "block_linears": "DenseLinear x120",
    } | extra


def test_a_setting_that_saves_nothing_says_so_and_why_from_its_figures() -> None:
    rows = [
        _row("fp32", 1000, 20.0, 500.0, 0.0),
        _row("pruned", 1000, 19.0, 510.0, 2.0, sparsity=0.5),
        _row("factored", 1030, 12.0, 300.0, 9.0, factor_values_ratio=1.03),
        _row("smaller", 180, 40.0, 480.0, 0.3),
        _row("as-fast", 500, 21.0, 520.0, 0.1),
    ]
    compare_with_reference(rows, tolerance=0.15)
    mark_frontiers(rows)
    fp32, pruned, factored, smaller, as_fast = rows
    assert fp32["saves_nothing_on"] == "" and fp32["why_no_saving"] is None
    assert pruned["bytes_vs_fp32"] == 1.0 and pruned["decode_vs_fp32"] == pytest.approx(0.95)
    assert pruned["saves_nothing_on"] == "bytes, time"
    assert "50% zeros" in pruned["why_no_saving"] and "DenseLinear x120" in pruned["why_no_saving"]
    assert "decode 0.95x and prefill 1.02x" in pruned["why_no_saving"]
    assert factored["saves_nothing_on"] == "bytes, time" and "1.03x the values" in factored["why_no_saving"]
    assert smaller["saves_nothing_on"] == "" and smaller["why_no_saving"] is None  # 5.6x smaller, 2x faster decode
    assert as_fast["saves_nothing_on"] == "time" and "weights" not in as_fast["why_no_saving"]  # half the bytes
    assert [r["pareto_size"] for r in rows] == [True, False, False, True, True]
    assert [r["pareto_speed"] for r in rows] == [True, False, False, True, True]


def test_speed_ratios_use_the_fp32_speed_timed_beside_the_setting() -> None:
    """fp32 timed at 20 tok/s early in a study, 10 tok/s beside a later setting: 11 tok/s then is 1.1x, no saving."""
    rows = [
        _row("fp32", 1000, 20.0, 500.0, 0.0),
        _row("later", 1000, 11.0, 260.0, 2.0, sparsity=0.25, fp32_decode_tok_s=10.0, fp32_prefill_tok_s=250.0),
    ]
    compare_with_reference(rows, tolerance=0.15)
    later = rows[1]
    assert later["decode_vs_fp32"] == pytest.approx(1.1) and later["prefill_vs_fp32"] == pytest.approx(1.04)
    assert later["saves_nothing_on"] == "bytes, time" and "decode 1.10x and prefill 1.04x" in later["why_no_saving"]


def test_settings_are_formats_and_catalog_names() -> None:
    assert {"fp32", "int4", "fp8-e5m2", "gptq-g128", "rtn-g128", "prune-2:4", "rank-0.75"} <= set(COMPRESS_SETTINGS)
    assert parse_settings("fp32, gptq-g128") == ("fp32", "gptq-g128")
    with pytest.raises(ValueError, match="comma-separated settings"):
        parse_settings("fp32,zip")
    with pytest.raises(ValueError, match="compress settings must be some of"):
        StudyOptions(compress_settings=("nope",))
    assert study_command("compress", QUICK) == (
        "python -m engine study compress --device cpu --threads 1 --prompt-tokens 32 --decode-tokens 4 "
        "--eval-tokens 96 --eval-window 48 --settings fp32,rtn-g128,prune-2:4"
    )


# --- the real engine ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick() -> StudyResult:
    return STUDIES["compress"](QUICK, progress=None)


@pytest.mark.slow
def test_the_study_measures_every_setting_as_the_engine_serves_it(quick: StudyResult) -> None:
    rows = {r["setting"]: r for r in quick.rows}
    assert list(rows) == ["fp32", "rtn-g128", "prune-2:4"]
    fp32, rtn, pruned = rows.values()
    for row in quick.rows:
        for key in ("weight_bytes", "load_s", "prefill_tok_s", "decode_tok_s", "perplexity"):
            assert row[key] > 0, (row["setting"], key)
        assert row["bytes_vs_fp32"] == pytest.approx(row["weight_bytes"] / fp32["weight_bytes"])
        # Speed ratios are against fp32 timed again beside the setting (the fp32 row: its own figures).
        paired = row.get("fp32_decode_tok_s", fp32["decode_tok_s"])
        assert paired > 0 and row["decode_vs_fp32"] == pytest.approx(row["decode_tok_s"] / paired)
    assert "fp32_decode_tok_s" not in fp32 and rtn["fp32_prefill_tok_s"] > 0
    # fp32 is the reference; the others are scored against it, each with its own figure.
    assert fp32["mean_kl_nats"] == 0.0 and fp32["top1_agreement"] == 1.0 and fp32["stored_bytes"] is None
    assert 0 < rtn["mean_kl_nats"] < pruned["mean_kl_nats"] and rtn["top1_agreement"] < 1
    # Compressed models were written as weights directories and loaded back through the real loader.
    assert (rtn["format"], pruned["format"]) == ("int4", "fp32")
    assert 0 < rtn["stored_bytes"] < fp32["weight_bytes"] / 4 and rtn["weight_bytes"] < fp32["weight_bytes"] / 4
    assert rtn["compress_s"] > 0 and rtn["method"] == "round-to-nearest, group 128"
    assert rtn["block_linears"] == "Int4Linear x120" and pruned["block_linears"] == "DenseLinear x120"
    # 2:4 keeps half the weights, stored densely: no bytes saved, and the study says so with the measured figures.
    assert pruned["sparsity"] == pytest.approx(0.5, abs=1e-3) and pruned["weight_bytes"] == fp32["weight_bytes"]
    assert "bytes" in pruned["saves_nothing_on"] and "50% zeros are stored" in pruned["why_no_saving"]
    assert any(note.startswith("prune-2:4: saves no bytes") for note in quick.notes)
    assert fp32["pareto_size"] and rtn["pareto_size"] and not pruned["pareto_size"]
    assert quick.conditions["eval_tokens"] == 96
    assert "format" not in quick.conditions and quick.conditions["compress_settings"] == list(QUICK.compress_settings)
    table = format_study(quick)
    assert "front size" in table and "prune-2:4" in table


@pytest.mark.slow
def test_the_study_is_kept_in_the_history_and_drawn_on_the_reports_page(quick: StudyResult) -> None:
    from datetime import UTC, datetime

    doc = study_document("compress", QUICK, quick, datetime.now(UTC), label="compress quick")
    history = History(history_dir())
    history.save(doc)
    [entry] = history.entries()
    assert (entry.kind, entry.target, entry.label) == ("study", "bundled", "compress quick")
    loaded = history.load(entry.id)
    assert isinstance(loaded, StudyReport) and loaded == doc and loaded.rows == quick.rows
    assert loaded.command.startswith("python -m engine study compress") and "--settings" in loaded.command

    at = open_app("app_pages/reports.py")
    assert not at.exception
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 5, "three bar charts and the two Pareto charts"
    frames = [df.value for df in at.dataframe]
    assert any("why_no_saving" in f.columns and "prune-2:4" in f["setting"].tolist() for f in frames)
