"""Draft-model speculative decoding on the real model: fp32 target, the same file in int4 drafting.

Greedy output must equal the target alone token for token. Under sampling the
output distribution must equal the target's: a chi-square test on next-token
frequencies over thousands of seeded draws does not reject that at p = 0.01 for
the engine's acceptance rule, and does reject it for deliberately wrong rules
(the test has the power to see a wrong rule on these very distributions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch
from server_harness import in_process_server

from checks.load.targets import wait_healthy
from engine.batch.batch_engine import BatchConfig, BatchEngine
from engine.batch.draft_verifier import accept_by_rejection
from engine.batch.speculative_method import SpeculativeMethod, parse_speculative
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams, draw, token_probs
from engine.serving.app import create_app
from engine.serving.options import ServerOptions
from engine.serving.state import load_draft
from tests.engine.batch_helpers import run_until_done

PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    ",
    "Once upon a time there was a little robot who",
    "Repeat after me: one two three four five, one two three four five, one two three",
]
GREEDY = SamplingParams(max_tokens=20, ignore_eos=True)
SIGNIFICANCE = 0.01
EVAL_TEXT = Path(__file__).resolve().parents[2] / "engine" / "data" / "eval.txt"


@pytest.fixture(scope="module")
def target() -> Engine:
    return Engine.load(LoadOptions(quant="fp32", device="cpu"))


@pytest.fixture(scope="module")
def draft(int4: Engine):  # noqa: ANN201 - LoadedModel; the session's int4 engine is the draft
    return int4.loaded


def chi_square(counts: Counter[int], probs: dict[int, float], draws: int) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; outcomes expected fewer than 5 times share one bin."""
    expected = {t: draws * p for t, p in probs.items() if draws * p >= 5}
    observed_rest = draws - sum(counts[t] for t in expected)
    expected_rest = draws - sum(expected.values())
    stat = sum((counts[t] - e) ** 2 / e for t, e in expected.items())
    bins = len(expected)
    if expected_rest > 1e-9:
        stat += (observed_rest - expected_rest) ** 2 / expected_rest
        bins += 1
    elif observed_rest:
        return float("inf"), max(bins - 1, 1)  # outcomes the target can never produce
    return stat, bins - 1


def chi_square_p_value(stat: float, dof: int) -> float:
    """Survival function of the chi-square distribution: the regularized upper incomplete gamma Q(k/2, x/2)."""
    if stat == float("inf"):
        return 0.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2)))


# ---- greedy: token for token ---------------------------------------------------------------


# k = 8 (the longest drafts and rollbacks) here; k = 4 under preemption and in the server, k = 2 sampled end to end.
@pytest.mark.parametrize("k", [8])
def test_greedy_output_is_identical_to_the_target_alone(target: Engine, draft, k: int) -> None:  # noqa: ANN001
    # Small prefill chunks: the draft catches up on the prompts over several steps, in chunks.
    config = BatchConfig(max_num_seqs=4, max_num_batched_tokens=64, prefill_chunk_size=8, speculative_tokens=k)
    llm = BatchEngine(target.loaded, config, draft)
    penalised = SamplingParams(max_tokens=20, ignore_eos=True, repetition_penalty=1.3)
    requests = {llm.add_request(target.encode_prompt(p), GREEDY): (p, GREEDY) for p in PROMPTS}
    requests[llm.add_request(target.encode_prompt(PROMPTS[2]), penalised)] = (PROMPTS[2], penalised)
    outputs = run_until_done(llm, list(requests))
    for seq_id, (prompt, params) in requests.items():
        assert outputs[seq_id] == target.generate(prompt, params).token_ids, (prompt, params)
    stats = llm.kv_stats()
    assert stats.spec_acceptance_rate is not None and stats.spec_acceptance_rate > 0.5
    assert llm.scheduler.block_manager.usage == 0.0
    assert stats.kv_cache_bytes == llm.cache.nbytes + llm.draft_model.nbytes


def test_ngram_verification_applies_the_repetition_penalty(target: Engine) -> None:
    """Greedy verification picks as the sampler does, penalty included, whoever drafted (draft_verifier.py)."""
    params = SamplingParams(max_tokens=24, ignore_eos=True, repetition_penalty=1.3)
    llm = BatchEngine(target.loaded, BatchConfig(speculative_tokens=4))
    seq_id = llm.add_request(target.encode_prompt(PROMPTS[3]), params)
    assert run_until_done(llm, [seq_id])[seq_id] == target.generate(PROMPTS[3], params).token_ids


