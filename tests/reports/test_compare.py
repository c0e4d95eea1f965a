"""`reports compare`: significance from raw records, comparability, check changes and the regression gate.

The planted runs have a known truth: a 20% TTFT shift must be found, and two runs of
the same distribution must show no significant change in at least 90% of seeded trials.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from planted_records import planted_records
from result_docs import result_of, run_of

from reports import store
from reports.__main__ import main
from reports.check_result import CheckStatus
from reports.compare import METRICS, compare, compare_metric, in_flight, throughput_bins
from reports.compare_markdown import comparison_to_markdown
from reports.readiness_report import ReadinessReport
from reports.stats import _indices

TRIALS = 20
CORRELATED_TRIALS = 60  # a false-change rate near 10% needs more trials than 20 to be told from 15%


def _result(records, profile: str = "concurrency:4", **update):
    return result_of([run_of(records, profile)]).model_copy(update=update)


def test_a_20_percent_ttft_shift_is_changed_and_a_regression() -> None:
    c = compare(_result(planted_records(1)), _result(planted_records(2, ttft_ms=120)))
    by = {m.name: m for m in c.metrics}
    for name in ("ttft_p50_ms", "ttft_p95_ms"):
        assert by[name].changed and by[name].regression, by[name]
        assert by[name].ci95_pct is not None and by[name].ci95_pct[0] > 0
    assert not by["tpot_p50_ms"].changed  # TPOT was not touched
    assert c.comparable and c.regressions()


def test_same_distribution_is_no_significant_change_in_90_percent_of_trials() -> None:
    changed = dict.fromkeys((m.name for m in METRICS), 0)
    for trial in range(TRIALS):
        a, b = planted_records(1000 + trial), planted_records(5000 + trial)
        for m in METRICS:
            changed[m.name] += compare_metric(m, a, b, m.name, seed=trial).changed
    assert all(n <= TRIALS // 10 for n in changed.values()), changed


def test_requests_served_together_are_resampled_together() -> None:
    """Batched requests share their slowdowns. Resampled one by one they look like 4x more evidence than they
    are, and identical deployments read as 'changed'; resampled in blocks of the requests in flight, they do not."""
    for name in ("tpot_p50_ms", "e2e_mean_ms"):
        metric = next(m for m in METRICS if m.name == name)
        plain = replace(metric, block=lambda _records: 1)
        false_changes = {"blocks": 0, "one by one": 0}
        for trial in range(CORRELATED_TRIALS):
            a = planted_records(7000 + trial, n=80, sigma=0.05, shared_sigma=0.3)
            b = planted_records(9000 + trial, n=80, sigma=0.05, shared_sigma=0.3)
            false_changes["blocks"] += compare_metric(metric, a, b, name, seed=trial).changed
            false_changes["one by one"] += compare_metric(plain, a, b, name, seed=trial).changed
        assert false_changes["blocks"] <= CORRELATED_TRIALS // 10 < false_changes["one by one"], (name, false_changes)
    assert in_flight(planted_records(1)) == 4 and in_flight(planted_records(1, concurrency=1)) == 1


def test_a_tail_percentile_of_too_few_requests_is_never_changed() -> None:
    """p99 of 60 requests is about their maximum: no bootstrap makes that evidence (reports.stats.min_samples)."""
    c = compare(_result(planted_records(1, n=60)), _result(planted_records(2, n=60, ttft_ms=200)))
    by = {m.name: m for m in c.metrics}
    assert not by["ttft_p99_ms"].enough_samples and not by["ttft_p99_ms"].changed
    assert by["ttft_p95_ms"].enough_samples and by["ttft_p95_ms"].changed  # 60 >= 20: p95 has a tail
    assert "too few requests to judge this percentile" in comparison_to_markdown(c)


def test_block_resampling_keeps_neighbours_and_the_sample_size() -> None:
    rows = _indices(10, 50, 4, np.random.default_rng(0))
    assert rows.shape == (50, 10) and rows.min() >= 0 and rows.max() <= 9
    assert all((np.diff(row[:4]) == 1).all() and (np.diff(row[4:8]) == 1).all() for row in rows)
    assert _indices(3, 2, 8, np.random.default_rng(0)).shape == (2, 3)  # a block longer than the sample


def test_an_improvement_is_changed_but_not_a_regression() -> None:
    c = compare(_result(planted_records(3, tpot_ms=25)), _result(planted_records(4, tpot_ms=20)))
    tpot = next(m for m in c.metrics if m.name == "tpot_p50_ms")
    tput = next(m for m in c.metrics if m.name == "output_throughput_tok_s")
    assert tpot.changed and not tpot.regression and tpot.delta_pct is not None and tpot.delta_pct < 0
    assert tput.changed and tput.delta_pct is not None and tput.delta_pct > 0 and not tput.regression
    assert not c.regressions()


def test_throughput_bins_add_up_to_the_tokens_of_the_window() -> None:
    records = planted_records(5, n=50)
    bins = throughput_bins(records)
    window = max(r.end_s for r in records) - min(r.send_s for r in records)
    assert 10 <= len(bins) <= 60
    assert sum(bins) * window / len(bins) == pytest.approx(sum(r.output_tokens for r in records))
    assert throughput_bins([]) == []


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"workload": "synthetic: 512 in / 64 out tokens (fixed/fixed)"}, "different workload"),
        ({"valid": False}, "B is INVALID"),
    ],
)
def test_runs_that_differ_in_what_was_asked_are_not_comparable(update, reason) -> None:
    c = compare(_result(planted_records(1)), _result(planted_records(2), **update))
    assert not c.comparable and any(reason in r for r in c.reasons), c.reasons


def test_different_profiles_and_models_are_named() -> None:
    a = _result(planted_records(1))
    b = result_of([run_of(planted_records(2), "concurrency:8")])
    b = b.model_copy(update={"endpoint": b.endpoint.model_copy(update={"model": "other"})})
    c = compare(a, b)
    assert any("different load profile" in r for r in c.reasons)
    assert any("different model: m vs other" in r for r in c.reasons)
    assert c.metrics == []  # no run of the same profile to pair


def test_check_changes_and_verdicts_between_two_reports() -> None:
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "readiness-report.v1.json"
    a = store.load(fixture, ReadinessReport)
    checks = [
        c.model_copy(update={"status": CheckStatus.FAIL}) if c.id == "monitoring.health" else c
        for c in a.checks
        if c.id != "security.cors"
    ]
    b = a.model_copy(update={"checks": checks, "id": "b-report"})
    c = compare(a, b)
    assert {(x.id, x.a, x.b) for x in c.checks} == {
        ("monitoring.health", CheckStatus.PASS, CheckStatus.FAIL),
        ("security.cors", CheckStatus.PASS, None),
    }
    assert "monitoring.health PASS -> FAIL" in c.regressions()
    assert c.verdict is not None and c.verdict.a == c.verdict.b == "NOT_READY"
    text = comparison_to_markdown(c)
    assert "| `security.cors` | PASS | gone |" in text and "no significant change" in text


def _saved(tmp_path: Path, name: str, records, **update) -> Path:
    return store.save(_result(records, **update), tmp_path / name)


def test_cli_exit_codes_and_json_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _saved(tmp_path, "a.json", planted_records(1))
    same = _saved(tmp_path, "same.json", planted_records(1))
    slower = _saved(tmp_path, "slow.json", planted_records(2, ttft_ms=130))
    assert main(["compare", str(a), str(same), "--fail-on-regression"]) == 0
    out = tmp_path / "c.json"
    assert main(["compare", str(a), str(slower), "--fail-on-regression", "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    assert {"comparable", "reasons", "metrics", "checks", "verdict"} <= set(data)
    m = next(x for x in data["metrics"] if x["name"] == "ttft_p50_ms")
    assert {"name", "a", "b", "delta_pct", "ci95_pct", "changed", "regression"} <= set(m)
    assert m["changed"] and m["regression"] and len(m["ci95_pct"]) == 2
    assert main(["compare", str(a), str(slower)]) == 0  # without the gate a regression is reported, not failed
    assert main(["compare", str(a), str(slower), "--fail-on-regression", "--threshold-pct", "90"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(tmp_path / "missing.json")]) == 2
    assert "error:" in capsys.readouterr().err
    other = _saved(tmp_path, "other.json", planted_records(2), workload="synthetic: 1 in / 1 out tokens (fixed/fixed)")
    assert main(["compare", str(a), str(other), "--fail-on-regression"]) == 2
    assert "not comparable" in capsys.readouterr().err
