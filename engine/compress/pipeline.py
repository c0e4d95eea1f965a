"""Compress the real model: from the fp32 reference to a served model in memory, with its recipe, then to a directory.

`compress(settings, reference)` takes the loaded fp32 model (the GGUF's weights dequantized) and returns a
`Compressed`: the model in the format the method serves in (GPTQ / round-to-nearest: int4; pruning and
low-rank: fp32 or bf16) with every block linear replaced, and the `Recipe`. The reference is only read,
so a study can load it once and compress it several ways. `Compressed.save(DIR)` writes the weights
directory that `--weights DIR` loads; `Engine(compressed.loaded)` serves it without a round trip.

Only the block linears (wqkv, wo, w13, w2 of every layer) are compressed; the tied embedding / head and
the norms stay as the served format keeps them. `load_compressed(DIR)` reads a directory back as a
`Compressed`: where a distillation (engine/compress/distill.py) may start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import torch
from pydantic import ValidationError
from torch import nn

from engine.compress.calibration import (
    CALIBRATION_FILE,
    CALIBRATION_WINDOW,
    Hessians,
    calibration_ids,
    calibration_sha256,
    calibration_windows,
    capturing,
    hessian_output_error,
)
from engine.compress.gptq import gptq_quantize, rtn_codes
from engine.compress.lowrank import activation_scales, rank_for_fraction, svd_factors
from engine.compress.prune import magnitude_prune, prune_2_4, sparsity_of
from engine.compress.recipe import (
    PROJECTIONS,
    CalibrationRecord,
    GptqSettings,
    LayerRecord,
    LowRankSettings,
    Projection,
    PruneSettings,
    Recipe,
    RtnSettings,
    Settings,
)
from engine.model.loader import LoadedModel, load_model, replace_linears, save_weights
from engine.quant.linear import DenseLinear, Int4Linear, QuantLinear, make_linear
from engine.quant.lowrank_linear import LowRankLinear
from engine.quant.roundtrip import weight_errors

REFERENCE = "fp32"
BLOCK_PATHS: dict[Projection, str] = {
    "wqkv": "attention.wqkv",
    "wo": "attention.wo",
    "w13": "feed_forward.w13",
    "w2": "feed_forward.w2",
}
Progress = Callable[[str], None]
_Fit = Callable[[str, torch.Tensor, torch.Tensor], tuple[QuantLinear, torch.Tensor, LayerRecord]]
"""(layer name, fp32 weight, its calibration Hessian) -> the compressed module, the weight it multiplies by, and
the layer's record."""
_Module = TypeVar("_Module", bound=nn.Module)


@dataclass(slots=True)
class Compressed:
    """A compressed model, ready to run (`loaded`), and how it was made (`recipe`)."""

    loaded: LoadedModel
    recipe: Recipe

    def save(self, directory: Path) -> None:
        """Write the weights directory `--weights DIR` loads (engine/model/weights_dir.py)."""
        save_weights(self.loaded, directory, self.recipe.model_dump_json(indent=2))


@dataclass(slots=True)
class _Output:
    modules: dict[str, QuantLinear]
    layers: list[LayerRecord]
    calibration: CalibrationRecord | None = None


def load_reference(model_path: str | None = None, device: str = "cpu", use_cache: bool = True) -> LoadedModel:
    """The fp32 model every method starts from and is measured against."""
    return load_model(model_path, REFERENCE, device, use_cache)


def block_linears(model: nn.Module, projections: tuple[Projection, ...] = PROJECTIONS) -> dict[str, DenseLinear]:
    """The chosen projections of every block by parameter prefix, blocks in order ('layers.3.feed_forward.w2')."""
    return block_modules(model, DenseLinear, "compression starts from dense weights", projections)


def block_modules(
    model: nn.Module, expected: type[_Module], needs: str, projections: tuple[Projection, ...] = PROJECTIONS
) -> dict[str, _Module]:
    """`block_linears` for any module type: ValueError saying what the caller `needs` when a layer is another kind."""
    found: dict[str, _Module] = {}
    for i, block in enumerate(model.layers):  # type: ignore[attr-defined]
        for kind in projections:
            name, module = f"layers.{i}.{BLOCK_PATHS[kind]}", block.get_submodule(BLOCK_PATHS[kind])
            if not isinstance(module, expected):
                raise ValueError(f"{needs}; {name} is {getattr(module, 'fmt', type(module).__name__)}")
            found[name] = module
    return found


