"""The engine end to end on the bundled model: formats, KV cache, sampling, errors, weight cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import ModelFileError, PromptError, UnsupportedModelError
from engine.model.gguf_file import GGUFModelFile, bundled_model_path
from engine.model.weight_cache import CacheEntry, cache_dir
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=12)


def test_greedy_answer_is_paris(int4: Engine) -> None:
    result = int4.generate("The capital of France is", SamplingParams(max_tokens=4))
    assert result.text.strip().startswith("Paris")
    assert result.prompt_tokens == 5
    assert result.finish_reason == "length"
    assert result.prefill_tok_s is not None and result.decode_tok_s is not None


def test_kv_cache_off_gives_the_same_tokens() -> None:
    # fp32: the bf16 formats' kernels round differently for 1 row than for many, which can
    # flip a near-tie; in fp32 the two paths must agree token for token.
    fp32 = Engine.load(LoadOptions(quant="fp32", device="cpu"))
    prompt = "List three colours:"
    with_cache = fp32.generate(prompt, GREEDY)
    without = fp32.generate(prompt, GREEDY, use_kv_cache=False)
    assert with_cache.token_ids == without.token_ids
    assert not without.kv_cache


def test_stream_deltas_concatenate_to_the_text(int4: Engine) -> None:
    gen = int4.stream("Write a haiku about the sea.", SamplingParams(max_tokens=24), chat=True)
    deltas = list(gen)
    assert gen.result is not None
    assert "".join(deltas) == gen.result.text
    assert gen.result.text == int4.loaded.tokenizer.decode(gen.result.token_ids, skip_special=True)


def test_chat_stops_at_end_of_turn(int4: Engine) -> None:
    result = int4.generate("Say hi.", SamplingParams(max_tokens=200), chat=True)
    assert result.finish_reason == "stop"
    assert "<|im_end|>" not in result.text


def test_seeded_sampling_is_reproducible(int4: Engine) -> None:
    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    a = int4.generate("Tell me a story.", params, chat=True)
    b = int4.generate("Tell me a story.", params, chat=True)
    assert a.token_ids == b.token_ids


def test_stop_string_truncates_and_finishes(int4: Engine) -> None:
    free = int4.generate("Count: 1, 2, 3,", SamplingParams(max_tokens=12))
    assert "," in free.text
    stopped = int4.generate("Count: 1, 2, 3,", SamplingParams(max_tokens=12, stop=(",",)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(",")]


def test_logprobs_are_recorded(int4: Engine) -> None:
    result = int4.generate("Hello", SamplingParams(max_tokens=5, logprobs=True, ignore_eos=True))
    assert result.logprobs is not None and len(result.logprobs) == 5
    assert all(lp <= 0 for lp in result.logprobs)


def test_ignore_eos_runs_to_max_tokens(int4: Engine) -> None:
    result = int4.generate("Say hi.", SamplingParams(max_tokens=40, ignore_eos=True), chat=True)
    assert result.completion_tokens == 40 and result.finish_reason == "length"


def test_empty_prompt_is_a_clear_error(int4: Engine) -> None:
    with pytest.raises(PromptError, match="empty"):
        int4.generate("", GREEDY)


def test_prompt_longer_than_context_is_a_clear_error(int4: Engine) -> None:
    ctx = int4.info.config.context_length
    with pytest.raises(PromptError, match=rf"exceeds the model context of {ctx}"):
        int4.generate("word " * (ctx + 10), GREEDY)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        Engine.load(LoadOptions(model_path=str(tmp_path / "nope.gguf")))


def test_not_a_gguf_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        Engine.load(LoadOptions(model_path=str(bad)))


def test_truncated_gguf_is_a_clear_error(tmp_path: Path) -> None:
    src = bundled_model_path()
    cut = tmp_path / "cut.gguf"
    with src.open("rb") as fh:
        cut.write_bytes(fh.read(src.stat().st_size // 2))
    with pytest.raises(ModelFileError, match="truncated"):
        GGUFModelFile(cut)


def test_wrong_architecture_is_named(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="'mamba'"):
        GGUFModelFile(path)


def test_unknown_format_and_missing_gpu_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown weight format"):
        Engine.load(LoadOptions(quant="int3"))
    if not shutil.which("nvidia-smi"):
        with pytest.raises(ValueError, match="no CUDA GPU"):
            Engine.load(LoadOptions(device="cuda"))


@pytest.mark.slow
def test_weight_cache_warm_load_and_corruption_rebuild(int4: Engine) -> None:
    # The session's int4 fixture (tests/conftest.py) loaded int4 once, so an entry exists now.
    warm = Engine.load(LoadOptions(quant="int4", device="cpu"))
    assert warm.info.source == "cache"
    assert (
        warm.generate("The capital of France is", GREEDY).token_ids
        == int4.generate("The capital of France is", GREEDY).token_ids
    )
    entries = sorted(cache_dir().glob("*-int4-cpu-*.safetensors"))
    assert entries, "no int4 cache entry was written"
    data = bytearray(entries[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle of the tensors
    entries[0].write_bytes(bytes(data))
    rebuilt = Engine.load(LoadOptions(quant="int4", device="cpu"))
    assert rebuilt.info.source == "gguf"
    assert any("rebuilt" in note for note in rebuilt.info.kernel_notes)
    assert CacheEntry.for_key(entries[0].stem).exists()
    again = Engine.load(LoadOptions(quant="int4", device="cpu"))
    assert again.info.source == "cache"


@pytest.mark.parametrize("fmt", ["bf16", "int8", "fp8"])
def test_every_format_answers(fmt: str) -> None:
    engine = Engine.load(LoadOptions(quant=fmt, device="cpu"))
    result = engine.generate("The capital of France is", SamplingParams(max_tokens=3))
    assert "Paris" in result.text
    assert engine.info.weight_bytes > 0
