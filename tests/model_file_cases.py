"""Malformed model files for the planner's tests (issue 16, item 16): each case is a writer of one real
file and the one-line message the CLI and the Plan page must give for it. The GGUFs are written with the
`gguf` package's writer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf

from planner.gguf_meta import MAX_PER_LAYER

LLAMA = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
}
TINY_GGUF = {
    "block_count": 4,
    "embedding_length": 64,
    "attention.head_count": 4,
    "attention.head_count_kv": 2,
    "feed_forward_length": 128,
    "context_length": 256,
    "vocab_size": 100,
}
Writer = Callable[[Path], Path]


def config(content: bytes | str | dict | list) -> Writer:
    """A writer of `<dir>/m/config.json` holding `content` (a dict or list is dumped as JSON)."""

    def write(folder: Path) -> Path:
        path = folder / "m" / "config.json"
        path.parent.mkdir(exist_ok=True)
        data = json.dumps(content) if isinstance(content, dict | list) else content
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    return write


def llama_text(**replace: str) -> Writer:
    """LLAMA as JSON text with some values replaced verbatim (literals json.dumps cannot write)."""
    text = json.dumps(LLAMA)
    for key, literal in replace.items():
        text = text.replace(f'"{key}": {json.dumps(LLAMA[key])}', f'"{key}": {literal}')
    return config(text)


def write_gguf(path: Path, name: bytes | None = None, **meta: object) -> Path:
    """A tensor-less llama GGUF with TINY_GGUF's metadata, overridden by `meta` (None drops a key)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if name is not None:
        writer.add_key_value("general.name", name, gguf.GGUFValueType.STRING)
    for key, value in (TINY_GGUF | meta).items():
        full = f"llama.{key}"
        if isinstance(value, list):
            writer.add_array(full, value)
        elif isinstance(value, float):
            writer.add_float32(full, value)
        elif isinstance(value, int):
            (writer.add_uint32 if value >= 0 else writer.add_int32)(full, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_gguf(name: bytes | None = None, **meta: object) -> Writer:
    return lambda folder: write_gguf(folder / "tiny.gguf", name, **meta)


def raw_gguf(content: bytes) -> Writer:
    def write(folder: Path) -> Path:
        (path := folder / "bad.gguf").write_bytes(content)
        return path

    return write


def truncated_gguf(folder: Path) -> Path:
    path = write_gguf(folder / "cut.gguf")
    path.write_bytes(path.read_bytes()[:60])
    return path


def directory_named_json(folder: Path) -> Path:
    (path := folder / "config.json").mkdir()
    return path


# (id, writer, the message after "error: "; {p} is the file; a trailing "..." matches a prefix)
CASES: list[tuple[str, Writer, str]] = [
    (
        "text-config-null",
        config({"text_config": None}),
        "{p}: lacks num_hidden_layers or n_layer; lacks hidden_size or n_embd; lacks num_attention_heads or n_head "
        "(and 3 more)",
    ),
    ("text-config-list", config({"text_config": [1]}), "{p}: text_config: Input should be a valid dictionary, got [1]"),
    (
        "text-config-heads-0",
        config({"text_config": LLAMA | {"num_attention_heads": 0}}),
        "{p}: text_config.num_attention_heads: Input should be greater than 0, got 0",
    ),
    (
        "heads-0",
        config(LLAMA | {"num_attention_heads": 0}),
        "{p}: num_attention_heads: Input should be greater than 0, got 0",
    ),
    (
        "kv-heads-0",
        config(LLAMA | {"num_key_value_heads": 0}),
        "{p}: num_key_value_heads: Input should be greater than 0, got 0",
    ),
    (
        "head-dim-negative",
        config(LLAMA | {"head_dim": -128}),
        "{p}: head_dim: Input should be greater than 0, got -128",
    ),
    ("1e400", llama_text(hidden_size="1e400"), "{p}: hidden_size: Input should be a valid integer, got inf"),
    (
        "NaN",
        llama_text(num_attention_heads="NaN"),
        "{p}: num_attention_heads: Input should be a valid integer, got nan",
    ),
    ("-Infinity", llama_text(vocab_size="-Infinity"), "{p}: vocab_size: Input should be a valid integer, got -inf"),
    (
        "int-over-int32",
        config(LLAMA | {"num_hidden_layers": 2**31}),
        "{p}: num_hidden_layers: Input should be less than or equal to 2147483647, got 2147483648",
    ),
    (
        "int-over-4300-digits",
        llama_text(vocab_size="1" * 5000),
        "cannot read {p} as a config.json: ValueError: Exceeds the limit (4300 digits)...",
    ),
    ("not-utf8", config(b'{"_name_or_path": "caf\xe9"}'), "{p} is not UTF-8 text (byte 0xe9 at offset 22)"),
    ("json-list", config([LLAMA]), "{p} holds a JSON list, not an object: not a config.json"),
    ("nested-100k", config("[" * 100_000), "cannot read {p} as a config.json: RecursionError: ..."),
    ("not-json", config("not json"), "cannot read {p} as a config.json: Expecting value: line 1 column 1 (char 0)"),
    (
        "bool-as-string",
        config(LLAMA | {"tie_word_embeddings": "yes"}),
        "{p}: tie_word_embeddings: Input should be a valid boolean, got 'yes'",
    ),
    (
        "kv-heads-not-a-divisor",
        config(LLAMA | {"num_key_value_heads": 5}),
        "{p}: model m: 32 heads are not a multiple of 5 KV heads",
    ),
    (
        "head-dim-not-derivable",
        config(LLAMA | {"num_attention_heads": 48}),
        "{p}: hidden_size 4096 is not a multiple of num_attention_heads 48, and head_dim is not given",
    ),
    (
        "experts-per-token-over-experts",
        config(LLAMA | {"num_local_experts": 2, "num_experts_per_tok": 4}),
        "{p}: experts_per_token 4 must be in 1..2",
    ),
    (
        "experts-without-per-token",
        config(LLAMA | {"num_local_experts": 8}),
        "{p}: num_experts_per_tok is needed with 8 experts",
    ),
    (
        "dense-layers-cover-all",
        config(LLAMA | {"num_local_experts": 8, "num_experts_per_tok": 2, "first_k_dense_replace": 32}),
        "{p}: moe_layers must be positive, got 0 (dense layers cover the model)",
    ),
    ("directory", directory_named_json, "model path is not a regular file: {p}"),
    ("gguf-wrong-magic", raw_gguf(b"GGML" + bytes(60)), "{p} is not a GGUF file (magic b'GGML', expected b'GGUF')"),
    ("gguf-truncated", truncated_gguf, "cannot read GGUF file {p}: truncated or corrupt (..."),
    (
        "gguf-heads-0",
        tiny_gguf(**{"attention.head_count": 0}),
        "{p}: llama.attention.head_count: Input should be greater than 0, got 0",
    ),
    (
        "gguf-float-size",
        tiny_gguf(embedding_length=64.0),
        "{p}: llama.embedding_length: Input should be a valid integer, got 64.0",
    ),
    (
        "gguf-block-count-array",
        tiny_gguf(block_count=[4, 4, 4, 4]),
        "{p}: llama.block_count: Input should be a valid integer, got [4, 4, 4, 4]",
    ),
    (
        "gguf-per-layer-wrong-length",
        tiny_gguf(**{"attention.head_count_kv": [2, 2, 2]}),
        "{p}: llama.attention.head_count_kv: 3 per-layer values for 4 blocks, got [2, 2, 2]",
    ),
    (
        "gguf-per-layer-all-0",
        tiny_gguf(**{"attention.head_count_kv": [0, 0, 0, 0]}),
        "{p}: llama.attention.head_count_kv: 0 on every layer, got [0, 0, 0, 0]",
    ),
    (
        "gguf-per-layer-negative",
        tiny_gguf(feed_forward_length=[128, -1, 128, 128]),
        "{p}: llama.feed_forward_length: per-layer value 1: Input should be greater than or equal to 0, "
        "got [128, -1, 128, 128]",
    ),
    (
        "gguf-array-too-long",
        tiny_gguf(feed_forward_length=[128] * (MAX_PER_LAYER + 1)),
        "{p}: llama.feed_forward_length is an array of 65,537 values, not a model size",
    ),
    ("gguf-name-not-utf8", tiny_gguf(name=b"\xff\xfe"), "{p}: cannot decode general.name: 'utf-8' codec ..."),
    (
        "gguf-no-vocab",
        tiny_gguf(vocab_size=None),
        "{p}: GGUF metadata lacks llama.vocab_size and tokenizer.ggml.tokens",
    ),
    ("gguf-experts-without-used", tiny_gguf(expert_count=8), "{p}: llama.expert_used_count is needed with 8 experts"),
]


def assert_message(message: str, expected: str, path: Path) -> None:
    expected = expected.format(p=path)
    if expected.endswith("..."):
        assert message.startswith(expected.removesuffix("...")), message
    else:
        assert message == expected
