"""Building a ready-to-run Transformer in a chosen weight format.

Cold path: read the GGUF, dequantize (or keep the file's blocks as they are:
Q4_1 for int4, Q8_0 for int8 and for the tied table of int8 and int4), fuse
Q/K/V and gate/up, quantize into the target format, and write the result to
the weight cache (a cache that cannot be written is a logged
warning and a note, never a failed load). Warm path: build the model on the `meta` device,
then `load_state_dict(assign=True)` straight from the verified cache entry,
so there is one copy of the weights and no quantization work.

A weights directory (`--weights DIR`, engine/model/weights_dir.py) loads like the warm path,
except that each linear layer is rebuilt from the layout its manifest records (GPTQ int4 at
another group size, low-rank factors) and that a bad directory is an error, not a rebuild.
`save_weights` writes one from a loaded (and compressed) model.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import WeightCacheError, WeightsDirError
from engine.formats import WEIGHT_FORMATS
from engine.model.config import ModelConfig
from engine.model.embedding import Embedding, table_storage
from engine.model.gguf_file import GGUFModelFile, resolve_model_path
from engine.model.tokenizer import Tokenizer
from engine.model.transformer import Transformer
from engine.model.weight_cache import CACHE_VERSION, CacheEntry, entry_key, file_sha256, load_entry, save_entry
from engine.model.weights_dir import PRODUCE_HINT, read_weights_dir, write_weights_dir
from engine.quant.functions import Q41Blocks, Q80Blocks, compute_dtype
from engine.quant.layouts import Layout, empty_from_layout, layout_of
from engine.quant.linear import Q80Linear, QuantLinear, as_float, empty_linear, make_linear, module_weight_bytes

logger = logging.getLogger("preflight.engine")


@dataclass(slots=True)
class LoadedModel:
    """What a load produced, with the evidence the dashboard shows."""

    model: Transformer
    tokenizer: Tokenizer
    config: ModelConfig
    fmt: str
    device: torch.device
    source: str  # "gguf" (cold: converted from the file), "cache" (warm) or "weights" (a weights directory)
    load_s: float
    weight_bytes: int
    gguf_bytes: int
    gguf_path: str
    kernel_notes: list[str] = field(default_factory=list)
    source_sha256: str | None = None  # the GGUF file's SHA-256 (what a saved weights directory is tied to)
    weights_dir: str | None = None  # the directory the weights came from (source "weights")
    recipe: dict[str, Any] | None = None  # that directory's recipe.json: how the weights were made


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but PyTorch sees no CUDA GPU on this machine")
    return torch.device(device)


Source = torch.Tensor | Q41Blocks | Q80Blocks


def _concat(parts: list[Source]) -> Source:
    """Stack weights along the output dim; blocks stay blocks when every part has the same kind."""
    if all(isinstance(p, Q41Blocks) for p in parts):
        return Q41Blocks(
            q=torch.cat([p.q for p in parts]),
            scale=torch.cat([p.scale for p in parts]),
            min=torch.cat([p.min for p in parts]),
        )
    if all(isinstance(p, Q80Blocks) for p in parts):
        return Q80Blocks(q=torch.cat([p.q for p in parts]), scale=torch.cat([p.scale for p in parts]))
    return torch.cat([as_float(p) for p in parts])


def _source_weight(mf: GGUFModelFile, name: str, fmt: str) -> Source:
    """int4 keeps the file's own Q4_1 codes and int8 its Q8_0 blocks; everything else starts from fp32."""
    blocks = mf.q4_1_blocks(name) if fmt == "int4" else mf.q8_0_blocks(name) if fmt == "int8" else None
    return mf.tensor(name) if blocks is None else blocks


def _table_source(mf: GGUFModelFile, fmt: str) -> torch.Tensor | Q80Blocks:
    """The tied table: its Q8_0 blocks when the format stores the table as Q8_0 and the file does too."""
    name = "token_embd.weight"
    blocks = mf.q8_0_blocks(name) if table_storage(fmt, mf.config.hidden_size) == Q80Linear.fmt else None
    return mf.tensor(name) if blocks is None else blocks


def _gguf_linear_sources(mf: GGUFModelFile, fmt: str) -> dict[str, Source]:
    """Map our fused parameter names to their GGUF tensors."""
    sources: dict[str, Source] = {}
    for i in range(mf.config.n_layers):
        blk = f"blk.{i}"
        sources[f"layers.{i}.attention.wqkv"] = _concat(
            [_source_weight(mf, f"{blk}.attn_{x}.weight", fmt) for x in ("q", "k", "v")]
        )
        sources[f"layers.{i}.attention.wo"] = _source_weight(mf, f"{blk}.attn_output.weight", fmt)
        sources[f"layers.{i}.feed_forward.w13"] = _concat(
            [_source_weight(mf, f"{blk}.ffn_{x}.weight", fmt) for x in ("gate", "up")]
        )
        sources[f"layers.{i}.feed_forward.w2"] = _source_weight(mf, f"{blk}.ffn_down.weight", fmt)
    if not mf.config.tied_embeddings:
        sources["output"] = _source_weight(mf, "output.weight", fmt)
    return sources


