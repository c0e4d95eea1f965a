"""Compiled decode, the default wherever it works: the decode steps run as ahead-of-time compiled code
(engine/model/aot.py). `--eager` opts out; where it cannot work (no C++ compiler, not a CPU) the engine
runs eager and says why.

Why: at 135M parameters a decode step is ~1,600 small aten calls, and their
dispatch, not arithmetic, is most of the step (12.7 ms eager on 2 cores, of
which the int4 matmuls are ~4 ms). Inductor fuses the norms, RoPE, SwiGLU and
residual adds into a few generated C++ loops and calls the int4 kernel
directly, from generated C++ rather than Python.

How: each decode step kind (single-sequence over the contiguous cache for `generate`,
decode-only batches of the paged cache for the server) is exported once and built into
an AOTInductor package cached under Preflight's cache directory. The first process on a
machine pays the build (about a minute per kind on 2 cores); every later one loads the
package in seconds, with no tracing. `torch.compile` was used before: it re-traced the
model in every process (~50-65 s of a warm start on 2 cores).

What stays eager: prefill, mixed prefill/decode steps, speculative verification and the
no-KV-cache path (which the with/without-cache study must measure as written). A draft
model of its own (`--speculative draft:FORMAT`) gets its own package: its single-token
drafting forwards are decode-only batches (engine/serving/state.py `compile_draft`).

Numerics: fp32 matches eager to ~1e-6. With bf16 activations (int4/int8/bf16) Inductor's
fused RMSNorm sums in another order; a one-ulp difference can flip a later bf16 rounding,
so hidden values drift slightly over 30 layers, while quality against the fp32 model is
unchanged (docs/BENCHMARKS.md).

CPU only for now: on CUDA the decode steps already run as CUDA graphs (single-stream:
engine/run/cuda_graph.py; the server's decode-only batches: engine/batch/decode_graphs.py),
and the compiled path has not been verified there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.errors import EngineError

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
BUILD_NOTE = "building the compiled decode step (once per machine, about a minute per step kind; --eager skips it)"
"""What a caller shows while a cold cache builds a package: the one wait of the compiled default."""


def inductor_cache_dir() -> str:
    """Where Inductor builds its C++ (and keeps what it can reuse): beside the weight cache."""
    from engine.cache_files import cache_dir

    return str(cache_dir() / "inductor")


def use_preflight_inductor_cache() -> None:
    """Point Inductor at Preflight's cache unless the user chose a directory.

    Torch writes its default into the environment variable the first time anything
    asks for the cache directory (importing `torch._dynamo.utils` does), so a value
    equal to that default is torch's, not the user's, and is replaced.
    """
    current = os.environ.get(CACHE_ENV)
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default = os.path.abspath(default_cache_dir())
    except ImportError:  # a torch without this helper: only fill an unset variable
        torch_default = None
    if current is None or os.path.abspath(current) == torch_default:
        os.environ[CACHE_ENV] = inductor_cache_dir()


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why compiled decode cannot work here, or None. CPU kernels need a C++ compiler on PATH.

    The one rule for "wherever it works": the CLI, the server, the Engine page and the
    bundled target all run compiled exactly when this is None (and `--eager` is not given).
    """
    if device.type != "cpu":
        return (
            f"compiled decode is CPU-only for now; on {device.type} decode runs without it "
            "(on CUDA decode steps replay CUDA graphs instead; PREFLIGHT_CUDA_GRAPHS=0 turns them off)"
        )
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "compiled decode on CPU needs a C++ compiler (g++ or clang++) on PATH; install one for faster decode"
    return None


def compiled_steps_cached(model: Any, kinds: Sequence[Any]) -> bool:
    """Whether `compile_model` will load every package from the cache (seconds) rather than build one (minutes)."""
    from engine.model.aot import packages_cached

    use_preflight_inductor_cache()
    return packages_cached(model, kinds)


def compile_model(
    model: Any, kinds: Sequence[Any], device: torch.device, on_build: Callable[[str], None] | None = None
) -> float:
    """Switch `model` to compiled steps for the given cache kinds; returns the seconds it took.

    Raises EngineError up front when the toolchain is missing, and when a package cannot be
    built, loaded or verified; the model is then left eager and working. `on_build` hears the
    step kind just before a package is built (the one long wait), never for a cached one.
    """
    from engine.model.aot import compile_steps

    reason = compile_unavailable_reason(device)
    if reason is not None:
        raise EngineError(reason)
    use_preflight_inductor_cache()
    blocks = compile_steps(model, kinds, on_build)
    model.enable_compile(blocks)
    return blocks.seconds
