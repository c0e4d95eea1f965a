"""Ahead-of-time compiled decode steps (the default decode; `--eager` skips them): AOTInductor packages on disk.

Why AOT: `torch.compile` re-traces the model in every new process (Dynamo and AOTAutograd
took ~60 s of a warm start on 2 cores, even with every kernel in Inductor's cache). An
AOTInductor package is the compiled step as a shared library: a later process loads it
in about 2 s and never traces. The first process pays one export and one C++ build per
step kind (about a minute on 2 cores) and writes the package beside the weight cache.

What is compiled: the embedding lookup and the blocks (`Transformer._run_blocks`) for the
steps that dominate serving, one graph per *step kind* that a KV cache offers (see
`AotStepKind`): single-sequence decode over the contiguous `KVCache` (`generate`) and
decode-only steps of the paged cache (the server, any batch size). Prefill, mixed
prefill/decode steps and speculative verification run eagerly, exactly as written.

The weights are inputs of the graph, not constants packed into it: the package holds
code only (a few MB), the engine's own tensors are passed on each call (no second copy in
memory or on disk), and one package serves any checkpoint with the same shapes. Passing
~300 tensors per call costs ~5% of a step against constants (measured 6.0 vs 5.7 ms).

A package is keyed by everything its code depends on: this module's version, the torch
version, the CPU's vector ISA, the step kind, the model's tensor names, shapes and dtypes,
the kernels its modules chose (a package that calls the native `preflight::int4_mm` is never
loaded where that operator is not registered), and the bytes of the engine sources that the
step traces. After loading, one step runs
beside the eager blocks on scratch buffers and must agree (`verify`), so a stale or
broken package is an error the caller can fall back from, never wrong output.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from engine.errors import EngineError, first_line

AOT_VERSION = "1"
"""Bump when the way steps are exported changes: old packages then simply miss."""

SOURCES = (
    "engine/model/aot.py",
    "engine/model/transformer.py",
    "engine/model/attention.py",
    "engine/model/embedding.py",
    "engine/quant/linear.py",
    "engine/quant/functions.py",
    "engine/quant/lowrank_linear.py",
    "engine/run/kv_cache.py",
    "engine/batch/paged_cache.py",
)
"""Files whose code a step traces: a change to any of them is a new package."""

BuildNotice = Callable[[str], None]  # hears the step kind whose package is about to be built (minutes)

VERIFY_RTOL = 0.02
"""Largest difference from the eager blocks, relative to the largest hidden value, for fp32 activations.

fp32 agrees to ~1e-6; bf16 activations differ by rounding only (Inductor sums a norm
in another order and one ulp can flip a later bf16 cast: 1.7 in 383 after six steps of
int4, 0.4%). A wrong kernel or a stale package is off by the size of the values.
"""
VERIFY_RTOL_BF16 = 0.1
"""The same where matmuls round their activations to bf16 (every format but fp32): rounding alone then reaches
several percent on the paged step's seeded example (three sequences over noise-filled pools, 30 layers). bf16
weights, 2026-12-08: eager bf16 was 56 off the same weights computed in fp32 (values up to 344), the compiled
step 52, and the two 17.5 (5%) apart, which failed the fp32 bound although the package was the closer one."""


def verify_rtol(model: nn.Module) -> float:
    """VERIFY_RTOL when every layer computes in fp32, else VERIFY_RTOL_BF16 (any `fmt` but fp32 rounds to bf16)."""
    formats = {m.fmt for m in model.modules() if isinstance(getattr(m, "fmt", None), str)}
    return VERIFY_RTOL if formats <= {"fp32"} else VERIFY_RTOL_BF16


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name: the graph's weight inputs, in a fixed order."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _source_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for rel in SOURCES:
        digest.update(rel.encode())
        digest.update((root / rel).read_bytes())
    return digest.hexdigest()


def package_key(model: nn.Module, kind: str) -> str:
    """A name for the package of `kind` for this model's shapes on this torch and CPU."""
    root = Path(__file__).resolve().parents[2]
    layout = [(name, list(t.shape), str(t.dtype)) for name, t in _weights(model).items()]
    parts = {
        "aot": AOT_VERSION,
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "kind": kind,
        "act_dtype": str(getattr(model, "act_dtype", "")),
        "layout": layout,
        "kernels": sorted({k for m in model.modules() if isinstance(k := getattr(m, "kernel", None), str)}),
        "sources": _source_digest(root),
    }
    return f"{kind}-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]}"


def package_dir() -> Path:
    from engine.cache_files import cache_dir

    return cache_dir() / "aot"


