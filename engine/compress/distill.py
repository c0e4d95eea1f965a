"""Logit distillation of an int4 model back toward the fp32 model, within a time budget.

The student is a compressed int4 model (round-to-nearest or GPTQ). Its 4-bit codes stay as they are; what
trains is each group's scale and zero (and, by default, the RMSNorm gains), to minimize KL(fp32 || student)
over the next-token distributions of every position of the calibration text (engine/data/calibration.txt,
never the evaluation text). The result is therefore still the engine's packed int4 layout, served by the
same kernels at the same size: distillation moves each group's grid, not its codes.

How it runs:
- Teacher: one pass of the fp32 reference over the calibration windows keeps its final normalized hidden
  states (1874 tokens x 576 floats, 4 MiB); each step's teacher logits are one matmul with the fp32 table
  away, the same numbers the reference computes, without holding 350 MiB of logits.
- Student: the int4 model itself, with its block linears, norms and table swapped (for the training loop
  only) for differentiable stand-ins: `TrainableInt4` rebuilds w = (q - 8) * scale + zero in float32 from
  the fixed codes and rounds its input and output to bf16 as the packed kernel's caller does (straight
  through, so gradients stay float32); the table is the reference's fp32 table, equal to the int4 model's
  Q8_0 table value for value (checked).
- Parameters are relative, so one learning rate suits every layer: scale = scale0 * exp(a), zero = zero0
  + scale0 * b, gain = gain0 * (1 + c), all starting at 0. AdamW; windows in a seeded shuffled order.
- Budget: a monotonic clock from the first step; a step starts only while the time so far plus the mean
  step time fits the budget (the first step always runs). The fp32 pass is timed apart.
- Saving: the trained scales and zeros are rounded to bf16, the int4 layout's storage, when the served
  `Int4Linear`s are built, so what is saved, served and evaluated is that rounded grid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from engine.compress.calibration import CALIBRATION_FILE, calibration_ids, calibration_sha256, calibration_windows
from engine.compress.pipeline import (
    REFERENCE,
    Compressed,
    Progress,
    block_linears,
    block_modules,
    layer_record,
    report,
)
from engine.compress.recipe import CalibrationRecord, DistillationRecord, DistillSettings, Recipe
from engine.model.loader import LoadedModel, replace_linears
from engine.model.transformer import RMSNorm
from engine.quant.functions import dequantize_int4
from engine.quant.linear import Int4Linear

SERVED_ACTIVATIONS = torch.bfloat16  # what Int4Linear casts its input to, and its kernel returns
PROGRESS_EVERY_S = 20.0
TRAINED_GRID = "int4 group scales and zeros"
TRAINED_NORMS = "RMSNorm weights"


def _bf16_straight_through(t: torch.Tensor) -> torch.Tensor:
    """`t` rounded to bf16 in the forward pass, its gradient passed through unrounded."""
    return t + (t.to(SERVED_ACTIVATIONS).to(t.dtype) - t).detach()


class TrainableInt4(nn.Module):
    """An `Int4Linear` with its codes fixed and its grid trainable, computing in float32 what the kernel computes.

    The codes are kept as (q - 8) in bf16 (exact for -8..7), padded to whole groups (N, G, g), so that each step's
    weight is one multiply-add, the layout `dequantize_int4` defines; `served()` builds the module back from the
    codes through `Int4Linear.from_codes`, and the tests check the two agree.
    """

    def __init__(self, module: Int4Linear) -> None:
        super().__init__()
        n, k = module.out_features, module.in_features
        pairs = module.scales_and_zeros.transpose(0, 1)[:n].float()  # (N, G, 2): the grid the kernel uses
        self.group_size, self.in_features = module.group_size, k
        codes = module.codes()[:n, :k].contiguous()
        self.register_buffer("codes", codes)
        self.register_buffer("centered", _grouped(codes, module.group_size))
        self.register_buffer("scale0", pairs[..., 0].contiguous())
        self.register_buffer("zero0", pairs[..., 1].contiguous())
        self.log_scale = nn.Parameter(torch.zeros_like(self.scale0))
        self.shift = nn.Parameter(torch.zeros_like(self.zero0))

    def grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """scale and zero (N, G) in float32."""
        return self.scale0 * self.log_scale.exp(), self.zero0 + self.scale0 * self.shift

    def weight(self) -> torch.Tensor:
        """The float32 (N, K) weight of the current grid: (q - 8) * scale + zero."""
        scale, zero = self.grid()
        w = torch.addcmul(zero[..., None], self.centered, scale[..., None])
        return w.reshape(w.shape[0], -1)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _bf16_straight_through(F.linear(_bf16_straight_through(x), self.weight().to(x.dtype)))

    def served(self) -> tuple[Int4Linear, torch.Tensor]:
        """The trained grid as the engine's int4 module (scales and zeros stored, hence rounded, in bf16), with the
        float32 weight that module multiplies by."""
        with torch.no_grad():
            module = Int4Linear.from_codes(self.codes, *self.grid(), self.group_size)
        stored = module.scales_and_zeros.transpose(0, 1)[: self.codes.shape[0]].float()
        return module, dequantize_int4(self.codes, stored[..., 0], stored[..., 1], self.group_size)


def _grouped(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """(q - 8) in bf16, (N, G, group_size), the ragged last group padded with zeros (they meet no column)."""
    n, k = codes.shape
    centered = F.pad(codes.to(torch.bfloat16) - 8, (0, -k % group_size))
    return centered.reshape(n, -1, group_size)


class TrainableNorm(nn.Module):
    """An `RMSNorm` whose gain trains: gain0 * (1 + offset)."""

    def __init__(self, norm: RMSNorm) -> None:
        super().__init__()
        self.shape, self.eps = norm.shape, norm.eps
        self.register_buffer("gain0", norm.weight.detach().float().clone())
        self.offset = nn.Parameter(torch.zeros_like(self.gain0))

    def gain(self) -> torch.Tensor:
        return self.gain0 * (1 + self.offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.shape, self.gain().to(x.dtype), self.eps)


class _FrozenTable(nn.Module):
    """The tied embedding and head through a fixed float32 table: differentiable in the hidden states only."""

    def __init__(self, table: torch.Tensor, act_dtype: torch.dtype) -> None:
        super().__init__()
        self.table, self.act_dtype = table, act_dtype

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids].to(self.act_dtype)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h.to(self.table.dtype), self.table)


def int4_layers(model: nn.Module) -> dict[str, Int4Linear]:
    """Every block linear of an int4 model; ValueError when one is not int4 (nothing to distill)."""
    return block_modules(model, Int4Linear, "distillation trains the grid of int4 layers (start from rtn or gptq)")


def norm_layers(model: nn.Module) -> dict[str, RMSNorm]:
    """Every RMSNorm of the model by name: two per block and the final one."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RMSNorm)}


