"""The planner's SLO targets: the shipped profiles' limits, the strictest per metric, `chat` by default."""

from __future__ import annotations

import pytest

from planner.errors import UnknownNameError
from planner.slo_targets import DEFAULT_SLO, planner_targets, slo_choices, slo_targets
from planner.workload import RecommendOptions
from reports.slo_profile import SloProfile


def test_the_default_is_the_checklists_chat() -> None:
    assert RecommendOptions(model="llama-3.1-8b").slo == DEFAULT_SLO == "chat"
    chat = slo_targets("chat")
    assert (chat.ttft_ms, chat.ttft_at, chat.tpot_ms, chat.tpot_at, chat.e2e_ms, chat.e2e_at) == (
        500,
        "p95",
        50,
        "p99",
        10_000,
        "p99",
    )
    assert chat.describe() == "TTFT p95 500 ms, TPOT p99 50 ms, E2E p99 10000 ms"
    assert list(slo_choices())[0] == "chat"  # the Plan page's first choice is the default


def test_mlperf_figures_keep_their_names() -> None:
    server = slo_targets("mlperf-llama3.1-8b-server")
    assert (server.ttft_ms, server.tpot_ms, server.e2e_ms) == (2000, 100, None)
    assert "mlperf.conf" in server.source
    assert slo_targets("MLPerf Llama3.1 405B Server").name == "mlperf-llama3.1-405b-server"  # case and spaces


@pytest.mark.parametrize("old", ["interactive", "interactive-small", "large-model", "dialogue", "code-completion"])
def test_names_the_planner_no_longer_offers_are_unknown(old: str) -> None:
    with pytest.raises(UnknownNameError):
        slo_targets(old)


def test_each_metric_is_held_to_its_strictest_limit() -> None:
    profile = SloProfile(
        name="t",
        source="written for this test",
        ttft_p50_ms=300,
        ttft_p99_ms=900,
        tpot_p99_ms=40,
        min_output_tok_s_per_stream=50,  # 20 ms per token at the median
    )
    targets = planner_targets(profile)
    assert (targets.ttft_ms, targets.ttft_at) == (300, "p50")
    assert (targets.tpot_ms, targets.tpot_at) == (20, "p50")
    assert (targets.e2e_ms, targets.e2e_at) == (None, "")
    assert targets.describe() == "TTFT p50 300 ms, TPOT p50 20 ms"
