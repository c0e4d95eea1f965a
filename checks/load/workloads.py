"""Workloads: the prompts a load test sends, as `PromptRequest`s.

Three kinds, one request type:

- synthetic (here): random text of an exact token length, run to a set output
  length with `ignore_eos`;
- prompt files (`checks.load.datasets`): JSONL of prompts or chat messages, and ShareGPT;
- built-in scenarios (`checks.load.scenarios`): prompts the project ships, each
  scenario with its latency targets.

Prefix-cache honesty: a server with prefix caching serves a repeated opening
from cache, which flatters TTFT. Synthetic prompts therefore differ from their
very first token, unless a shared prefix is asked for on purpose; then exactly
`shared_prefix_len` tokens are shared and the next token differs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Literal

from checks.load.datasets import DatasetError, PromptDataset, load_dataset, load_jsonl, load_sharegpt
from checks.load.prompts import Conversation, PromptRequest
from checks.load.scenarios import SCENARIOS, Scenario, scenario_requests
from checks.load.tokenizer import TextTokenizer, bundled_tokenizer

__all__ = [
    "DISTRIBUTIONS",
    "SCENARIOS",
    "DatasetError",
    "PromptDataset",
    "PromptRequest",
    "Scenario",
    "SyntheticSpec",
    "bundled_tokenizer",
    "load_dataset",
    "load_jsonl",
    "load_sharegpt",
    "scenario_requests",
    "prompts_of_lengths",
    "synthetic_conversations",
    "synthetic_requests",
]

Distribution = Literal["fixed", "uniform", "normal"]
DISTRIBUTIONS: tuple[str, ...] = ("fixed", "uniform", "normal")
# decode -> encode rounds for one prompt; one or two are usually enough.
MAX_FIT_ROUNDS = 16
# fresh first tokens tried for one prompt before keeping the nearest length found.
MAX_FIT_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """Random prompts of `input_len` tokens, each run to `output_len` tokens.

    A distribution other than "fixed" draws each length around its mean:
    "uniform" within ±range_ratio of it, "normal" with standard deviation
    range_ratio × mean; lengths are clipped to at least 1 (and the input to
    more than `shared_prefix_len`). `seed` fixes lengths and text.
    """

    input_len: int
    output_len: int
    _: KW_ONLY  # the two lengths read naturally in order; every other option is named
    input_dist: Distribution = "fixed"
    output_dist: Distribution = "fixed"
    range_ratio: float = 0.0
    shared_prefix_len: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for field, value in (("input_len", self.input_len), ("output_len", self.output_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} is {value!r}: give a whole number of tokens, at least 1")
        for field, dist in (("input_dist", self.input_dist), ("output_dist", self.output_dist)):
            if dist not in DISTRIBUTIONS:
                raise ValueError(f"{field} is {dist!r}: choose one of {', '.join(DISTRIBUTIONS)}")
        if not 0.0 <= self.range_ratio <= 1.0:
            raise ValueError(f"range_ratio is {self.range_ratio}: give a fraction from 0 to 1 (0.1 spreads by 10 %)")
        spread = [f for f, d in (("input_dist", self.input_dist), ("output_dist", self.output_dist)) if d != "fixed"]
        if spread and self.range_ratio == 0:
            raise ValueError(f"{spread[0]} spreads lengths by range_ratio: set range_ratio above 0, or use 'fixed'")
        if not spread and self.range_ratio > 0:
            raise ValueError(
                f"range_ratio={self.range_ratio} has no effect on fixed lengths: "
                "set input_dist or output_dist to 'uniform' or 'normal', or range_ratio to 0"
            )
        if isinstance(self.shared_prefix_len, bool) or not isinstance(self.shared_prefix_len, int):
            raise ValueError(f"shared_prefix_len is {self.shared_prefix_len!r}: give a whole number of tokens")
        if not 0 <= self.shared_prefix_len < self.input_len:
            raise ValueError(
                f"shared_prefix_len is {self.shared_prefix_len}: give 0 (no sharing) up to input_len - 1 "
                f"({self.input_len - 1}), so that every prompt keeps tokens of its own"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed is {self.seed!r}: give a whole number")

    def length_bounds(self, which: Literal["input", "output"]) -> tuple[int, int | None]:
        """The smallest and largest length a request can get (None: no upper bound, "normal")."""
        mean, dist = (self.input_len, self.input_dist) if which == "input" else (self.output_len, self.output_dist)
        floor = self.shared_prefix_len + 1 if which == "input" else 1
        if dist == "fixed":
            return max(floor, mean), max(floor, mean)
        if dist == "uniform":
            low, high = _uniform_range(mean, self.range_ratio)
            return max(floor, low), max(floor, high)
        return floor, None


def _uniform_range(mean: int, ratio: float) -> tuple[int, int]:
    return math.floor(mean * (1 - ratio)), math.ceil(mean * (1 + ratio))


def _sample_length(rng: random.Random, mean: int, dist: str, ratio: float, floor: int) -> int:
    if dist == "uniform":
        length = rng.randint(*_uniform_range(mean, ratio))
    elif dist == "normal":
        length = round(rng.gauss(mean, ratio * mean))
    else:
        length = mean
    return max(floor, length)


@dataclass(frozen=True, slots=True)
class TokenFitter:
    """Turns random token ids into text that re-encodes to an exact number of tokens."""

    tokenizer: TextTokenizer
    pool: tuple[int, ...]  # normal (non-special) ids only
    rng: random.Random

    def draw(self, count: int) -> list[int]:
        return [self.rng.choice(self.pool) for _ in range(count)]

    def fit(self, ids: list[int], length: int, accept: Callable[[list[int]], bool]) -> tuple[str, list[int]] | None:
        """Decode, re-encode, then trim or extend, until `length` tokens come back.

        Decoding and re-encoding merges neighbours ("the" + "re" -> "there")
        and can spell a special token out of plain pieces, so the count is
        checked on the re-encoded ids. Returns the exact fit, else the nearest
        acceptable one, else None.
        """
        special = self.tokenizer.special_token_ids
        best: tuple[str, list[int]] | None = None
        for _ in range(MAX_FIT_ROUNDS):
            text = self.tokenizer.decode(ids)
            encoded = self.tokenizer.encode(text)
            if encoded and special.isdisjoint(encoded):
                if not accept(encoded):
                    return best  # the opening changed, and later rounds keep it: start over instead
                if len(encoded) == length:
                    return text, encoded
                if best is None or abs(len(best[1]) - length) > abs(len(encoded) - length):
                    best = text, encoded
            cleaned = [self.rng.choice(self.pool) if t in special else t for t in encoded]
            ids = cleaned[:length] + self.draw(length - len(cleaned))
        return best


def normal_ids(tokenizer: TextTokenizer) -> tuple[int, ...]:
    pool = tuple(i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_token_ids)
    if not pool:
        raise ValueError(f"tokenizer {tokenizer.name} has no normal tokens to build synthetic prompts from")
    return pool


def stable_ids(fitter: TokenFitter, length: int) -> list[int]:
    """`length` token ids whose text re-encodes to themselves; [] for 0 (a shared prefix, a trace's block)."""
    if length == 0:
        return []
    best: list[int] = []
    for _ in range(MAX_FIT_ATTEMPTS):
        found = fitter.fit(fitter.draw(length), length, accept=lambda _ids: True)
        if found is not None and (not best or abs(len(found[1]) - length) < abs(len(best) - length)):
            best = found[1]
        if len(best) == length:
            break
    if not best:
        raise ValueError(f"could not build {length} self-consistent tokens with tokenizer {fitter.tokenizer.name}")
    return best


def _first_tokens(pool: tuple[int, ...], rng: random.Random) -> Iterator[int]:
    order = list(pool)
    rng.shuffle(order)
    return iter(order)


def synthetic_requests(spec: SyntheticSpec, n: int, tokenizer: TextTokenizer) -> list[PromptRequest]:
    """`n` random prompts of `spec`'s lengths, counted with `tokenizer`; same spec, same prompts.

    Each prompt's token at position `shared_prefix_len` (the first token when
    nothing is shared) differs from every other prompt's, so no two prompts
    share a cacheable prefix beyond the one asked for. `input_tokens` is the
    real count, which equals the drawn length unless no exact fit was found.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n is {n!r}: ask for at least 1 request")
    length_rng = random.Random(f"lengths:{spec.seed}")
    lengths = [
        (
            _sample_length(length_rng, spec.input_len, spec.input_dist, spec.range_ratio, spec.shared_prefix_len + 1),
            _sample_length(length_rng, spec.output_len, spec.output_dist, spec.range_ratio, 1),
        )
        for _ in range(n)
    ]
    return prompts_of_lengths(lengths, tokenizer, seed=spec.seed, shared_prefix_len=spec.shared_prefix_len)


def synthetic_conversations(
    spec: SyntheticSpec, sessions: int, turns: int, tokenizer: TextTokenizer
) -> list[Conversation]:
    """`sessions` conversations of `turns` synthetic user messages each, every message of `spec`'s lengths.

    The history each later turn carries is the server's answers, so turn k's
    prompt grows by roughly (input + output) x (k - 1) tokens.
    """
    if turns < 1:
        raise ValueError(f"turns is {turns}: a conversation has at least 1 turn")
    prompts = synthetic_requests(spec, sessions * turns, tokenizer)
    return [
        Conversation(
            tuple((p.prompt or "", p.max_tokens) for p in prompts[i * turns : (i + 1) * turns]),
            ignore_eos=True,
            source=f"session#{i}",
        )
        for i in range(sessions)
    ]


def prompts_of_lengths(
    lengths: list[tuple[int, int]],
    tokenizer: TextTokenizer,
    *,
    seed: int = 0,
    shared_prefix_len: int = 0,
    source: str = "synthetic",
) -> list[PromptRequest]:
    """One random prompt per (input tokens, output tokens) pair, run to its output length with `ignore_eos`.

    The lengths come from a distribution (`synthetic_requests`) or a recorded
    trace (`checks.load.traces`); the prompts follow one rule either way: they
    share exactly `shared_prefix_len` tokens and differ right after.
    """
    pool = normal_ids(tokenizer)
    fitter = TokenFitter(tokenizer, pool, random.Random(f"tokens:{seed}"))
    prefix = stable_ids(fitter, shared_prefix_len)
    cut = len(prefix)  # the position that must differ between prompts
    firsts = _first_tokens(pool, fitter.rng)
    used: set[int] = set()

    def accept(ids: list[int]) -> bool:
        return len(ids) > cut and ids[:cut] == prefix and ids[cut] not in used

    requests = []
    for index, (input_len, output_len) in enumerate(lengths):
        best: tuple[str, list[int]] | None = None
        for _ in range(MAX_FIT_ATTEMPTS):
            first = next(firsts, None)
            if first is None:
                raise ValueError(
                    f"cannot start {len(lengths)} prompts with distinct tokens: tokenizer {tokenizer.name} has "
                    f"{len(pool)} normal tokens; ask for fewer requests"
                )
            start = [*prefix, first]
            found = fitter.fit(start + fitter.draw(max(0, input_len - len(start))), input_len, accept)
            if found is not None and (best is None or abs(len(found[1]) - input_len) < abs(len(best[1]) - input_len)):
                best = found
            if best is not None and len(best[1]) == input_len:
                break
        if best is None:
            raise ValueError(f"could not build {source} prompt {index} with tokenizer {tokenizer.name}")
        text, ids = best
        used.add(ids[cut])
        requests.append(
            PromptRequest(
                prompt=text,
                messages=None,
                max_tokens=output_len,
                input_tokens=len(ids),
                ignore_eos=True,
                source=f"{source}#{index}",
            )
        )
    return requests