def package_path(model: nn.Module, kind: type[AotStepKind]) -> Path:
    """Where the package of `kind` for this model lives (whether or not it has been built yet)."""
    return package_dir() / f"{package_key(model, kind.aot_kind)}.pt2"


def packages_cached(model: nn.Module, kinds: Sequence[type[AotStepKind]]) -> bool:
    """Whether every kind's package is on disk already: `compile_steps` then loads in seconds, no build."""
    _prepare(model)
    return all(package_path(model, kind).exists() for kind in kinds)


def _prepare(model: nn.Module) -> None:
    """Let the model make its lazily built tensors first: they are part of the key and of the graph."""
    prepare = getattr(model, "prepare_compile", None)
    if callable(prepare):
        prepare()


@dataclass(frozen=True, slots=True)
class AotExample:
    """Example inputs of one step kind for the export (and for `verify`), with their dynamic dims.

    `positions` give the rope rows of the step's tokens; `cache` is what `aot_inputs` would
    return for such a step, filled with seeded random values so that `verify` compares real
    arithmetic, not zeros.
    """

    ids: torch.Tensor  # (1, tokens)
    positions: torch.Tensor  # (tokens,)
    cache: list[torch.Tensor]
    tokens_dim: Any  # torch.export.Dim of the token count, or None when it is fixed
    cache_dims: list[dict[int, Any]]


class AotStepKind(Protocol):
    """What a KV cache class provides so that its steps can be compiled ahead of time.

    The model side (this module) knows nothing about caches: each cache class says which
    of its steps have a graph (`aot_inputs` returns None for the others), which tensors
    describe such a step, how to rebuild an equivalent cache from them while tracing, and
    an example step with its dynamic dimensions.
    """

    aot_kind: str

    def aot_inputs(self, ids: torch.Tensor) -> list[torch.Tensor] | None: ...

    @classmethod
    def aot_rebuild(cls, tensors: Sequence[torch.Tensor]) -> Any: ...

    @classmethod
    def aot_example(cls, config: Any, dtype: torch.dtype) -> AotExample: ...