def load_compressed(directory: Path, model_path: str | None = None, device: str = "cpu") -> Compressed:
    """A weights directory loaded back as the `Compressed` it was saved from (a distillation starts from one)."""
    loaded = load_model(model_path, None, device, weights_dir=str(directory))
    try:
        recipe = Recipe.model_validate(loaded.recipe)
    except ValidationError as exc:
        raise ValueError(
            f"{directory}/recipe.json is not a recipe this engine reads ({exc.error_count()} problems: "
            f"{exc.errors()[0]['msg']})"
        ) from None
    return Compressed(loaded, recipe)


def compress(
    settings: Settings, reference: LoadedModel, progress: Progress | None = None, use_cache: bool = True
) -> Compressed:
    """Compress `reference` (fp32, unchanged) as `settings` say; the served model is loaded in the method's format."""
    if reference.fmt != REFERENCE:
        raise ValueError(f"compression starts from the {REFERENCE} model, not {reference.fmt}")
    if reference.source_sha256 is None:
        raise ValueError("the reference model does not know its source file's hash; load it with load_reference")
    if settings.method not in METHODS:
        raise ValueError(f"{settings.describe()} starts from a compressed model, not from the reference")
    report(progress, f"compress: {settings.describe()}")
    t0 = time.perf_counter()
    with torch.no_grad():
        out = METHODS[settings.method](settings, reference, progress)
    seconds = time.perf_counter() - t0
    recipe = Recipe(
        settings=settings,
        format=settings.served_format,
        source_file=os.path.basename(reference.gguf_path),
        source_sha256=reference.source_sha256,
        calibration=out.calibration,
        layers=out.layers,
        created_at=datetime.now(UTC),
        compress_s=seconds,
        torch_version=torch.__version__,
        device=str(reference.device),
    )
    served = load_model(reference.gguf_path, settings.served_format, str(reference.device), use_cache)
    loaded = replace_linears(served, out.modules, recipe.model_dump(mode="json"))
    report(progress, f"compress: done in {seconds:.1f} s; weights {loaded.weight_bytes / 2**20:.1f} MiB")
    return Compressed(loaded, recipe)


def report(progress: Progress | None, message: str) -> None:
    """Pass `message` on to `progress`, when there is one."""
    if progress is not None:
        progress(message)


def layer_record(
    name: str, w: torch.Tensor, module: QuantLinear, wq: torch.Tensor | None = None, **figures: float | int | None
) -> LayerRecord:
    """A layer's record; `wq` is the weight the module multiplies by, when the caller has it at hand."""
    wq = module.dequantized() if wq is None else wq
    return LayerRecord(
        name=name,
        out_features=module.out_features,
        in_features=module.in_features,
        stored_bytes=module.weight_bytes(),
        weight_rel_fro=weight_errors(w, wq)["weight_rel_fro"],
        **figures,  # type: ignore[arg-type]
    )


# -- methods ------------------------------------------------------------------------------


def _rtn(settings: RtnSettings, reference: LoadedModel, progress: Progress | None) -> _Output:
    out = _Output({}, [])
    for name, linear in block_linears(reference.model).items():
        w = linear.weight.float()
        codes = rtn_codes(w, settings.group_size)
        module = Int4Linear.from_codes(codes.q, codes.scale, codes.zero, codes.group_size)
        out.modules[name] = module
        out.layers.append(layer_record(name, w, module, codes.dequantized()))
    return out


def _prune(settings: PruneSettings, reference: LoadedModel, progress: Progress | None) -> _Output:
    out = _Output({}, [])
    for name, linear in block_linears(reference.model).items():
        w = linear.weight.float()
        pruned = magnitude_prune(w, settings.sparsity) if settings.sparsity is not None else prune_2_4(w)
        module = make_linear(pruned, settings.format, device=str(reference.device))
        wq = module.dequantized()
        out.modules[name] = module
        out.layers.append(layer_record(name, w, module, wq, sparsity=sparsity_of(wq)))
    return out


def _lowrank(settings: LowRankSettings, reference: LoadedModel, progress: Progress | None) -> _Output:
    if settings.activation_aware:
        fit = _lowrank_fit(settings)
        return _calibrated(reference, settings.calibration_tokens, settings.projections, fit, progress)
    out = _Output({}, [])
    linears = block_linears(reference.model, settings.projections)
    for i, (name, linear) in enumerate(linears.items()):
        if i % 20 == 0:
            report(progress, f"compress: SVD of layer {i + 1} of {len(linears)}")
        module, _, record = _lowrank_fit(settings)(name, linear.weight.float(), None)
        out.modules[name] = module
        out.layers.append(record)
    return out


