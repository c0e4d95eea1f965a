"""The closed-loop replay: the bundled engine's own scheduler driven pass by pass with a priced clock.

The prices here are plain numbers (a pass costs a fixed part, a part per decoding sequence and a part
per prompt token), so every expected figure is a sum written out by hand."""

from __future__ import annotations

import math

import pytest

from planner.entrypoints import predict_one
from planner.predict_io import PredictOptions
from planner.replay import STEADY_WAVES, ReplayLimits, replay_closed_loop

FIXED, PER_SEQ, PER_TOKEN = 0.010, 0.002, 0.001


class Price:
    """A pass of `b` decodes and `p` prompt tokens, and a record of every kind of pass priced (the replay
    prices each kind once)."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, float]] = []

    def __call__(self, b: int, p: float = 0.0) -> float:
        self.passes.append((b, p))
        return FIXED + PER_SEQ * b + PER_TOKEN * p


def passes(b: int = 0, p: int = 0) -> float:
    return FIXED + PER_SEQ * b + PER_TOKEN * p


def test_one_client_is_one_prompt_pass_then_plain_decode_steps() -> None:
    r = replay_closed_loop(Price(), ReplayLimits(16, 512, 256), 1, 100, 10, requests=3)
    assert r.ttft_s == pytest.approx(passes(0, 100))
    assert r.tpot_s == pytest.approx(passes(1))
    e2e = passes(0, 100) + 9 * passes(1)
    assert r.e2e_s == pytest.approx(e2e)
    assert r.output_tok_s == pytest.approx(3 * 10 / (3 * e2e))
    assert r.requests == 3 and r.mean_batch == pytest.approx(1.0)


def test_a_long_prompt_is_chunked_by_the_per_sequence_cap() -> None:
    r = replay_closed_loop(Price(), ReplayLimits(16, 512, 256), 1, 600, 2, requests=1)
    assert r.ttft_s == pytest.approx(passes(0, 256) + passes(0, 256) + passes(0, 88))


def test_the_opening_burst_shares_passes_up_to_the_token_budget() -> None:
    """Five 128-token prompts sent together: four fill the first 512-token pass, the fifth waits for it."""
    price = Price()
    r = replay_closed_loop(price, ReplayLimits(16, 512, 256), 5, 128, 4, requests=5)
    assert price.passes[0] == (0, 512)
    assert price.passes[1] == (4, 128)  # the first four decode beside the fifth prompt
    assert r.ttft_s == pytest.approx(passes(0, 512))  # the median of 4 x first pass and 1 x two passes


def test_requests_returning_to_an_idle_engine_split_and_the_first_runs_alone() -> None:
    """Two clients end together; the first to come back starts a pass alone and the other waits for it,
    as measured on the bundled engine at concurrency 2 (TTFT pairs of about 270 and 530 ms)."""
    price = Price()
    replay_closed_loop(price, ReplayLimits(16, 512, 256), 2, 100, 3, requests=4)
    prompt_passes = [p for _, p in price.passes if p]
    assert prompt_passes == [200, 100, 100]  # the opening pair together, then one by one


def test_more_clients_than_slots_wait_for_a_slot() -> None:
    r = replay_closed_loop(Price(), ReplayLimits(1, 512, 256), 2, 100, 5, requests=2)
    first = passes(0, 100) + 4 * passes(1)
    assert r.e2e_s == pytest.approx((first + 2 * first) / 2)  # the second starts when the first ends


def test_the_steady_state_leaves_the_opening_wave_out() -> None:
    r = replay_closed_loop(Price(), ReplayLimits(16, 512, 256), 3, 100, 8)
    assert r.requests == 3 * (STEADY_WAVES - 1)


@pytest.mark.parametrize(("clients", "prompt", "output"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_an_empty_replay_is_refused(clients: int, prompt: int, output: int) -> None:
    with pytest.raises(ValueError, match="at least one"):
        replay_closed_loop(Price(), ReplayLimits(16, 512, 256), clients, prompt, output)


def test_predict_replays_the_bundled_engine_and_says_so() -> None:
    """`predict` for the bundled engine with a batch goes through the replay, the assumptions name it, and
    `--requests` predicts that benchmark (opening burst included) rather than the steady state."""
    base = PredictOptions(
        model="smollm2-135m", gpu="cpu", engine="bundled", format="int4", max_num_seqs=16, concurrency=16,
        input_tokens=158, output_tokens=64,
    )  # fmt: skip
    steady = predict_one(base)
    burst = predict_one(base.model_copy(update={"requests": 40}))
    assert steady.assumptions["closed_loop"] == "replayed"
    assert "512 tokens per pass, 256 per prompt chunk" in str(steady.assumptions["ttft"])
    assert steady.assumptions["max_num_batched_tokens"] == 512
    assert str(burst.assumptions["ttft"]).endswith("40 requests")
    assert str(steady.assumptions["ttft"]).endswith("steady state after the first wave")
    assert (burst.e2e_ms, burst.output_tok_s) != (steady.e2e_ms, steady.output_tok_s)
    assert math.isclose(steady.output_tok_s, steady.request_s * 64, rel_tol=1e-9)
    one_at_a_time = predict_one(base.model_copy(update={"max_num_seqs": None}))
    assert one_at_a_time.assumptions["closed_loop"] == "analytic"  # `generate`: no batching to replay


def test_a_replay_too_long_to_step_through_falls_back_to_the_analytic_model() -> None:
    big = PredictOptions(
        model="smollm2-135m", gpu="cpu", engine="bundled", format="int4", max_num_seqs=1024, concurrency=1024,
        input_tokens=128, output_tokens=1024,
    )  # fmt: skip
    assert predict_one(big).assumptions["closed_loop"] == "analytic"


def test_a_pass_time_spread_is_seeded_and_keeps_each_pass_at_its_price_on_average() -> None:
    """With a spread, the pooled replays give the same figures on every call, and one stream's TPOT stays
    at the decode pass's price: the scatter has mean 1, so a calibrated price keeps meaning the mean."""
    limits = ReplayLimits(16, 512, 256)
    one = replay_closed_loop(Price(), limits, 1, 100, 64, requests=20, spread=0.1)
    assert one == replay_closed_loop(Price(), limits, 1, 100, 64, requests=20, spread=0.1)
    assert one.tpot_s == pytest.approx(passes(1), rel=0.01)
    assert one.requests == 20
    with pytest.raises(ValueError, match="spread"):
        replay_closed_loop(Price(), limits, 1, 100, 64, requests=20, spread=-0.1)


