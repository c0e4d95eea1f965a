"""Load profiles: every CLI form parses, bad ones are clear ValueErrors, and arrival schedules have the right shape."""

from __future__ import annotations

import numpy as np
import pytest

from checks.load.profiles import PROFILE_HELP, LoadProfile, arrival_offsets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sync", LoadProfile("sync", concurrency=1)),
        ("  sync  ", LoadProfile("sync", concurrency=1)),
        ("concurrency:1", LoadProfile("concurrency", concurrency=1)),
        ("concurrency:64", LoadProfile("concurrency", concurrency=64)),
        ("constant:2", LoadProfile("constant", rate=2.0)),
        ("constant:0.25", LoadProfile("constant", rate=0.25)),
        ("poisson:5", LoadProfile("poisson", rate=5.0, burstiness=1.0)),
        ("poisson:5:0.5", LoadProfile("poisson", rate=5.0, burstiness=0.5)),
        ("poisson:1.5:3", LoadProfile("poisson", rate=1.5, burstiness=3.0)),
        ("sweep", LoadProfile("sweep")),
    ],
)
def test_parse_accepted_forms(text: str, expected: LoadProfile) -> None:
    assert LoadProfile.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "label", "in_flight", "is_rate"),
    [
        ("sync", "sync", 1, False),
        ("concurrency:8", "concurrency:8", 8, False),
        ("constant:2.5", "constant:2.5", None, True),
        ("poisson:4", "poisson:4", None, True),
        ("poisson:4:0.5", "poisson:4:0.5", None, True),
        ("sweep", "sweep", None, False),
    ],
)
def test_label_limit_and_kind(text: str, label: str, in_flight: int | None, is_rate: bool) -> None:
    profile = LoadProfile.parse(text)
    assert profile.label == label
    assert LoadProfile.parse(profile.label) == profile  # the label is itself a valid CLI form
    assert profile.in_flight_limit() == in_flight
    assert profile.is_rate is is_rate


@pytest.mark.parametrize("text", ["constant:3", "poisson:3", "poisson:3:2", "sweep"])
def test_max_concurrency_caps_rate_profiles(text: str) -> None:
    profile = LoadProfile.parse(text, max_concurrency=4)
    assert profile.max_concurrency == 4
    if profile.is_rate:
        assert profile.in_flight_limit() == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "unknown load profile"),
        ("fast", "unknown load profile"),
        ("Sync:1", "unknown load profile"),
        ("sync:1", "unknown load profile"),
        ("sweep:3", "unknown load profile"),
        ("concurrency", "unknown load profile"),
        ("concurrency:4:2", "unknown load profile"),
        ("constant", "unknown load profile"),
        ("poisson:1:2:3", "unknown load profile"),
        ("concurrency:0", "N >= 1"),
        ("concurrency:-2", "N >= 1"),
        ("concurrency:2.5", "bad load profile"),
        ("concurrency:many", "bad load profile"),
        ("constant:0", "rate above 0"),
        ("constant:-1", "rate above 0"),
        ("constant:nan", "rate above 0"),
        ("constant:inf", "finite rate"),
        ("constant:fast", "bad load profile"),
        ("poisson:0", "rate above 0"),
        ("poisson:inf", "finite rate"),
        ("poisson:2:0", "burstiness"),
        ("poisson:2:-1", "burstiness"),
        ("poisson:2:nan", "burstiness"),
        ("poisson:2:inf", "burstiness"),
        ("poisson:2:", "bad load profile"),
    ],
)
def test_parse_rejects_bad_forms_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        LoadProfile.parse(text)
    assert PROFILE_HELP in str(info.value)  # every error names the accepted forms
    assert repr(text) in str(info.value)


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        LoadProfile.parse("constant:2", max_concurrency=0)


@pytest.mark.parametrize("text", ["sync", "concurrency:4", "sweep"])
def test_only_rate_profiles_have_a_schedule(text: str) -> None:
    with pytest.raises(ValueError, match="no arrival schedule"):
        arrival_offsets(LoadProfile.parse(text), 10)


@pytest.mark.parametrize("text", ["constant:4", "poisson:4", "poisson:4:0.3"])
def test_no_arrivals_for_zero_requests(text: str) -> None:
    assert arrival_offsets(LoadProfile.parse(text), 0) == []


def test_constant_spacing_is_exact() -> None:
    offsets = arrival_offsets(LoadProfile.parse("constant:4"), 9)
    assert offsets == [i * 0.25 for i in range(9)]
    assert arrival_offsets(LoadProfile.parse("constant:3"), 4) == [0.0, 1 / 3, 2 / 3, 1.0]


@pytest.mark.parametrize("text", ["constant:4", "poisson:4", "poisson:4:0.2", "poisson:4:5"])
def test_first_arrival_is_at_zero_and_arrivals_never_go_back(text: str) -> None:
    offsets = arrival_offsets(LoadProfile.parse(text), 500, seed=3)
    assert len(offsets) == 500
    assert offsets[0] == 0.0
    assert all(b >= a for a, b in zip(offsets, offsets[1:], strict=False))


@pytest.mark.parametrize("burstiness", [0.5, 1.0, 2.0])
def test_poisson_mean_gap_is_one_over_the_rate(burstiness: float) -> None:
    rate = 8.0
    offsets = arrival_offsets(LoadProfile("poisson", rate=rate, burstiness=burstiness), 20_001, seed=11)
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)


def test_poisson_is_deterministic_by_seed() -> None:
    profile = LoadProfile.parse("poisson:5:0.7")
    assert arrival_offsets(profile, 200, seed=42) == arrival_offsets(profile, 200, seed=42)
    assert arrival_offsets(profile, 200, seed=42) != arrival_offsets(profile, 200, seed=43)


def _cv(burstiness: float) -> float:
    gaps = np.diff(arrival_offsets(LoadProfile("poisson", rate=10.0, burstiness=burstiness), 5_001, seed=5))
    return float(gaps.std() / gaps.mean())


def test_burstiness_below_one_is_burstier_than_above_one() -> None:
    bursty, poisson, regular = _cv(0.25), _cv(1.0), _cv(4.0)
    assert bursty > poisson > regular
    # gamma gaps with shape k have a coefficient of variation of 1 / sqrt(k)
    assert bursty == pytest.approx(2.0, rel=0.15)
    assert poisson == pytest.approx(1.0, rel=0.1)
    assert regular == pytest.approx(0.5, rel=0.1)