def _post_load(model: nn.Module) -> None:
    for module in model.modules():
        hook = getattr(module, "post_load", None)
        if callable(hook):
            hook()


def release_freed_memory() -> None:
    """Hand memory freed during conversion back to the OS (glibc keeps it otherwise).

    Repacking int4 on load allocates int32 temporaries; without this the process
    kept ~150 MiB of freed heap after a warm load (bench/engine_speed.py measured it).
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            return  # not glibc: nothing to trim, nothing lost


def _kernel_notes(model: nn.Module) -> list[str]:
    notes = {m.kernel for m in model.modules() if isinstance(getattr(m, "kernel", None), str)}
    return sorted(notes)


def build_from_gguf(mf: GGUFModelFile, fmt: str, device: torch.device) -> Transformer:
    """Convert every weight of the file into `fmt` on `device`."""
    act = compute_dtype(fmt, device)
    sources = _gguf_linear_sources(mf, fmt)
    modules = {name: make_linear(w, fmt, device=str(device)) for name, w in sources.items()}
    del sources
    table = _table_source(mf, fmt)
    table = Q80Blocks(table.q.to(device), table.scale.to(device)) if isinstance(table, Q80Blocks) else table.to(device)
    embedding = Embedding.from_source(table, fmt, act)
    model = Transformer(mf.config, embedding, lambda name, _i, _o: modules.pop(name), act, device)
    with torch.no_grad():
        for i, block in enumerate(model.layers):
            block.attention_norm.weight.copy_(mf.tensor(f"blk.{i}.attn_norm.weight"))
            block.ffn_norm.weight.copy_(mf.tensor(f"blk.{i}.ffn_norm.weight"))
        model.norm.weight.copy_(mf.tensor("output_norm.weight"))
    model.to(device)
    _post_load(model)
    return model.eval()


def build_from_state(
    config: ModelConfig,
    fmt: str,
    state: dict[str, torch.Tensor],
    device: torch.device,
    layouts: Mapping[str, Layout] | None = None,
) -> Transformer:
    """Rebuild on meta with empty modules (the `layouts` given, else the format's), then adopt the tensors."""
    act = compute_dtype(fmt, device)
    embedding = Embedding.empty(config.vocab_size, config.hidden_size, fmt, act, device="meta")

    def empty(name: str, in_features: int, out_features: int) -> QuantLinear:
        if layouts is not None and name in layouts:
            return empty_from_layout(layouts[name], in_features, out_features)
        return empty_linear(_stored_kind(state, name, fmt), in_features, out_features, device="meta")

    model = Transformer(config, embedding, empty, act, device)
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device)
    _post_load(model)
    return model.eval()


def _stored_kind(state: dict[str, torch.Tensor], name: str, fmt: str) -> str:
    """The storage a cached layer was converted to: a 3-D weight is Q8_0 (int8 keeps Q8_0 source tensors)."""
    weight = state.get(f"{name}.weight")
    return Q80Linear.fmt if weight is not None and weight.ndim == 3 else fmt


def _manifest(mf_hash: str, fmt: str, config: ModelConfig, tokenizer: Tokenizer, gguf_bytes: int) -> dict[str, Any]:
    """What a cache entry's (and a weights directory's) manifest says besides the tensors' own hash."""
    cfg = {k: v for k, v in asdict(config).items() if k != "head_dim"}
    return {
        "cache_version": CACHE_VERSION,
        "format": fmt,
        "source_sha256": mf_hash,
        "source_bytes": gguf_bytes,
        "config": cfg,
        "tokenizer": tokenizer.to_state(),
    }


def load_model(
    model_path: str | None = None,
    fmt: str | None = "int4",
    device: str = "auto",
    use_cache: bool = True,
    weights_dir: str | None = None,
) -> LoadedModel:
    """Load a GGUF model in `fmt`, from the weight cache when a valid entry exists, or from a weights directory.

    With `weights_dir` the format is the directory's; `fmt` may be None, or must name that format.
    The freed memory is handed back only once the loading frame has returned: while it runs, the
    GGUF reader, the cache's state dict and the tokenizer tables it parsed are still referenced, and
    trimming then left ~50 MiB of heap that was freed a moment later and never returned."""
    if weights_dir is not None:
        loaded = _load_weights_dir(Path(weights_dir), model_path, fmt, device)
    elif fmt is None:
        raise ValueError("no weight format given: name one (or a weights directory)")
    else:
        loaded = _load_model(model_path, fmt, device, use_cache)
    release_freed_memory()
    return loaded