def test_a_spread_mixes_the_two_ttft_modes_of_two_clients() -> None:
    """Two clients: a request's first token comes after its own prompt pass (about 0.15 s here) or after
    its partner's and its own (about 0.27 s). Exact prices lock the run so that the median lands on the
    upper mode's edge; scattered ones, as a machine's are, move requests between the modes and put the
    pooled median between them, as measured runs do (docs/BENCHMARKS.md, "Planner calibration")."""
    limits = ReplayLimits(16, 512, 256)
    exact = replay_closed_loop(Price(), limits, 2, 128, 64, requests=40)
    scattered = replay_closed_loop(Price(), limits, 2, 128, 64, requests=40, spread=0.1)
    own, after_partner = passes(0, 128), passes(0, 128) + passes(1, 128)
    assert after_partner - 0.02 < exact.ttft_s <= after_partner  # the upper mode
    assert own + 0.05 < scattered.ttft_s < exact.ttft_s - 0.01
    assert scattered.output_tok_s == pytest.approx(exact.output_tok_s, rel=0.01)


def test_one_clients_first_token_waits_for_the_servers_intake() -> None:
    """A request reaches the scheduler one intake after it is sent (the opening one too, unless sent beside
    others): at one stream the intake adds to TTFT and to each request's cycle, nothing else."""
    intake = 0.004
    plain = replay_closed_loop(Price(), ReplayLimits(16, 512, 256), 1, 100, 10, requests=3)
    slow = replay_closed_loop(Price(), ReplayLimits(16, 512, 256), 1, 100, 10, requests=3, ingest_s=intake)
    assert slow.ttft_s == pytest.approx(plain.ttft_s + intake)
    assert slow.tpot_s == pytest.approx(plain.tpot_s)
    assert slow.e2e_s == pytest.approx(plain.e2e_s + intake)


TOGETHER = [(0, 200), (2, 100), (3, 0), (1, 0)]  # the kinds of pass priced, in first-seen order
SPLIT = [*TOGETHER, (0, 100), (1, 199), (2, 1), (2, 0)]


@pytest.mark.parametrize(("intake", "kinds"), [(0.0, TOGETHER), (0.005, TOGETHER), (0.008, SPLIT)])
def test_requests_sent_together_reach_the_scheduler_one_intake_apart(intake: float, kinds: list) -> None:
    """Three clients, room for two prompts a pass: the opening burst splits 2 + 1, so the pair ends one
    decode pass (12 ms here) before the third. The pair's next requests are sent together and taken in one
    at a time: if both are in before the third's last pass ends they share the next prompt pass (as at
    intake 0 and 5 ms: no new kind of pass); at 8 ms the first runs alone (0, 100) and the second joins the
    third's next request (199 tokens beside the first's decode: the budget is 200), and the cohorts change
    (measured on the bundled engine at concurrency 4: 3 + 1 drifting to 2 + 2 and 1 + 3)."""
    price = Price()
    replay_closed_loop(price, ReplayLimits(16, 200, 256), 3, 100, 3, requests=6, ingest_s=intake)
    assert price.passes == kinds