def teacher_hidden(reference: LoadedModel, windows: list[list[int]]) -> list[torch.Tensor]:
    """The fp32 model's final normalized hidden states (tokens, hidden) for each window: its logits, one matmul away."""
    kept: list[torch.Tensor] = []
    handle = reference.model.norm.register_forward_hook(lambda _m, _args, out: kept.append(out[0].detach()))
    try:
        with torch.no_grad():  # not inference_mode: the targets built from these are saved for backward
            for w in windows:
                reference.model(torch.tensor([w], device=reference.device), 0, None, last_only=False)
    finally:
        handle.remove()
    return kept


def distill(
    settings: DistillSettings, reference: LoadedModel, start: Compressed, progress: Progress | None = None
) -> Compressed:
    """Distill `start` (an int4 model, changed in place and returned with its new recipe) toward `reference`."""
    if reference.fmt != REFERENCE or reference.source_sha256 is None:
        raise ValueError(f"the teacher is the {REFERENCE} model loaded with load_reference, not {reference.fmt}")
    if start.recipe.source_sha256 != reference.source_sha256:
        raise ValueError("the model to distill was made from another model file than the teacher")
    student = start.loaded
    layers = int4_layers(student.model)
    table = reference.model.embedding.head.dequantized()
    if not torch.equal(student.model.embedding.head.dequantized(), table):
        raise ValueError("the student's embedding table differs from the teacher's: the head would not be shared")
    ids = calibration_ids(student.tokenizer, settings.calibration_tokens)
    windows = calibration_windows(ids, settings.window)
    report(progress, f"distill: fp32 pass over {len(ids)} calibration tokens ({len(windows)} windows)")
    t0 = time.monotonic()
    hidden = teacher_hidden(reference, windows)
    teacher_s = time.monotonic() - t0

    linears = {name: TrainableInt4(m) for name, m in layers.items()}
    norms = {name: TrainableNorm(m) for name, m in norm_layers(student.model).items()} if settings.train_norms else {}
    params = [p for m in (*linears.values(), *norms.values()) for p in m.parameters()]
    report(progress, f"distill: training {sum(p.numel() for p in params):,} values for up to {settings.minutes:g} min")
    frozen = _FrozenTable(table, student.model.act_dtype)
    with _swapped(student.model, {**linears, **norms, "embedding": frozen}):
        run = _train(student.model, settings, params, windows, hidden, table, progress)

    served = {name: m.served() for name, m in linears.items()}
    with torch.no_grad():
        for name, norm in norms.items():
            target = student.model.get_submodule(name)
            target.weight.copy_(norm.gain())
            target.post_load()  # drop its cached cast of the old gain
    record = DistillationRecord(
        teacher=REFERENCE,
        trained=[TRAINED_GRID, *([TRAINED_NORMS] if norms else [])],
        trained_values=sum(p.numel() for p in params),
        budget_s=settings.minutes * 60,
        stopped_by=run.stopped_by,
        steps=run.steps,
        tokens_seen=run.tokens,
        train_s=run.seconds,
        teacher_s=teacher_s,
        loss_first=run.passes[0][0],
        loss_last=run.passes[-1][-1],
        loss_per_pass=[sum(p) / len(p) for p in run.passes],
    )
    weights = {name: m.dequantized() for name, m in block_linears(reference.model).items()}
    recipe = Recipe(
        settings=settings,
        format=settings.served_format,
        source_file=os.path.basename(reference.gguf_path),
        source_sha256=reference.source_sha256,
        calibration=CalibrationRecord(
            file=CALIBRATION_FILE, sha256=calibration_sha256(), tokens=len(ids), window=settings.window
        ),
        layers=[layer_record(name, weights[name], module, wq) for name, (module, wq) in served.items()],
        created_at=datetime.now(UTC),
        compress_s=teacher_s + run.seconds,
        torch_version=torch.__version__,
        device=str(reference.device),
        source=start.recipe,
        distillation=record,
    )
    per_pass = ", ".join(f"{loss:.4f}" for loss in record.loss_per_pass)
    report(progress, f"distill: {run.steps} steps in {run.seconds:.0f} s; training KL per pass {per_pass}")
    modules = {name: module for name, (module, _) in served.items()}
    return Compressed(replace_linears(student, modules, recipe.model_dump(mode="json")), recipe)


