"""SLO profiles: the shipped set with their sources, user files in YAML and JSON, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checks.load.scenarios import SCENARIOS
from checks.load.sweep import DEFAULT_ATTAINMENT
from checks.readiness.slo import SloProfileError, goodput_slo, load_profile, profile_names, shipped_profiles
from planner.slo_targets import slo_choices, slo_targets
from reports.slo_profile import SloProfile

# --- shipped profiles -----------------------------------------------------------------------------------


def test_every_shipped_profile_names_its_source() -> None:
    names = profile_names()
    assert {"chat", "batch", *SCENARIOS} <= set(names)
    assert len(names) == len(set(names))
    for profile in shipped_profiles().values():
        assert profile.source.strip(), profile.name


@pytest.mark.parametrize(
    ("name", "limits"),
    [
        ("chat", {"ttft_p95_ms": 500, "tpot_p99_ms": 50, "e2e_p99_ms": 10_000}),
        ("batch", {"ttft_p99_ms": 5000, "e2e_p99_ms": 60_000}),
        ("mlperf-llama2-70b-server", {"ttft_p99_ms": 2000, "tpot_p99_ms": 200}),
        ("mlperf-llama2-70b-interactive", {"ttft_p99_ms": 450, "tpot_p99_ms": 40}),
        ("mlperf-llama3.1-8b-server", {"ttft_p99_ms": 2000, "tpot_p99_ms": 100}),
        ("mlperf-llama3.1-8b-interactive", {"ttft_p99_ms": 500, "tpot_p99_ms": 30}),
        ("mlperf-llama3.1-405b-server", {"ttft_p99_ms": 6000, "tpot_p99_ms": 175}),
        ("mlperf-llama3.1-405b-interactive", {"ttft_p99_ms": 4500, "tpot_p99_ms": 80}),
        ("mlperf-deepseek-r1-server", {"ttft_p99_ms": 2000, "tpot_p99_ms": 80}),
        ("mlperf-deepseek-r1-interactive", {"ttft_p99_ms": 1500, "tpot_p99_ms": 15}),
    ],
)
def test_shipped_limits(name, limits) -> None:
    profile = load_profile(name)
    for field, ms in limits.items():
        assert getattr(profile, field) == ms
    if name.startswith("mlperf-"):
        assert "v5.1" in profile.source and "p99" in profile.source and "mlperf.conf" in profile.source


def test_the_planner_offers_the_shipped_files_profiles() -> None:
    assert list(slo_choices()) == [name for name in profile_names() if name not in SCENARIOS]


@pytest.mark.parametrize("name", list(slo_choices()))
def test_the_planner_and_the_checklist_resolve_a_name_to_the_same_figures(name) -> None:
    """One name, one profile: each planner target is a limit the checklist's profile states, at the same
    percentile, and no limit the checklist holds on that metric is stricter."""
    profile, targets = load_profile(name), slo_targets(name)
    assert targets.source == profile.source
    stated = {
        "ttft": {"p50": profile.ttft_p50_ms, "p95": profile.ttft_p95_ms, "p99": profile.ttft_p99_ms},
        "tpot": {"p50": profile.tpot_p50_ms, "p99": profile.tpot_p99_ms},
        "e2e": {"p99": profile.e2e_p99_ms},
    }
    for metric, limits in stated.items():
        ms, at = getattr(targets, f"{metric}_ms"), getattr(targets, f"{metric}_at")
        given = [v for v in limits.values() if v is not None]
        assert (ms is None) == (not given), (name, metric)
        if given:
            assert limits[at] == ms == min(given), (name, metric)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_profiles_take_their_figures_from_the_scenarios(name) -> None:
    scenario, profile = SCENARIOS[name], load_profile(name)
    assert profile.ttft_p95_ms == scenario.ttft_target_ms
    assert profile.tpot_p99_ms == scenario.tpot_target_ms
    assert profile.min_goodput_fraction == DEFAULT_ATTAINMENT
    assert "checks/load/scenarios.py" in profile.source


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"ttft_p50_ms": 100, "ttft_p95_ms": 300, "ttft_p99_ms": 800, "tpot_p99_ms": 50}, (800, 50, None)),
        ({"ttft_p50_ms": 100, "ttft_p95_ms": 300, "e2e_p99_ms": 9000}, (300, None, 9000)),
        ({"ttft_p50_ms": 100, "tpot_p50_ms": 20}, None),  # medians are never per-request limits
    ],
)
def test_goodput_uses_the_tail_limits_only(limits, expected) -> None:
    slo = goodput_slo(SloProfile(name="t", source="test", **limits))
    assert (None if slo is None else (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms)) == expected


# --- user files -----------------------------------------------------------------------------------------

GOOD_YAML = """\
name: my-chat
description: our support bot
source: product requirement PRD-42, section 3
ttft_p95_ms: 800
tpot_p99_ms: 60
max_error_rate: 0.005
min_goodput_fraction: 0.9
"""


def test_a_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text(GOOD_YAML)
    profile = load_profile(str(path))
    assert (profile.name, profile.ttft_p95_ms, profile.tpot_p99_ms) == ("my-chat", 800, 60)
    assert (profile.max_error_rate, profile.min_goodput_fraction) == (0.005, 0.9)
    assert (profile.kind, profile.schema_version) == (SloProfile.KIND, SloProfile.SCHEMA_VERSION)


def test_a_json_file_with_kind_and_version_loads(tmp_path: Path) -> None:
    path = tmp_path / "slo.json"
    data = {"kind": "preflight.slo-profile", "schema_version": 1, "name": "j", "source": "ours", "e2e_p99_ms": 3000}
    path.write_text(json.dumps(data))
    profile = load_profile(path)
    assert profile.e2e_p99_ms == 3000
    assert profile.max_error_rate == 0.01  # the default


def test_a_saved_profile_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    path.write_text(load_profile("chat").model_dump_json())
    assert load_profile(path) == load_profile("chat")


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("bad.yaml", GOOD_YAML.replace("800", "-5"), "bad.yaml: ttft_p95_ms: Input should be greater than 0"),
        ("bad.yaml", GOOD_YAML.replace("800", ".inf"), "bad.yaml: ttft_p95_ms: Input should be a finite number"),
        ("bad.yaml", GOOD_YAML.replace("800", "fast"), "bad.yaml: ttft_p95_ms: Input should be a valid number"),
        ("extra.yaml", GOOD_YAML + "ttft_p90_ms: 400\n", "extra.yaml: ttft_p90_ms: Extra inputs are not permitted"),
        ("nolimit.json", '{"name": "x", "source": "s"}', "nolimit.json: profile 'x' sets no limit"),
        ("nosource.json", '{"name": "x", "e2e_p99_ms": 5}', "nosource.json: source: Field required"),
        ("rate.yaml", GOOD_YAML.replace("0.005", "1.5"), "rate.yaml: max_error_rate: Input should be less than or"),
        ("kind.json", '{"kind": "preflight.readiness-report", "name": "x"}', "is a 'preflight.readiness-report'"),
        (
            "new.json",
            '{"schema_version": 9, "name": "x", "source": "s", "e2e_p99_ms": 5}',
            "new.json: schema_version: schema_version 9 is not one this Preflight reads",
        ),
        ("list.yaml", "- 1\n- 2\n", "list.yaml: expected a mapping of profile fields, found list"),
        ("broken.yaml", "name: [unclosed\n", "broken.yaml: not valid YAML"),
        ("broken.json", "{", "broken.json: not valid JSON"),
        (
            "goodput.yaml",
            "name: g\nsource: s\nttft_p50_ms: 5\nmin_goodput_fraction: 0.9\n",
            "min_goodput_fraction needs a per-request limit",
        ),
    ],
)
def test_bad_files_give_one_line_naming_the_problem(tmp_path: Path, name, text, error) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SloProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert error in message
    assert "\n" not in message


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(SloProfileError) as info:
        load_profile("chatty")
    message = str(info.value)
    assert message.startswith("unknown SLO profile 'chatty': choose one of chat, batch, ")
    for name in SCENARIOS:
        assert name in message


@pytest.mark.parametrize(
    ("arg", "error"),
    [
        ("missing.yaml", "missing.yaml: no such file"),
        ("profile.toml", "an SLO profile file ends in .yaml, .yml or .json"),
        ("  ", "no SLO profile given"),
    ],
)
def test_unreadable_arguments(tmp_path: Path, arg, error) -> None:
    if arg == "profile.toml":
        (tmp_path / arg).write_text("name = 'x'")
    target = str(tmp_path / arg) if arg.strip() else arg
    with pytest.raises(SloProfileError, match=error):
        load_profile(target)
