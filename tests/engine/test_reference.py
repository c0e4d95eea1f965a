"""Our fp32 engine against an independent implementation: HF transformers on the same GGUF.

transformers dequantizes the GGUF itself and runs its own Llama code, so
agreement here proves the loader (incl. the Q/K permutation), RoPE, GQA,
norms and the tied head. Token ids come from our tokenizer for both sides.
"""

from __future__ import annotations

import pytest
import torch

from engine.model.gguf_file import bundled_model_path
from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "<|im_start|>user\nWhat is 17 times 23?<|im_end|>\n<|im_start|>assistant\n",
    "Translate to German: The weather is nice today.",
]


@pytest.fixture(scope="module")
def ours() -> Engine:
    return Engine.load(LoadOptions(quant="fp32", device="cpu"))


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    path = bundled_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(ours: Engine, reference: torch.nn.Module, prompt: str) -> None:
    ids = ours.encode_prompt(prompt)
    x = torch.tensor([ids])
    with torch.inference_mode():
        mine = ours.loaded.model(x, 0, None, last_only=False)[0]
        theirs = reference(x).logits[0].float()
    assert mine.shape == theirs.shape
    diff = (mine - theirs).abs().max().item()
    assert diff <= 1e-3, f"max abs logit difference {diff:.2e} for {prompt!r}"


def _reference_greedy(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    """Plain argmax loop over HF's KV cache; EOS is not special (our ignore_eos)."""
    out: list[int] = []
    past = None
    x = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(n):
            step = model(x, cache=past, use_cache=True)
            past = step.cache
            token = int(step.logits[0, -1].argmax())
            out.append(token)
            x = torch.tensor([[token]])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_64_greedy_tokens_match_transformers(ours: Engine, reference: torch.nn.Module, prompt: str) -> None:
    ids = ours.encode_prompt(prompt)
    result = ours.generate(prompt, SamplingParams(max_tokens=64, ignore_eos=True))
    assert result.token_ids == _reference_greedy(reference, ids, 64)