def _load_weights_dir(directory: Path, model_path: str | None, fmt: str | None, device: str) -> LoadedModel:
    """A model from a verified weights directory made from this GGUF file; WeightsDirError when it cannot be."""
    dev = resolve_device(device)
    t0 = time.perf_counter()
    path = resolve_model_path(model_path)
    found = read_weights_dir(directory, "cpu")
    manifest = found.manifest
    source_hash = file_sha256(path)
    if manifest.get("source_sha256") != source_hash:
        raise WeightsDirError(
            f"the weights in {directory} were made from another model file (SHA-256 "
            f"{str(manifest.get('source_sha256'))[:12]}...) than {path} ({source_hash[:12]}...); "
            "load them with that file (--model) or " + PRODUCE_HINT
        )
    stored = manifest.get("format")
    if fmt is not None and fmt != stored:
        raise WeightsDirError(
            f"the weights in {directory} are in {stored}, not {fmt}: leave the weight format out or give {stored}"
        )
    try:
        config = ModelConfig(**manifest["config"])
        model = build_from_state(config, str(stored), found.state, dev, manifest["layers"])
        tokenizer = Tokenizer.from_state(manifest["tokenizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WeightsDirError(
            f"weights directory {directory} does not fit this engine ({exc}); {PRODUCE_HINT}"
        ) from exc
    return LoadedModel(
        model,
        tokenizer,
        config,
        str(stored),
        dev,
        "weights",
        time.perf_counter() - t0,
        module_weight_bytes(model),
        path.stat().st_size,
        str(path),
        _kernel_notes(model),
        source_hash,
        str(directory),
        found.recipe,
    )


def linear_layouts(model: nn.Module) -> dict[str, Layout]:
    """Every block (and untied head) linear's layout by parameter prefix; the tied table's follows from the format."""
    return {
        name: layout_of(m)
        for name, m in model.named_modules()
        if isinstance(m, QuantLinear) and not name.startswith("embedding.")
    }


def replace_linears(loaded: LoadedModel, modules: Mapping[str, QuantLinear], recipe: dict[str, Any]) -> LoadedModel:
    """`loaded` with the named linear layers swapped for `modules` (prepared, on its device) and its weight bytes,
    kernel notes and recipe brought up to date: a compressed model, to serve as it is or save with `save_weights`."""
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if not isinstance(getattr(loaded.model.get_submodule(parent), child, None), QuantLinear):
            raise ValueError(f"{name} is not a linear layer of the model")
        setattr(loaded.model.get_submodule(parent), child, module)
    return replace(
        loaded,
        source="compressed",
        weight_bytes=module_weight_bytes(loaded.model),
        kernel_notes=_kernel_notes(loaded.model),
        recipe=recipe,
    )


def save_weights(loaded: LoadedModel, directory: Path, recipe: str) -> None:
    """Write `loaded`'s model (compressed in place by the caller) with its recipe JSON as a weights directory."""
    if loaded.source_sha256 is None:
        raise ValueError("the loaded model does not know its source file's hash; load it with load_model")
    manifest = _manifest(loaded.source_sha256, loaded.fmt, loaded.config, loaded.tokenizer, loaded.gguf_bytes)
    manifest["layers"] = linear_layouts(loaded.model)
    write_weights_dir(directory, loaded.model.state_dict(), manifest, recipe)


def _load_model(model_path: str | None, fmt: str, device: str, use_cache: bool) -> LoadedModel:
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; choose one of {', '.join(WEIGHT_FORMATS)}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    path = resolve_model_path(model_path)
    gguf_bytes = path.stat().st_size
    source_hash = file_sha256(path)
    entry = CacheEntry.for_key(entry_key(source_hash, fmt, dev.type))
    notes: list[str] = []
    if use_cache and entry.exists():
        try:
            state, manifest = load_entry(entry)
            config = ModelConfig(**manifest["config"])
            model = build_from_state(config, fmt, state, dev)
            tokenizer = Tokenizer.from_state(manifest["tokenizer"])
        except (WeightCacheError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            # Not removed here: the save below replaces it under the entry's lock, and another
            # process may be writing a good one right now.
            notes.append(f"weight cache entry was invalid and has been rebuilt ({exc})")
        else:
            return LoadedModel(
                model,
                tokenizer,
                config,
                fmt,
                dev,
                "cache",
                time.perf_counter() - t0,
                module_weight_bytes(model),
                gguf_bytes,
                str(path),
                _kernel_notes(model),
                source_hash,
            )
    mf = GGUFModelFile(path)
    tokenizer = Tokenizer.from_gguf(mf)
    model = build_from_gguf(mf, fmt, dev)
    if use_cache:
        try:
            save_entry(entry, model.state_dict(), _manifest(source_hash, fmt, mf.config, tokenizer, gguf_bytes))
        except WeightCacheError as exc:  # the model is converted and runs; only the next load is slower
            logger.warning("%s; the model runs from the GGUF conversion, and the next load converts again", exc)
            notes.append(f"weight cache not written ({exc})")
    return LoadedModel(
        model,
        tokenizer,
        mf.config,
        fmt,
        dev,
        "gguf",
        time.perf_counter() - t0,
        module_weight_bytes(model),
        gguf_bytes,
        str(path),
        _kernel_notes(model) + notes,
        source_hash,
    )
