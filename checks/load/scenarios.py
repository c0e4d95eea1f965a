"""Built-in scenarios: realistic prompts the project ships, each with the latency targets of its use.

TTFT targets are the ones inference-optimization guides give per use:
dialogue 200 ms, search 100 ms, translation 500 ms, code completion 50 ms.
TPOT targets follow how the output is consumed: text a person reads as it
streams needs about 10 tokens/s or more (100 ms), a completion shown in the
editor must finish while the user waits (30 ms). The prompts live as JSONL
under checks/load/data/scenarios/ and load through `checks.load.datasets.load_jsonl`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from checks.load.datasets import load_jsonl
from checks.load.prompts import PromptRequest
from checks.load.tokenizer import TextTokenizer

DATA_DIR = Path(__file__).parent / "data" / "scenarios"


@dataclass(frozen=True, slots=True)
class Scenario:
    """One use of an LLM: its prompts, output length and latency targets."""

    name: str
    description: str
    ttft_target_ms: float
    tpot_target_ms: float | None  # None: output is used whole, so only E2E matters
    output_len: int  # max_tokens of each request unless its prompt line sets one
    prompts_file: Path


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "dialogue",
            "Chat assistant: multi-turn conversations with a system prompt, answers streamed to a reader.",
            ttft_target_ms=200.0,
            tpot_target_ms=100.0,
            output_len=256,
            prompts_file=DATA_DIR / "dialogue.jsonl",
        ),
        Scenario(
            "search",
            "Search answer: a short query with retrieved passages, answered in a few sentences.",
            ttft_target_ms=100.0,
            tpot_target_ms=100.0,
            output_len=128,
            prompts_file=DATA_DIR / "search.jsonl",
        ),
        Scenario(
            "translation",
            "Translation: sentences and short paragraphs into another language; the result is used whole.",
            ttft_target_ms=500.0,
            tpot_target_ms=None,
            output_len=128,
            prompts_file=DATA_DIR / "translation.jsonl",
        ),
        Scenario(
            "code_completion",
            "Code completion: a source-file prefix, completed inline in the editor.",
            ttft_target_ms=50.0,
            tpot_target_ms=30.0,
            output_len=64,
            prompts_file=DATA_DIR / "code_completion.jsonl",
        ),
        Scenario(
            "summarization",
            "Long-context summarisation: 1,500-3,000-token reports and meeting notes, summarised in a paragraph.",
            # Prefill grows with the input, so no interactive target fits a long document.
            # 2 s is for these ~2,000-token inputs (about 1 ms per input token); scale it
            # with the input length when using other documents.
            ttft_target_ms=2000.0,
            tpot_target_ms=100.0,
            output_len=256,
            prompts_file=DATA_DIR / "summarization.jsonl",
        ),
    )
}


def scenario_requests(name: str, n: int, tokenizer: TextTokenizer | None = None, seed: int = 0) -> list[PromptRequest]:
    """`n` requests from scenario `name`'s shipped prompts, shuffled by `seed`.

    When `n` exceeds the prompts shipped, each further pass is shuffled anew,
    but the prompts repeat: a server with prefix caching serves a repeat from
    cache, and the `source` (scenario:name#line) shows which ones repeated.
    """
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise ValueError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n is {n!r}: ask for at least 1 request")
    dataset = load_jsonl(scenario.prompts_file, scenario.output_len, tokenizer)
    rng = random.Random(f"scenario:{name}:{seed}")
    requests: list[PromptRequest] = []
    while len(requests) < n:
        order = list(dataset.requests)
        rng.shuffle(order)
        requests.extend(order[: n - len(requests)])
    return [replace(r, source=f"scenario:{name}#{r.source.rsplit('#', 1)[1]}") for r in requests]