def test_greedy_stays_exact_when_preempted(target: Engine, draft) -> None:  # noqa: ANN001
    """A tiny shared pool: sequences lose their blocks, the draft forgets them and starts over."""
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    block_bytes = 2 * (2 * 30 * 16 * 3 * 64 * 4)  # target + draft block: K+V, 30 layers, 16 tokens, 3 KV heads, fp32
    config = BatchConfig(max_num_seqs=4, max_model_len=64, kv_cache_bytes=5 * block_bytes, speculative_tokens=4)
    llm = BatchEngine(target.loaded, config, draft)
    assert llm.scheduler.config.num_kv_blocks == 5
    ids = {llm.add_request(target.encode_prompt(p), params): p for p in PROMPTS[:3]}
    outputs = run_until_done(llm, list(ids))
    assert llm.scheduler.num_preemptions > 0
    for seq_id, prompt in ids.items():
        assert outputs[seq_id] == target.generate(prompt, params).token_ids, prompt


# ---- sampling: the acceptance rule on real distributions -----------------------------------------

SAMPLED = SamplingParams(temperature=0.5, top_k=20)
DRAWS_PER_POSITION = 6000


@pytest.fixture(scope="module")
def captured(target: Engine, draft) -> list[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    """(target p, draft q) next-token distributions at the 3 positions of the evaluation text where they differ most.

    Most by chi-square divergence, among positions where both keep the same 20 tokens, so a
    wrong rule shows by frequencies rather than by a token the target never gives. Both are
    restricted to that support: the rule only reads probabilities, so this is the same draw
    on a short vector, and cheap.
    """
    ids = target.encode_prompt(EVAL_TEXT.read_text(encoding="utf-8")[:4000])[:600]
    x = torch.tensor([ids])
    with torch.inference_mode():
        p = token_probs(target.loaded.model(x, 0, None, last_only=False)[0], SAMPLED)
        q = token_probs(draft.model(x, 0, None, last_only=False)[0], SAMPLED)
    same_support = ((p > 0) == (q > 0)).all(-1)  # so a wrong rule shows by frequencies, not impossible tokens
    distance = torch.where(same_support, ((q - p) ** 2 / p.clamp_min(1e-30)).sum(-1), 0.0)
    pairs = []
    for pos in distance.topk(3).indices.tolist():
        support = (p[pos] > 0).nonzero().flatten()
        pairs.append((p[pos, support].double(), q[pos, support].double()))
    return pairs


Rule = Callable[[int, torch.Tensor, torch.Tensor, torch.Generator], int]


def engine_rule(x: int, p: torch.Tensor, q: torch.Tensor, gen: torch.Generator) -> int:
    return accept_by_rejection([x], q[None], torch.stack([p, p]), gen)[0]


def always_accept(x: int, p: torch.Tensor, q: torch.Tensor, gen: torch.Generator) -> int:
    return x


def accept_with_target_probability(x: int, p: torch.Tensor, q: torch.Tensor, gen: torch.Generator) -> int:
    """Keeps x with probability p(x) instead of min(1, p(x) / q(x)); the residual step is right."""
    if float(torch.rand(1, dtype=torch.float64, generator=gen)) < float(p[x]):
        return x
    return draw((p - q).clamp_min(0.0), gen)


def _first_token_test(pairs: list[tuple[torch.Tensor, torch.Tensor]], rule: Rule) -> float:
    """p-value of "the first emitted token follows the target", over every captured position (stats summed)."""
    total_stat, total_dof = 0.0, 0
    for i, (p, q) in enumerate(pairs):
        gen = torch.Generator().manual_seed(1000 + i)
        counts = Counter(rule(draw(q, gen), p, q, gen) for _ in range(DRAWS_PER_POSITION))
        stat, dof = chi_square(counts, dict(enumerate(p.tolist())), DRAWS_PER_POSITION)
        total_stat, total_dof = total_stat + stat, total_dof + dof
    return chi_square_p_value(total_stat, total_dof)


def test_the_acceptance_rule_keeps_the_target_distribution(captured) -> None:  # noqa: ANN001
    assert _first_token_test(captured, engine_rule) >= SIGNIFICANCE


@pytest.mark.parametrize("rule", [always_accept, accept_with_target_probability], ids=lambda r: r.__name__)
def test_the_same_test_rejects_a_wrong_rule(captured, rule: Rule) -> None:  # noqa: ANN001
    assert _first_token_test(captured, rule) < SIGNIFICANCE


def test_chi_square_p_value_matches_known_quantiles() -> None:
    assert chi_square_p_value(6.634897, 1) == pytest.approx(0.01, abs=1e-6)
    assert chi_square_p_value(23.209251, 10) == pytest.approx(0.01, abs=1e-6)
    assert chi_square_p_value(9.341818, 10) == pytest.approx(0.5, abs=1e-6)


# ---- sampling end to end: the engine's joint distribution of four tokens -----------------------


def test_sampled_output_follows_the_target_end_to_end(target: Engine, draft) -> None:  # noqa: ANN001
    """Two hundred seeded requests through BatchEngine (k = 2), one batch: the first 4 tokens' joint frequencies.

    The first token comes from the prompt's step, the next three from one speculative
    step (2 drafts and a bonus) or more. Expected: the product of the target's own
    conditionals, computed with full forwards outside the engine.
    """
    params = SamplingParams(max_tokens=4, temperature=1.0, top_k=2, ignore_eos=True)
    prompt = target.encode_prompt("My favourite fruit is")
    requests = 200
    config = BatchConfig(max_num_seqs=200, max_num_batched_tokens=1024, max_queue=requests, speculative_tokens=2)
    llm = BatchEngine(target.loaded, config, draft)
    seq_ids = [llm.add_request(prompt, replace(params, seed=seed)) for seed in range(requests)]
    outputs = run_until_done(llm, seq_ids)
    counts = Counter(tuple(outputs[s]) for s in seq_ids)
    assert all(len(t) == 4 for t in counts)
    assert llm.kv_stats().spec_acceptance_rate is not None

    def probs_after(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return token_probs(target.loaded.model(torch.tensor([ids]), 0, None)[0, -1], params)

    frontier: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(4):
        nxt = {}
        for prefix, mass in frontier.items():
            probs = probs_after(prompt + list(prefix))
            for tok in probs.nonzero().flatten().tolist():
                nxt[(*prefix, tok)] = mass * float(probs[tok])
        frontier = nxt
    expected = frontier
    assert set(counts) <= set(expected), "the engine produced a sequence the target gives probability 0"
    index = {seq: i for i, seq in enumerate(expected)}
    stat, dof = chi_square(
        Counter({index[s]: n for s, n in counts.items()}), {index[s]: p for s, p in expected.items()}, requests
    )
    assert chi_square_p_value(stat, dof) >= SIGNIFICANCE


# ---- the flag and the server -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "method"),
    [
        ("none", SpeculativeMethod("none")),
        ("ngram", SpeculativeMethod("ngram")),
        ("draft:int4", SpeculativeMethod("draft", "int4")),
        (" draft:fp8-e5m2 ", SpeculativeMethod("draft", "fp8-e5m2")),
    ],
)
def test_speculative_values_parse(text: str, method: SpeculativeMethod) -> None:
    assert parse_speculative(text) == method
    assert str(method) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("draft:int3", "unknown draft weight format 'int3'"),
        ("draft:", "unknown draft weight format ''"),
        ("eagle", "unknown speculative method 'eagle'"),
    ],
)
def test_nonsense_speculative_values_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_speculative(text)
    with pytest.raises(ValueError, match=message):
        ServerOptions(speculative=text)


