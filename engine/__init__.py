"""Preflight's bundled inference engine: a pure-PyTorch Llama runner for GGUF files.

Public names: `Engine` and `LoadOptions` (single-stream generation, `engine.run.runtime`),
`SamplingParams` (`engine.sampling`) and `EngineError` (`engine.errors`). The sub-packages,
innermost first: `quant` (weight formats), `model` (the GGUF file, tokenizer, transformer),
`run` (single-stream Engine), `batch` (continuous batching), then `serving` (the HTTP server),
`studies` and `compress` (GPTQ, pruning, low-rank into a weights directory), which the first four
never import.

`Engine`, `LoadOptions` and `SamplingParams` are imported on first use, not here: checks and
the widgets import `engine.formats` (and the errors) without paying for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.run.runtime import Engine, LoadOptions
    from engine.sampling import SamplingParams

__all__ = ["Engine", "EngineError", "LoadOptions", "SamplingParams"]


def __getattr__(name: str) -> object:
    if name in ("Engine", "LoadOptions"):
        from engine.run import runtime

        return getattr(runtime, name)
    if name == "SamplingParams":
        from engine.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
