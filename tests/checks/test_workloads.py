"""Workloads: synthetic prompts of exact token lengths, prompt files, built-in scenarios.

Token counts are checked with the bundled SmolLM2 tokenizer, the one the
bundled engine serves with. A character-level fake tokenizer, written here,
plants the case the bundled one makes rare: plain pieces that spell a special
token once decoded and joined.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from statistics import mean

import pytest

from checks.load.benchmark import BenchmarkConfig, build_workload
from checks.load.datasets import DatasetError, load_sharegpt_conversations
from checks.load.tokenizer import ChatTokenizer, TextTokenizer, count_tokens
from checks.load.workloads import (
    SCENARIOS,
    PromptRequest,
    SyntheticSpec,
    bundled_tokenizer,
    load_dataset,
    load_jsonl,
    load_sharegpt,
    scenario_requests,
    synthetic_conversations,
    synthetic_requests,
)


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return bundled_tokenizer()


class CharTokenizer:
    """One id per character, except "<s>", which is a special token matched whole."""

    name = "chars"
    pieces = ("<s>", "<", "s", ">", "a", "b", " ")
    vocab_size = len(pieces)
    special_token_ids = frozenset({0})

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            if text.startswith("<s>", i):
                ids.append(0)
                i += 3
            else:
                ids.append(self.pieces.index(text[i]))
                i += 1
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- synthetic ---------------------------------------------------------------------


def test_bundled_tokenizer_is_a_chat_tokenizer(tok: TextTokenizer) -> None:
    assert isinstance(tok, ChatTokenizer)
    assert tok.name == "SmolLM2-135M-Instruct.Q4_1"
    assert bundled_tokenizer() is tok
    assert count_tokens(tok, None, [{"role": "user", "content": "hi"}]) > len(tok.encode("hi"))


@pytest.mark.parametrize("input_len", [1, 2, 17, 128, 700])
def test_fixed_lengths_are_exact(tok: TextTokenizer, input_len: int) -> None:
    requests = synthetic_requests(SyntheticSpec(input_len, 33), 6, tok)
    assert [r.source for r in requests] == [f"synthetic#{i}" for i in range(6)]
    for r in requests:
        assert r.prompt is not None and r.messages is None
        assert len(tok.encode(r.prompt)) == r.input_tokens == input_len
        assert r.max_tokens == 33
        assert r.ignore_eos


@pytest.mark.parametrize("dist", ["uniform", "normal"])
def test_distributions_stay_in_bounds(tok: TextTokenizer, dist: str) -> None:
    spec = SyntheticSpec(60, 40, input_dist=dist, output_dist=dist, range_ratio=0.5, seed=7)
    requests = synthetic_requests(spec, 120, tok)
    inputs = [len(tok.encode(r.prompt or "")) for r in requests]
    outputs = [r.max_tokens for r in requests]
    assert inputs == [r.input_tokens for r in requests]
    for lengths, which, mean_len in ((inputs, "input", 60), (outputs, "output", 40)):
        low, high = spec.length_bounds(which)
        assert min(lengths) >= low >= 1
        assert high is None or max(lengths) <= high
        assert len(set(lengths)) > 10  # really spread
        assert abs(mean(lengths) - mean_len) < 0.15 * mean_len
    if dist == "uniform":
        assert spec.length_bounds("input") == (30, 90)


def test_same_seed_same_prompts(tok: TextTokenizer) -> None:
    spec = SyntheticSpec(50, 20, input_dist="uniform", range_ratio=0.2, seed=11)
    first = synthetic_requests(spec, 10, tok)
    assert synthetic_requests(spec, 10, tok) == first
    other = synthetic_requests(SyntheticSpec(50, 20, input_dist="uniform", range_ratio=0.2, seed=12), 10, tok)
    assert [r.prompt for r in other] != [r.prompt for r in first]


def test_prompts_differ_from_the_first_token(tok: TextTokenizer) -> None:
    requests = synthetic_requests(SyntheticSpec(24, 8), 80, tok)
    firsts = [tok.encode(r.prompt or "")[0] for r in requests]
    assert len(set(firsts)) == len(firsts)


@pytest.mark.parametrize("input_dist", ["fixed", "uniform"])
def test_shared_prefix_is_identical_then_differs(tok: TextTokenizer, input_dist: str) -> None:
    ratio = 0.3 if input_dist == "uniform" else 0.0
    spec = SyntheticSpec(40, 8, input_dist=input_dist, range_ratio=ratio, shared_prefix_len=24, seed=3)
    encoded = [tok.encode(r.prompt or "") for r in synthetic_requests(spec, 30, tok)]
    assert len({tuple(ids[:24]) for ids in encoded}) == 1
    assert len({ids[24] for ids in encoded}) == len(encoded)
    if input_dist == "fixed":
        assert {len(ids) for ids in encoded} == {40}


def test_no_special_tokens_in_synthetic_prompts(tok: TextTokenizer) -> None:
    for r in synthetic_requests(SyntheticSpec(300, 8), 20, tok):
        assert tok.special_token_ids.isdisjoint(tok.encode(r.prompt or ""))


def test_special_tokens_spelled_by_plain_pieces_are_replaced() -> None:
    chars = CharTokenizer()
    requests = synthetic_requests(SyntheticSpec(400, 4), 4, chars)
    for r in requests:
        ids = chars.encode(r.prompt or "")
        assert 0 not in ids
        assert len(ids) == r.input_tokens == 400
    assert len({chars.encode(r.prompt or "")[0] for r in requests}) == 4


def test_too_many_requests_for_distinct_first_tokens() -> None:
    with pytest.raises(ValueError, match="has 6 normal tokens; ask for fewer requests"):
        synthetic_requests(SyntheticSpec(5, 4), 7, CharTokenizer())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_len": 0}, "input_len is 0: give a whole number of tokens"),
        ({"output_len": 2.5}, "output_len is 2.5"),
        ({"input_dist": "zipf"}, "input_dist is 'zipf': choose one of fixed, uniform, normal"),
        ({"output_dist": "normal"}, "output_dist spreads lengths by range_ratio: set range_ratio above 0"),
        ({"range_ratio": 0.2}, "range_ratio=0.2 has no effect on fixed lengths"),
        ({"input_dist": "uniform", "range_ratio": 1.5}, "range_ratio is 1.5: give a fraction from 0 to 1"),
        ({"shared_prefix_len": 10}, r"shared_prefix_len is 10: give 0 \(no sharing\) up to input_len - 1 \(9\)"),
        ({"shared_prefix_len": -1}, "shared_prefix_len is -1"),
    ],
)
def test_synthetic_spec_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticSpec(**{"input_len": 10, "output_len": 5, **kwargs})


def test_synthetic_needs_at_least_one_request(tok: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="n is 0: ask for at least 1 request"):
        synthetic_requests(SyntheticSpec(5, 5), 0, tok)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": None, "messages": None}, "exactly one of prompt"),
        ({"messages": ({"role": "user", "content": "x"},)}, "exactly one of prompt"),
        ({"prompt": ""}, "the prompt is empty"),
        ({"max_tokens": 0}, "max_tokens is 0: ask for at least 1"),
    ],
)
def test_prompt_request_rejects_bad_values(kwargs: dict, message: str) -> None:
    base = {"prompt": "hi", "messages": None, "max_tokens": 4, "input_tokens": None, "ignore_eos": False}
    with pytest.raises(ValueError, match=message):
        PromptRequest(**{**base, **kwargs, "source": "test"})


# -- JSONL ---------------------------------------------------------------------------


def test_jsonl_reads_prompts_and_messages(tmp_path: Path, tok: TextTokenizer) -> None:
    lines = [
        json.dumps({"prompt": "Tell me a joke."}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}),
        "   ",
        json.dumps({"prompt": "Count to ten.", "max_tokens": 12}),
    ]
    path = write(tmp_path / "prompts.jsonl", "\n".join(lines) + "\n")
    dataset = load_jsonl(path, default_max_tokens=64, tokenizer=tok)
    assert dataset.format == "jsonl" and dataset.skipped == 0
    first, chat, last = dataset.requests
    assert [r.source for r in dataset.requests] == [
        "jsonl:prompts.jsonl#1",
        "jsonl:prompts.jsonl#3",
        "jsonl:prompts.jsonl#5",
    ]
    assert first.prompt == "Tell me a joke." and first.max_tokens == 64 and not first.ignore_eos
    assert first.input_tokens == len(tok.encode("Tell me a joke."))
    assert chat.is_chat and chat.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    )
    assert chat.input_tokens == count_tokens(tok, None, chat.messages)
    assert last.max_tokens == 12
    untokenized = load_jsonl(path, default_max_tokens=64)
    assert [r.input_tokens for r in untokenized.requests] == [None, None, None]
    assert len(load_jsonl(path, 64, limit=2).requests) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "unclosed', "not valid JSON"),
        ('["a list"]', "expected a JSON object with 'prompt' or 'messages', got list"),
        ('{"prompt": "x", "temperature": 0.7}', "temperature: Extra inputs are not permitted"),
        ('{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "give exactly one of 'prompt'"),
        ('{"max_tokens": 5}', "give exactly one of 'prompt'"),
        ('{"messages": [{"role": "robot", "content": "y"}]}', "messages.0.role"),
        ('{"messages": []}', "messages: List should have at least 1 item"),
        ('{"prompt": "x", "max_tokens": 0}', "max_tokens: Input should be greater than or equal to 1"),
        ('{"prompt": "x", "max_tokens": "10"}', "max_tokens: Input should be a valid integer"),
        ('{"prompt": ""}', "prompt: String should have at least 1 character"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "bad.jsonl", '{"prompt": "fine"}\n\n' + line + "\n")
    with pytest.raises(DatasetError, match=message) as caught:
        load_jsonl(path, default_max_tokens=16)
    assert str(caught.value).startswith(f"{path}:3: ")


def test_jsonl_without_prompts_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="has no prompts"):
        load_jsonl(write(tmp_path / "blank.jsonl", "\n  \n"), default_max_tokens=16)


# -- ShareGPT ------------------------------------------------------------------------

SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "It is 4."}]},
    {
        "id": "b",
        "conversations": [
            {"from": "system", "value": "You are terse."},
            {"from": "human", "value": "Name a colour."},
            {"from": "gpt", "value": "Blue, a calm colour often linked with the sky and the sea."},
            {"from": "human", "value": "Another?"},
        ],
    },
    {"id": "c", "conversations": [{"from": "gpt", "value": "Hello! How can I help?"}]},
    {"id": "d", "conversations": []},
    {"id": "e", "model": "gpt-4", "conversations": [{"from": "human", "value": "No reply here."}]},
]


def test_sharegpt_takes_the_first_human_turn(tmp_path: Path, tok: TextTokenizer) -> None:
    path = write(tmp_path / "share.json", json.dumps(SHAREGPT))
    dataset = load_sharegpt(path, default_max_tokens=50, tokenizer=tok)
    assert dataset.format == "sharegpt" and dataset.skipped == 2
    assert [r.prompt for r in dataset.requests] == ["What is 2+2?", "Name a colour.", "No reply here."]
    assert [r.source for r in dataset.requests] == [
        "sharegpt:share.json#0",
        "sharegpt:share.json#1",
        "sharegpt:share.json#4",
    ]
    assert [r.max_tokens for r in dataset.requests] == [
        len(tok.encode("It is 4.")),
        len(tok.encode("Blue, a calm colour often linked with the sky and the sea.")),
        50,
    ]
    assert dataset.requests[0].input_tokens == len(tok.encode("What is 2+2?"))
    assert all(not r.ignore_eos for r in dataset.requests)


def test_sharegpt_without_tokenizer_uses_the_default(tmp_path: Path) -> None:
    path = write(tmp_path / "share.json", json.dumps(SHAREGPT))
    dataset = load_sharegpt(path, default_max_tokens=50)
    assert {r.max_tokens for r in dataset.requests} == {50}
    assert {r.input_tokens for r in dataset.requests} == {None}
    assert len(load_sharegpt(path, 50, max_conversations=1).requests) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"conversations": []}, "ShareGPT is a JSON array of conversations, got dict"),
        (
            [{"conversations": [{"from": "human", "value": "x"}]}, {"conversations": [{"from": "human"}]}],
            "conversation 1: conversations.0.value: Field required",
        ),
        ([{"id": "x"}], "conversation 0: conversations: Field required"),
        (
            [{"conversations": [{"from": "gpt", "value": "only a reply"}]}],
            "none of its 1 conversations has a human turn",
        ),
    ],
)
def test_sharegpt_errors(tmp_path: Path, content: object, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_sharegpt(write(tmp_path / "share.json", json.dumps(content)), default_max_tokens=8)


# -- sniffing and files ----------------------------------------------------------------


def test_load_dataset_tells_formats_apart(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "a.txt", '\n{"prompt": "one"}\n{"prompt": "two"}\n')
    sharegpt = write(tmp_path / "b.txt", "  \n" + json.dumps(SHAREGPT))
    assert load_dataset(jsonl, 8).format == "jsonl"
    assert len(load_dataset(jsonl, 8).requests) == 2
    assert load_dataset(sharegpt, 8).format == "sharegpt"
    assert len(load_dataset(sharegpt, 8, limit=2).requests) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prompt,max_tokens\nhello,4\n", "neither ShareGPT .* nor JSONL .*: it starts with 'p'"),
        ("  \n\n", "is empty"),
    ],
)
def test_load_dataset_rejects_other_content(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_dataset(write(tmp_path / "data.csv", text), 8)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="prompt file not found: .*nope.jsonl: check the path"):
        load_dataset(tmp_path / "nope.jsonl", 8)
    with pytest.raises(DatasetError, match="is not a file"):
        load_jsonl(tmp_path, 8)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        load_jsonl(tmp_path / "latin1.jsonl", 8)
    with pytest.raises(ValueError, match="default_max_tokens is 0"):
        load_dataset(tmp_path / "nope.jsonl", 0)


# -- scenarios -------------------------------------------------------------------------

TTFT_TARGETS_MS = {"dialogue": 200, "search": 100, "translation": 500, "code_completion": 50}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_loads_with_its_targets(name: str, tok: TextTokenizer) -> None:
    scenario = SCENARIOS[name]
    assert scenario.name == name and scenario.description
    assert scenario.ttft_target_ms == TTFT_TARGETS_MS.get(name, scenario.ttft_target_ms) > 0
    assert scenario.tpot_target_ms is None or scenario.tpot_target_ms > 0
    shipped = load_jsonl(scenario.prompts_file, scenario.output_len, tok).requests
    assert len(shipped) >= 20
    assert len({r.prompt or json.dumps(r.messages) for r in shipped}) == len(shipped)
    requests = scenario_requests(name, len(shipped) + 5, tok, seed=0)
    assert len(requests) == len(shipped) + 5
    assert all(r.source.startswith(f"scenario:{name}#") for r in requests)
    assert all(r.input_tokens and r.max_tokens == scenario.output_len and not r.ignore_eos for r in requests)
    first_pass = {r.source for r in requests[: len(shipped)]}
    assert len(first_pass) == len(shipped)  # every prompt once before any repeats


def test_scenario_prompt_kinds() -> None:
    assert all(r.is_chat for r in scenario_requests("dialogue", 20))
    assert any(len(r.messages or ()) > 2 for r in scenario_requests("dialogue", 20))
    assert not any(r.is_chat for r in scenario_requests("code_completion", 20))


def test_summarization_prompts_are_long(tok: TextTokenizer) -> None:
    scenario = SCENARIOS["summarization"]
    assert scenario.ttft_target_ms > max(TTFT_TARGETS_MS.values())
    for r in load_jsonl(scenario.prompts_file, scenario.output_len, tok).requests:
        assert r.input_tokens is not None and r.input_tokens >= 1000


def test_scenario_shuffle_follows_the_seed() -> None:
    order = [r.source for r in scenario_requests("search", 20, seed=1)]
    assert [r.source for r in scenario_requests("search", 20, seed=1)] == order
    assert [r.source for r in scenario_requests("search", 20, seed=2)] != order


def test_unknown_scenario_lists_the_names() -> None:
    names = "dialogue, search, translation, code_completion, summarization"
    with pytest.raises(ValueError, match=f"unknown scenario 'chat': choose one of {names}"):
        scenario_requests("chat", 3)
    with pytest.raises(ValueError, match="n is 0"):
        scenario_requests("search", 0)


def test_jsonl_keeps_line_separators_inside_strings(tmp_path: Path) -> None:
    """U+2028, U+2029 and U+0085 are legal inside JSON strings; only '\\n' ends a JSONL line (issue 16, item 10)."""
    prompts = ["one\u2028two", "three\u2029four", "five\u0085six"]
    path = tmp_path / "seps.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\r\n" for p in prompts), encoding="utf-8")
    assert [r.prompt for r in load_dataset(path, 8).requests] == prompts


def test_deeply_nested_lines_are_a_dataset_error(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text('{"prompt": "ok"}\n{"prompt": ' + deep + "}\n")
    with pytest.raises(DatasetError, match=r"deep.jsonl:2: JSON nested too deeply"):
        load_dataset(jsonl, 8)
    sharegpt = tmp_path / "deep.json"
    sharegpt.write_text(deep)
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_dataset(sharegpt, 8)


def test_a_benchmark_reads_only_the_prompts_it_sends(tmp_path: Path, tok: TextTokenizer) -> None:
    """A bad line after the last prompt a run needs is never parsed, so it cannot stop the run."""
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(5)) + "{broken\n")
    config = BenchmarkConfig(target="http://127.0.0.1:9", dataset=str(path), requests=3, warmup_requests=2)
    workload = build_workload(config, tok)
    assert [r.prompt for r in workload.requests] == [f"prompt {i}" for i in range(5)]
    assert "5 prompts" in workload.description
    with pytest.raises(DatasetError, match="long.jsonl:6: not valid JSON"):
        build_workload(config.model_copy(update={"requests": 10}), tok)


# ---- multi-turn sessions (issue 20) -------------------------------------------------------------


def test_sharegpt_conversations_take_human_turns_in_order(tmp_path: Path, tok: TextTokenizer) -> None:
    path = tmp_path / "multi.json"
    convo = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "one"},
        {"from": "gpt", "value": "reply one"},
        {"from": "human", "value": "two"},
        {"from": "human", "value": "three"},
        {"from": "gpt", "value": "reply three"},
        {"from": "human", "value": "  "},
        {"from": "human", "value": "after an empty turn"},
    ]
    path.write_text(json.dumps([{"conversations": convo}, {"conversations": [{"from": "gpt", "value": "x"}]}]))
    (found,) = load_sharegpt_conversations(path, 8, 33, tok)
    assert [text for text, _ in found.turns] == ["one", "two", "three"]  # stops at the empty turn
    assert [n for _, n in found.turns] == [len(tok.encode("reply one")), 33, len(tok.encode("reply three"))]
    assert found.source == "sharegpt:multi.json#0" and not found.ignore_eos
    (two,) = load_sharegpt_conversations(path, 2, 33, tok)
    assert len(two.turns) == 2
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "hi"}\n')
    with pytest.raises(DatasetError, match="multi-turn sessions come from a ShareGPT file"):
        load_sharegpt_conversations(jsonl, 2, 8, tok)


def test_synthetic_conversations_are_groups_of_distinct_prompts(tok: TextTokenizer) -> None:
    conversations = synthetic_conversations(SyntheticSpec(12, 3), 2, 3, tok)
    assert [len(c.turns) for c in conversations] == [3, 3]
    texts = [text for c in conversations for text, _ in c.turns]
    assert len(set(texts)) == 6 and all(n == 3 for c in conversations for _, n in c.turns)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"turns": 2, "scenario": "dialogue"}, "synthetic prompts or a ShareGPT file"),
        ({"turns": 2, "api": "completions"}, "use the chat API"),
        ({"turns": 2, "profile": "sweep"}, "give multi-turn sessions a concurrency or a rate"),
        ({"think_time_ms": 100}, "set turns above 1"),
    ],
)
def test_session_config_mistakes_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(target="http://127.0.0.1:9", **fields)
