"""The engine's GGUF reader refuses odd metadata by name (issue 16, item 16's engine side)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ModelFileError
from engine.model.gguf_file import GGUFModelFile
from tests.model_file_cases import write_gguf


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"attention.head_count_kv": [2, 2, 1, 1]}, "llama.attention.head_count_kv is a per-layer array (4 values)"),
        ({"feed_forward_length": [128, 128, 256, 256]}, "llama.feed_forward_length is a per-layer array"),
        ({"attention.head_count": 0}, "llama.attention.head_count must be a positive integer, found 0"),
        ({"block_count": -3}, "llama.block_count must be a positive integer, found -3"),
        ({"embedding_length": 1.5}, "llama.embedding_length must be a positive integer, found 1.5"),
        ({"attention.head_count": 3}, "hidden size 64 is not divisible by 3 heads"),
        ({"context_length": None}, "GGUF metadata lacks llama.context_length"),
    ],
)
def test_bad_sizes_are_one_model_file_error(tmp_path: Path, meta: dict, message: str) -> None:
    path = write_gguf(tmp_path / "odd.gguf", **meta)
    with pytest.raises(ModelFileError) as info:
        GGUFModelFile(path)
    assert message in str(info.value)


def test_a_uniform_tiny_file_reads(tmp_path: Path) -> None:
    config = GGUFModelFile(write_gguf(tmp_path / "tiny.gguf")).config
    assert (config.n_layers, config.n_heads, config.n_kv_heads, config.head_dim) == (4, 4, 2, 16)