@dataclass(slots=True)
class _Run:
    """What the training loop did."""

    stopped_by: Literal["budget", "max_steps"] = "budget"
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    passes: list[list[float]] = field(default_factory=list)  # each step's loss, by pass through the windows


def _train(
    model: nn.Module,
    settings: DistillSettings,
    params: list[nn.Parameter],
    windows: list[list[int]],
    hidden: list[torch.Tensor],
    table: torch.Tensor,
    progress: Progress | None,
) -> _Run:
    """AdamW over the windows in seeded shuffled passes until the budget (or `max_steps`) says stop.

    A step starts only while the time so far plus the mean step time fits the budget; the first always runs."""
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    order = torch.Generator().manual_seed(settings.seed)
    budget_s, run, shown = settings.minutes * 60, _Run(), 0.0
    queue: list[int] = []
    clock = time.monotonic()
    while True:
        elapsed = time.monotonic() - clock
        if settings.max_steps is not None and run.steps >= settings.max_steps:
            run.stopped_by = "max_steps"
            break
        if run.steps and elapsed + elapsed / run.steps > budget_s:
            break
        if not queue:
            queue = torch.randperm(len(windows), generator=order).tolist()
            run.passes.append([])
        i = queue.pop()
        loss = _step(model, windows[i], hidden[i], table, optimizer)
        run.passes[-1].append(loss)
        run.steps, run.tokens = run.steps + 1, run.tokens + len(windows[i])
        if time.monotonic() - clock - shown >= PROGRESS_EVERY_S:
            shown = time.monotonic() - clock
            report(progress, f"distill: step {run.steps}, training KL {loss:.4f}, {shown:.0f} of {budget_s:.0f} s")
    run.seconds = time.monotonic() - clock
    return run


def _step(
    model: nn.Module, window: list[int], hidden: torch.Tensor, table: torch.Tensor, optimizer: torch.optim.Optimizer
) -> float:
    """One AdamW step on KL(fp32 || student) over every position of one window; the loss before the step."""
    device = table.device
    with torch.no_grad():
        target = torch.log_softmax(F.linear(hidden, table), dim=-1)
    logits = model(torch.tensor([window], device=device), 0, None, last_only=False)[0]
    loss = F.kl_div(torch.log_softmax(logits, dim=-1), target, log_target=True, reduction="batchmean")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@contextmanager
def _swapped(model: nn.Module, modules: Mapping[str, nn.Module]) -> Iterator[None]:
    """The named submodules of `model` replaced by `modules` while the block runs, and put back after."""
    originals = {name: model.get_submodule(name) for name in modules}
    try:
        for name, module in modules.items():
            _set(model, name, module)
        yield
    finally:
        for name, module in originals.items():
            _set(model, name, module)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
