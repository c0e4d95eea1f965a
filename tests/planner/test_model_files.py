"""Malformed model files (issue 16, item 16): each one is a single `ModelFileError` that names the file and
the field, one `error:` line with exit 2 from `python -m planner recommend`, never a traceback. The Plan
page shows the same message (tests/ui/test_pages_planner.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.__main__ import main
from planner.errors import ModelFileError
from planner.model_files import DEFAULT_MAX_CONFIG_BYTES, model_from_file
from tests.model_file_cases import CASES, LLAMA, Writer, assert_message, config, write_gguf


@pytest.mark.parametrize(("write", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_model_file_is_one_model_file_error(tmp_path: Path, write: Writer, expected: str) -> None:
    path = write(tmp_path)
    with pytest.raises(ModelFileError) as info:
        model_from_file(path)
    assert_message(str(info.value), expected, path)


@pytest.mark.parametrize(("write", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_bad_model_file_is_one_error_line_and_exit_2(
    tmp_path: Path, write: Writer, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path)
    assert main(["recommend", "--model", str(path), "--gpu", "h100-sxm"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert_message(captured.err.removesuffix("\n"), "error: " + expected, path)


SIZE_FIELDS = (
    "num_attention_heads",
    "hidden_size",
    "num_hidden_layers",
    "num_key_value_heads",
    "vocab_size",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
)


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize(
    ("value", "msg"),
    [
        (0, "Input should be greater than 0"),
        (-1, "Input should be greater than 0"),
        (4.5, "Input should be a valid integer"),
        (128.0, "Input should be a valid integer"),
        ("32", "Input should be a valid integer"),
        (True, "Input should be a valid integer"),
        ([32], "Input should be a valid integer"),
    ],
)
def test_every_size_must_be_a_positive_integer(tmp_path: Path, field: str, value: object, msg: str) -> None:
    path = config(LLAMA | {field: value})(tmp_path)
    with pytest.raises(ModelFileError) as info:
        model_from_file(path)
    assert str(info.value) == f"{path}: {field}: {msg}, got {value!r}"


def test_gguf_per_layer_arrays_are_sized_by_the_largest_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenELM-style GGUFs: llama.cpp allows one value per layer. The planner takes the largest and says so."""
    path = write_gguf(
        tmp_path / "varied.gguf",
        **{
            "attention.head_count": [4, 4, 2, 4],
            "attention.head_count_kv": [2, 2, 0, 1],
            "feed_forward_length": [96, 128, 128, 64],
        },
    )
    spec = model_from_file(path)
    assert (spec.n_heads, spec.n_kv_heads, spec.intermediate_size, spec.head_dim) == (4, 2, 128, 16)
    assert spec.notes == (
        "llama.attention.head_count varies by layer (2 to 4): every layer is sized by the largest, so attention "
        "FLOPs is an upper bound (weights are counted exactly from the tensors)",
        "llama.attention.head_count_kv varies by layer (0 to 2): every layer is sized by the largest, so KV-cache "
        "memory is an upper bound (weights are counted exactly from the tensors)",
        "llama.feed_forward_length varies by layer (64 to 128): every layer is sized by the largest, so MLP FLOPs "
        "is an upper bound (weights are counted exactly from the tensors)",
    )
    uniform = model_from_file(write_gguf(tmp_path / "uniform.gguf", **{"attention.head_count_kv": [2, 2, 2, 2]}))
    assert (uniform.n_kv_heads, uniform.notes) == (2, ())

    argv = [
        "recommend",
        "--model",
        str(path),
        "--gpu",
        "h100-sxm",
        "--context",
        "128",
        "--input-tokens",
        "64",
        "--output-tokens",
        "32",
    ]
    assert main(argv) == 0
    assert f"note: {spec.notes[1]}" in capsys.readouterr().out.splitlines()


def test_config_json_is_read_only_up_to_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(LLAMA | {"padding": "x" * 2000})(tmp_path)
    argv = ["recommend", "--model", str(path), "--gpu", "h100-sxm"]
    assert main([*argv, "--max-config-bytes", "1024"]) == 2
    assert capsys.readouterr().err == (
        f"error: {path} is over 1,024 bytes, too big for a config.json (raise --max-config-bytes if it is one)\n"
    )
    assert main([*argv, "--max-config-bytes", "4096"]) == 0

    huge = tmp_path / "huge" / "config.json"
    huge.parent.mkdir()
    with huge.open("wb") as fh:  # sparse: a 1 GiB file costs no disk, and only the first 16 MiB + 1 is read
        fh.truncate(64 * DEFAULT_MAX_CONFIG_BYTES)
    with pytest.raises(ModelFileError, match=r"is over 16,777,216 bytes, too big for a config.json"):
        model_from_file(huge)