class _Traced(nn.Module):
    """The step as export sees it: token ids, rope rows, the cache's tensors and every weight are inputs."""

    def __init__(self, model: nn.Module, kind: type[AotStepKind]) -> None:
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(
        self,
        ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: list[torch.Tensor],
        weights: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        from torch.nn.utils.stateless import _reparametrize_module

        with _reparametrize_module(self.model, weights):
            return self.model._run_blocks(ids, (cos, sin, self.model.rope.half), self.kind.aot_rebuild(cache))


def export_step(model: nn.Module, kind: type[AotStepKind]) -> Any:
    """torch.export of one step kind (non-strict: the blocks are plain Python over tensors)."""
    example = kind.aot_example(model.config, model.act_dtype)
    cos, sin = model.rope.gather(example.positions)
    rows = {0: example.tokens_dim} if example.tokens_dim is not None else {}
    ids_dims = {1: example.tokens_dim} if example.tokens_dim is not None else {}
    weights = _weights(model)
    dynamic = (ids_dims, rows, rows, example.cache_dims, {name: {} for name in weights})
    with torch.no_grad():
        return torch.export.export(
            _Traced(model, kind), (example.ids, cos, sin, example.cache, weights), dynamic_shapes=dynamic, strict=False
        )


@dataclass(slots=True)
class AotStep:
    """A loaded package of one step kind, called with the engine's own tensors."""

    kind: str
    runner: Any  # torch._inductor's AOTICompiledModel
    path: Path
    built: bool  # compiled in this process (cold) rather than loaded from the cache (warm)
    seconds: float
    calls: int = 0  # steps run through the package (evidence that it, not the eager path, ran)

    def __call__(
        self, ids: torch.Tensor, rope: Any, cache: list[torch.Tensor], weights: list[torch.Tensor]
    ) -> torch.Tensor:
        """Run the package on flat inputs in the export's order (ids, cos, sin, cache..., weights...).

        The loader's own `__call__` parses its input and output specs from JSON and walks the
        pytree on every call (~300 weights); `flat_order_matches` checks once that this
        order is the spec's, so each step skips that.
        """
        self.calls += 1
        return self.runner.loader.boxed_run([ids, rope[0], rope[1], *cache, *weights])[0]

    def flat_order_matches(self, example: list[Any]) -> bool:
        """Whether the package's input spec flattens `example` (the export's argument tuple) in our order."""
        from torch.utils import _pytree as pytree

        spec = pytree.treespec_loads(self.runner.loader.get_call_spec()[0])
        flat, got = pytree.tree_flatten((tuple(example), {}))
        ids, cos, sin, cache, weights = example
        ours = [ids, cos, sin, *cache, *weights.values()]
        return got == spec and len(flat) == len(ours) and all(a is b for a, b in zip(flat, ours, strict=True))


LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def _build(model: nn.Module, kind: type[AotStepKind], path: Path) -> None:
    """Export and compile into a temp file beside `path`, then rename: readers never see half a package."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.pt2")
    try:
        with warnings.catch_warnings():
            # torch's export still copies a pytree class it has deprecated itself (torch 2.13): a FutureWarning
            # about torch's own code amid a cold build's notes reads as if the build had gone wrong.
            warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
            program = export_step(model, kind)
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_step(model: nn.Module, kind: type[AotStepKind], on_build: BuildNotice | None = None) -> AotStep:
    """The package of `kind` for this model: loaded from the cache, or built there first.

    Building holds the package's lock, so two processes starting together compile once;
    the second waits and then loads. A cached package that cannot be loaded or disagrees
    with the eager model (a truncated file, a toolchain that changed under it) is removed
    and built again, once. Errors of any kind come out as EngineError. `on_build` is called just
    before a build starts (under the lock, so a package another process just built is not announced).
    """
    t0 = time.perf_counter()
    path = package_path(model, kind)
    step = _load_or_build(model, kind, path, t0, on_build)
    try:
        verify(model, kind, step)
    except EngineError:
        if step.built:
            raise
        path.unlink(missing_ok=True)
        step = _load_or_build(model, kind, path, t0, on_build)
        verify(model, kind, step)
    return step


def _load_or_build(
    model: nn.Module, kind: type[AotStepKind], path: Path, t0: float, on_build: BuildNotice | None
) -> AotStep:
    from engine.model.weight_cache import CacheEntry, locked

    def build() -> None:
        if on_build is not None:
            on_build(kind.aot_kind)
        _build(model, kind, path)

    built = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(CacheEntry.for_key(path.stem, path.parent), exclusive=True):
            if not path.exists():
                build()
                built = True
            try:
                runner = torch._inductor.aoti_load_package(str(path))
            except Exception:
                if built:
                    raise
                path.unlink()  # unreadable: build it again, once
                build()
                built = True
                runner = torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # export, C++ build or load: long messages; the first line says what
        raise EngineError(f"compiling the {kind.aot_kind} step failed ({first_line(exc)}); run with --eager") from exc
    return AotStep(kind.aot_kind, runner, path, built, time.perf_counter() - t0)


def verify(model: nn.Module, kind: type[AotStepKind], step: AotStep) -> None:
    """One example step through the package and through the eager blocks must agree (see verify_rtol)."""
    example = kind.aot_example(model.config, model.act_dtype)
    rope = (*model.rope.gather(example.positions), model.rope.half)
    weights = _weights(model)
    if not step.flat_order_matches([example.ids, rope[0], rope[1], example.cache, weights]):
        raise EngineError(f"the {step.kind} package takes its inputs in another order ({step.path.name})")
    with torch.no_grad():
        eager = model._run_blocks(example.ids, rope, kind.aot_rebuild([t.clone() for t in example.cache]))
        try:
            compiled = step(example.ids, rope, [t.clone() for t in example.cache], list(weights.values()))
        except Exception as exc:
            raise EngineError(
                f"the compiled {step.kind} step failed to run ({str(exc)[:300]}); run with --eager"
            ) from exc
    scale = float(eager.abs().max()) or 1.0
    worst = float((eager.float() - compiled.float()).abs().max()) if compiled.shape == eager.shape else float("inf")
    if not worst <= verify_rtol(model) * scale:
        raise EngineError(
            f"the compiled {step.kind} step disagrees with the eager model (max difference {worst:.3g} against values "
            f"up to {scale:.3g}; package {step.path.name}); run with --eager"
        )


class AotBlocks:
    """`Transformer._run_blocks` with the steps that have a package running compiled, the rest eagerly."""

    def __init__(self, model: nn.Module, steps: dict[type, AotStep]) -> None:
        self.model = model
        self.steps = steps
        self.weights = list(_weights(model).values())

    def __call__(self, ids: torch.Tensor, rope: Any, cache: Any) -> torch.Tensor:
        step = self.steps.get(type(cache))
        inputs = None if step is None else cache.aot_inputs(ids)
        if step is None or inputs is None:
            return self.model._run_blocks(ids, rope, cache)
        return step(ids, rope, inputs, self.weights)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps.values())


def compile_steps(
    model: nn.Module, kinds: Sequence[type[AotStepKind]], on_build: BuildNotice | None = None
) -> AotBlocks:
    """Load (or build) a package per cache kind and return the blocks that use them."""
    _prepare(model)
    return AotBlocks(model, {kind: load_step(model, kind, on_build) for kind in kinds})
