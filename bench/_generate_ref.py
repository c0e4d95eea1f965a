"""The engine's own single-stream `generate` decode, the reference a server's single stream is held to.

bench/serve_load.py and bench/single_stream.py both compare one stream through `python -m engine serve`
with it, so both set it up here: int4 on the CPU with the server's threads, compiled or eager like the
server, the evaluation text's first `input_len` tokens as the prompt, `output_len` tokens out past EOS,
greedy. The server side is sent GREEDY for the same work per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from checks.load.client import RequestOptions

GREEDY = RequestOptions(temperature=0.0)
"""The load generator's requests: greedy, as `generate` decodes."""


@dataclass(frozen=True, slots=True)
class GenerateReference:
    engine: Any  # engine.run.runtime.Engine (imported on load: torch stays out of the parent process)
    prompt: list[int]
    params: Any  # engine.sampling.SamplingParams

    @classmethod
    def load(cls, threads: int, input_len: int, output_len: int, compile: bool) -> GenerateReference:
        import torch

        from engine.run.runtime import Engine, LoadOptions
        from engine.sampling import SamplingParams
        from engine.studies.base import eval_ids

        torch.set_num_threads(threads)
        engine = Engine.load(LoadOptions(quant="int4", device="cpu", compile=compile))
        prompt = eval_ids(engine.loaded.tokenizer, input_len)[:input_len]
        return cls(engine, prompt, SamplingParams(max_tokens=output_len, ignore_eos=True))

    def decode_tok_s(self) -> float:
        """One greedy decode of the prompt; its decode tok/s (prefill excluded)."""
        return self.engine.stream_ids(self.prompt, self.params).drain().decode_tok_s
