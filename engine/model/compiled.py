"""Opt-in `torch.compile` of the transformer blocks (`--compile`).

Why: at 135M parameters a decode step is ~1,600 small aten calls, and their
dispatch, not arithmetic, is most of the step (12.7 ms eager on 2 cores, of
which the int4 matmuls are ~4 ms). Inductor fuses the norms, RoPE, SwiGLU and
residual adds into a few generated C++ loops and calls the int4 kernel
directly: the same step took 7.1 ms (see docs/BENCHMARKS.md).

Why opt-in: compiling costs 3-4 minutes on 2 cores the first time (two graphs:
prefill and decode for `generate`; decode of one and of several sequences for
the server) and ~50 s in a later process, which reuses Inductor's on-disk cache
under Preflight's cache directory but must still trace the model. The dashboard's
default engine and the studies stay eager.

What is compiled: the embedding lookup and the 30 blocks (`Transformer._run_blocks`),
only where shapes are regular: the contiguous KVCache, and decode-only paged steps.
Mixed prefill/decode paged steps, whose per-segment loop would recompile for
every segment count, run eagerly; so does the no-KV-cache path, which the
with/without-cache study must measure as written. Inductor's C++ wrapper is on:
it calls the kernels from generated C++ instead of Python, which measured ~9%
faster decode (124 -> 135 tok/s) for a slower first compile.

Numerics: fp32 matches eager to ~3e-5 in the logits. With bf16 activations
(int4/int8/bf16) Inductor's fused RMSNorm sums in another order; a one-ulp
difference can flip a later bf16 rounding, so logits drift by up to ~1 over 30
layers, but quality against the fp32 model is unchanged (mean KL 0.0082 vs
0.0083 nats, same top-1 agreement on the shipped evaluation text).

CPU only for now: on CUDA the single-stream decode step already runs as a CUDA
graph (engine/run/cuda_graph.py), and the compiled path has not been verified there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import torch

from engine.errors import EngineError

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
WARMUP_PROMPT_IDS = list(range(16, 24))  # any 8 in-vocabulary ids: a warm-up traces shapes, not text


def inductor_cache_dir() -> str:
    """Where Inductor keeps generated kernels: beside the weight cache, so a warm compile is fast."""
    from engine.model.weight_cache import cache_dir

    return str(cache_dir() / "inductor")


def _use_preflight_cache_dir() -> None:
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
    """Why `--compile` cannot work here, or None. CPU kernels need a C++ compiler on PATH."""
    if device.type != "cpu":
        return (
            f"--compile is CPU-only for now; on {device.type} drop it (on CUDA the decode step already "
            "runs as a CUDA graph)"
        )
    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        return "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH; install one or drop --compile"
    return None


def compile_function(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    """`fn` compiled by Inductor with dynamic shapes (token count, context length, batch).

    Raises EngineError up front when the toolchain is missing, rather than on the
    first request. Sizes 0 and 1 are still specialised by Dynamo, so single-token
    decode and single-sequence batches get graphs of their own.
    """
    reason = compile_unavailable_reason(device)
    if reason is not None:
        raise EngineError(reason)
    _use_preflight_cache_dir()
    return torch.compile(fn, dynamic=True, fullgraph=True, options={"cpp_wrapper": True})
