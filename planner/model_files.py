"""A ModelSpec from a file: a Hugging Face `config.json`, or a GGUF file's metadata.

Every way a file can be wrong ends as one `ModelFileError` naming the file and the field: the field
rules are the schemas in planner.hf_config and planner.gguf_meta, and this module turns what they
refuse, and what cannot be read at all, into that error. A config.json is read only up to
`max_config_bytes`. The GGUF path reads metadata and tensor shapes with the `gguf` package (llama.cpp's
reader, memory-mapped), so the parameter count is exact, nothing is dequantized and tensor data is
never read. The planner does not import the bundled engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from planner.errors import ModelFileError
from planner.gguf_meta import MAX_PER_LAYER, GgufShape
from planner.hf_config import MISSING_WORDS, HfConfig, HfWrapper
from planner.model_spec import ModelSpec, build_model_spec

GGUF_MAGIC = b"GGUF"
DEFAULT_MAX_CONFIG_BYTES = 16 * 2**20  # real config.json files are a few KiB; this bounds memory and parse time
# What the gguf reader raises on a truncated or corrupt file (it checks little itself).
GGUF_READ_ERRORS = (ValueError, IndexError, OSError, KeyError, TypeError, OverflowError, MemoryError)


def _build(p: Path, fields: dict[str, Any], params_total: int | None = None) -> ModelSpec:
    try:
        return build_model_spec(fields, params_total=params_total)
    except ValueError as exc:  # the cross-field rules of ModelSpec and MoeSpec
        raise ModelFileError(f"{p}: {exc}") from exc


def _read_json_object(p: Path, max_bytes: int) -> dict[str, Any]:
    try:
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ModelFileError(f"cannot open {p}: {exc.strerror}") from exc
    if len(data) > max_bytes:
        raise ModelFileError(
            f"{p} is over {max_bytes:,} bytes, too big for a config.json (raise --max-config-bytes if it is one)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{p} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"cannot read {p} as a config.json: {exc}") from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep; an integer literal over 4300 digits
        raise ModelFileError(f"cannot read {p} as a config.json: {type(exc).__name__}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelFileError(f"{p} holds a JSON {type(raw).__name__}, not an object: not a config.json")
    return raw


def model_from_hf_config(
    path: str | os.PathLike[str], model_id: str | None = None, max_bytes: int = DEFAULT_MAX_CONFIG_BYTES
) -> ModelSpec:
    """Read a transformers `config.json` (Llama, Mistral, Qwen2, Mixtral, DeepSeek-V3 style)."""
    p = Path(path).expanduser()
    raw = _read_json_object(p, max_bytes)
    try:
        inner = HfWrapper.model_validate(raw).text_config
    except ValidationError as exc:
        raise ModelFileError.from_validation(p, exc) from exc
    prefix = "text_config." if inner is not None else ""
    try:
        cfg = HfConfig.model_validate(raw if inner is None else inner, context={"prefix": prefix})
    except ValidationError as exc:
        raise ModelFileError.from_validation(p, exc, prefix, MISSING_WORDS) from exc
    name = cfg.name_or_path or p.parent.name or "custom model"
    try:
        shape = cfg.spec_fields()
    except ValueError as exc:
        raise ModelFileError(f"{p}: {exc}") from exc
    return _build(p, shape | {"id": model_id or p.parent.name or "custom", "name": name, "source": str(p)})


def _gguf_reader(p: Path) -> Any:
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot open {p}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{p} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        return GGUFReader(p, "r")
    except GGUF_READ_ERRORS as exc:
        raise ModelFileError(f"cannot read GGUF file {p}: truncated or corrupt ({exc})") from exc


def _gguf_value(p: Path, reader: Any, key: str) -> Any:
    """One metadata value as Python, None when absent; a long array is refused before it is decoded."""
    field = reader.fields.get(key)
    if field is None:
        return None
    if len(field.data) > MAX_PER_LAYER:
        raise ModelFileError(f"{p}: {key} is an array of {len(field.data):,} values, not a model size")
    try:
        return field.contents()
    except GGUF_READ_ERRORS as exc:  # UnicodeDecodeError is a ValueError
        raise ModelFileError(f"{p}: cannot decode {key}: {exc}") from exc


def model_from_gguf(path: str | os.PathLike[str], model_id: str | None = None) -> ModelSpec:
    """Read shape and exact parameter count from GGUF metadata and tensor shapes."""
    p = Path(path).expanduser()
    reader = _gguf_reader(p)
    arch = _gguf_value(p, reader, "general.architecture")
    if not arch or not isinstance(arch, str):
        raise ModelFileError(f"{p}: GGUF metadata lacks general.architecture (a string)")
    keys = [f.alias for f in GgufShape.model_fields.values()]
    meta = {k: v for k in keys if (v := _gguf_value(p, reader, f"{arch}.{k}")) is not None}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    token_count = len(tokens.data) if tokens is not None else 0
    if "vocab_size" not in meta and not token_count:
        raise ModelFileError(f"{p}: GGUF metadata lacks {arch}.vocab_size and tokenizer.ggml.tokens")
    try:
        shape = GgufShape.model_validate(meta, context={"arch": arch})
    except ValidationError as exc:
        raise ModelFileError.from_validation(p, exc, f"{arch}.") from exc
    tensors = {t.name for t in reader.tensors}
    name = _gguf_value(p, reader, "general.name")
    fields = {"id": model_id or p.stem.lower(), "name": str(name or p.stem), "source": str(p)}
    try:
        fields |= shape.spec_fields(arch, tensors, token_count)
    except ValueError as exc:
        raise ModelFileError(f"{p}: {exc}") from exc
    counted = sum(int(t.n_elements) for t in reader.tensors)
    return _build(p, fields, params_total=counted or None)


def model_from_file(path: str | os.PathLike[str], max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES) -> ModelSpec:
    """GGUF by magic or a .gguf name (so a wrong magic says so), else a config.json."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelFileError(f"model path is not a regular file: {p}")
    try:
        with p.open("rb") as fh:
            is_gguf = fh.read(4) == GGUF_MAGIC
    except OSError as exc:
        raise ModelFileError(f"cannot open {p}: {exc.strerror}") from exc
    if is_gguf or p.suffix.lower() == ".gguf":
        return model_from_gguf(p)
    return model_from_hf_config(p, max_bytes=max_config_bytes)