def test_a_draft_in_the_targets_own_format_shares_its_weights(target: Engine) -> None:
    assert load_draft(ServerOptions(quant="fp32", speculative="draft:fp32"), target.loaded) is target.loaded
    assert load_draft(ServerOptions(quant="fp32", speculative="ngram"), target.loaded) is None


def test_server_with_a_draft_model_is_exact_and_reports_acceptance(target: Engine) -> None:
    """`serve --quant fp32 --speculative draft:int4` in process: the load thread adds the int4 draft."""
    prompt = PROMPTS[2]
    expected = target.generate(prompt, GREEDY).text
    options = ServerOptions(
        quant="fp32", speculative="draft:int4", num_speculative_tokens=4, device="cpu", compile=False
    )
    app = create_app(options, load=lambda: target)
    with in_process_server(app, options) as (base, thread):
        alive = lambda: None if thread.is_alive() else 1  # noqa: E731
        wait_healthy(base, alive, 300, "the in-process server", lambda: "(in-process: see the test output)")
        llm = app.state.server.serving.loop.llm
        assert llm.draft_model is not None and llm.draft_model.draft.fmt == "int4"
        body = {"model": app.state.server.model_name, "prompt": prompt, "max_tokens": GREEDY.max_tokens}
        r = httpx.post(f"{base}/v1/completions", json=body | {"temperature": 0, "ignore_eos": True}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
        rate = next(ln for ln in metrics.splitlines() if ln.startswith("preflight:spec_decode_acceptance_rate"))
        assert float(rate.rsplit(" ", 1)[1]) > 0.5