def _lowrank_fit(settings: LowRankSettings) -> _Fit:
    """One layer's factors at the settings' rank or energy; weighted by the channel RMS when a Hessian is given."""

    def fit(name: str, w: torch.Tensor, hessian: torch.Tensor | None) -> tuple[QuantLinear, torch.Tensor, LayerRecord]:
        rank = rank_for_fraction(w, settings.rank_fraction) if settings.rank_fraction is not None else None
        scales = None if hessian is None else activation_scales(hessian.diagonal())
        factors = svd_factors(w, rank=rank, energy=settings.energy, scales=scales)
        module = LowRankLinear.from_factors(factors.up, factors.down, settings.format)
        wq = module.dequantized()
        calib = None if hessian is None else hessian_output_error(w, wq, hessian)
        figures = {"rank": factors.rank, "energy_kept": factors.energy_kept, "calib_output_rel_err": calib}
        return module, wq, layer_record(name, w, module, wq, **figures)

    return fit


def _gptq(settings: GptqSettings, reference: LoadedModel, progress: Progress | None) -> _Output:
    g = settings.group_size

    def fit(name: str, w: torch.Tensor, hessian: torch.Tensor) -> tuple[QuantLinear, torch.Tensor, LayerRecord]:
        codes = gptq_quantize(
            w,
            hessian,
            g,
            act_order=settings.act_order,
            damp_fraction=settings.damp_fraction,
            block_size=settings.block_size,
        )
        wq = codes.dequantized()
        record = layer_record(
            name,
            w,
            module := Int4Linear.from_codes(codes.q, codes.scale, codes.zero, g),
            wq,
            calib_output_rel_err=hessian_output_error(w, wq, hessian),
            rtn_calib_output_rel_err=hessian_output_error(w, rtn_codes(w, g).dequantized(), hessian),
        )
        return module, wq, record

    return _calibrated(reference, settings.calibration_tokens, PROJECTIONS, fit, progress)


def _calibrated(
    reference: LoadedModel,
    calibration_tokens: int | None,
    projections: tuple[Projection, ...],
    fit: _Fit,
    progress: Progress | None,
) -> _Output:
    """Block by block: capture each chosen linear's Hessian (mean x^T x) on the block's real inputs over the
    calibration text, let `fit` compress the layer, then feed the next block the outputs of the *compressed* block,
    so each layer is fitted to the inputs it will see when served (GPTQ's order, as in its paper)."""
    model, device = reference.model, reference.device
    ids = calibration_ids(reference.tokenizer, calibration_tokens)
    windows = calibration_windows(ids, CALIBRATION_WINDOW)
    hidden = [model.embedding.lookup(torch.tensor([w], device=device)).to(model.act_dtype) for w in windows]
    out = _Output(
        {},
        [],
        CalibrationRecord(
            file=CALIBRATION_FILE, sha256=calibration_sha256(), tokens=len(ids), window=CALIBRATION_WINDOW
        ),
    )
    chosen = block_linears(model, projections)
    for i, block in enumerate(model.layers):
        if i % 5 == 0:
            report(progress, f"compress: calibrated block {i + 1} of {len(model.layers)}")
        linears = {n: m for n, m in chosen.items() if n.startswith(f"layers.{i}.")}
        hessians = Hessians()
        with capturing(linears, hessians):
            for h in hidden:
                block(h, _rope(model, h.shape[1]), None)
        fitted: dict[str, torch.Tensor] = {}
        for name, linear in linears.items():
            module, fitted[name], record = fit(name, linear.weight.float(), hessians.mean(name))
            out.modules[name] = module
            out.layers.append(record)
        with _weights(linears, fitted):
            hidden = [block(h, _rope(model, h.shape[1]), None) for h in hidden]
    return out


def _rope(model: nn.Module, tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    cos, sin = model.rope.tables(0, tokens)  # type: ignore[attr-defined]
    return cos, sin, model.rope.half  # type: ignore[attr-defined]


@contextmanager
def _weights(linears: Mapping[str, DenseLinear], weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """The reference's dense layers run with `weights` inside the block, and get their own back after."""
    originals = {name: m.weight for name, m in linears.items()}
    try:
        for name, m in linears.items():
            m.weight = nn.Parameter(weights[name].to(m.weight.dtype), requires_grad=False)
        yield
    finally:
        for name, m in linears.items():
            m.weight = originals[name]


METHODS: dict[str, Callable[..., _Output]] = {"gptq": _gptq, "rtn": _rtn, "prune": _prune, "lowrank": _lowrank}
