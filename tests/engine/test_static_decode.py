"""The CUDA-graph decode step's math, run eagerly on CPU so CI checks it without a GPU.

`CudaGraphDecoder(capture=False)` runs exactly the step a graph would record: device-side
position, `index_copy_` K/V writes, attention over the whole fixed-capacity cache with the
unfilled slots masked. fp32 greedy decoding through it must equal the engine's own path.
"""

from __future__ import annotations

import pytest
import torch

from engine.batch.decode_graphs import graph_capacity
from engine.run.cuda_graph import CudaGraphDecoder
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def fp32() -> Engine:
    return Engine.load(LoadOptions(quant="fp32", device="cpu"))


def _greedy(decoder: CudaGraphDecoder, prompt: list[int], n: int) -> list[int]:
    decoder.reset()
    out: list[int] = []
    seq = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(n):
            token = int(decoder.forward(seq)[0, -1].argmax())
            out.append(token)
            seq = torch.tensor([[token]])
    return out


@pytest.mark.parametrize("prompt", ["The capital of France is", "Hi", "def fib(n):\n    "])
def test_static_step_matches_the_engine(fp32: Engine, prompt: str) -> None:
    ids = fp32.encode_prompt(prompt)
    want = fp32.generate(prompt, SamplingParams(max_tokens=20, ignore_eos=True)).token_ids
    decoder = CudaGraphDecoder(fp32.loaded.model, graph_capacity(len(ids) + 20, 8192), capture=False)
    assert _greedy(decoder, ids, 20) == want
    assert _greedy(decoder, ids, 20) == want  # reused after reset: stale K/V stay masked


def test_capacity_rounding_and_limits(fp32: Engine) -> None:
    assert [graph_capacity(n, 8192) for n in (1, 256, 257, 3000)] == [256, 256, 512, 4096]
    assert graph_capacity(9000, 8192) == 8192
    decoder = CudaGraphDecoder(fp32.loaded.model, 256, capture=False)
    with pytest.raises(ValueError, match="capacity 256 exceeded"):
        decoder.forward(torch.zeros((1, 257), dtype=torch.long))
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device"):
        CudaGraphDecoder(fp32.loaded.model, 256)
