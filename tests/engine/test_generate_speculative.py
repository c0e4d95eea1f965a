"""`python -m engine generate --speculative`: the request runs through the server's batch engine with speculation.

On the CPU an fp32 target rounds the same for 1 and k + 1 rows, so greedy speculation must print
token for token what plain `generate` prints, through the same stop strings, end-of-sequence and
chat template; --json and stderr say how speculation went. Bad values and combinations are one
`error:` line, before any weights load. Every run is eager (no compiled package is built here).
"""

from __future__ import annotations

import json
import re

import pytest

from engine.cli import main

FP32 = ["generate", "--quant", "fp32", "--device", "cpu", "--eager"]
CHAT = [*FP32, "--chat", "--prompt", "Say hi.", "--max-tokens", "40"]
REPEAT = [
    *FP32,
    "--prompt",
    "Repeat after me: one two three four five, one two three four five, one two three",
    "--max-tokens",
    "16",
    "--ignore-eos",
]
SAME = ("text", "token_ids", "finish_reason", "prompt_tokens", "completion_tokens")


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# End-of-sequence ends the chat reply; " creative" stops it inside a run of accepted drafts.
@pytest.mark.parametrize("stop", [[], ["--stop", " creative"]], ids=["eos", "stop-string"])
def test_greedy_draft_speculation_gives_the_targets_tokens_and_its_figures(
    capsys: pytest.CaptureFixture[str], stop: list[str]
) -> None:
    plain = run_json(capsys, [*CHAT, *stop])
    spec = run_json(capsys, [*CHAT, *stop, "--speculative", "draft:int4"])
    assert {k: spec[k] for k in SAME} == {k: plain[k] for k in SAME}
    assert spec["finish_reason"] == "stop" and (" creative" not in spec["text"] or not stop)
    assert plain["speculative"] is None
    figures = spec["speculative"]
    assert figures["method"] == "draft:int4" and figures["num_speculative_tokens"] == 4
    assert 0 < figures["num_accepted"] <= figures["num_proposed"]
    assert figures["acceptance_rate"] == figures["num_accepted"] / figures["num_proposed"]
    assert figures["tokens_per_target_step"] == 1 + figures["num_accepted"] / figures["num_verify_steps"]


def test_ngram_streams_the_same_text_and_says_how_speculation_went(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    assert main(REPEAT) == 0
    plain_out, _ = capsys.readouterr()
    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler: the default runs eager and says why, once
    assert main([*(a for a in REPEAT if a != "--eager"), "--speculative", "ngram"]) == 0
    out, err = capsys.readouterr()
    assert out == plain_out
    eager = [line for line in err.splitlines() if line.startswith("eager decode: ")]
    assert len(eager) == 1 and "C++ compiler" in eager[0], err
    spec = [line for line in err.splitlines() if line.startswith("speculative ")]
    assert len(spec) == 1, err
    assert re.fullmatch(r"speculative ngram k=4: acceptance \d+%, \d\.\d tokens per target step", spec[0]), spec


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--speculative", "ngram", "--no-kv-cache"],
            "error: --no-kv-cache cannot go with --speculative: drafts are verified against the KV cache; "
            "drop one of them",
        ),
        (["--speculative", "draft:int3"], "error: speculative: unknown draft weight format 'int3'"),
        (["--speculative", "eagle"], "error: speculative: unknown speculative method 'eagle'"),
        (
            ["--speculative", "draft:int4", "--num-speculative-tokens", "17"],
            "error: num_speculative_tokens: Input should be less than or equal to 16",
        ),
    ],
    ids=["no-kv-cache", "draft-format", "method", "k"],
)
def test_bad_speculation_is_one_error_line(capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    assert main([*FP32, "--prompt", "Hi", "--max-tokens", "2", *flags]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(message), err
