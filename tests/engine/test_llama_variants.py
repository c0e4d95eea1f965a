"""Any Llama-architecture GGUF, not just SmolLM2: a tiny TinyLlama-shaped file written here.

It differs from the bundled model in every way the loader must handle: an
untied output head, F16 and Q8_0 tensors (no Q4_1, so int4 re-quantizes),
RoPE theta 10000, a GQA ratio of 2, a sentencepiece vocabulary. Its Q/K
weights are stored permuted exactly as llama.cpp's converter does, and the
reference is HF transformers' LlamaForCausalLM built from the un-permuted
weights, so agreement proves the permutation handling on a second shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.run.runtime import Engine, LoadOptions
from engine.sampling import SamplingParams

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS, CTX, THETA = 64, 4, 2, 128, 2, 256, 10000.0
PIECES = ["▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁a", "▁dog", "s", "."]
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES
TYPES = [2, 3, 3] + [6] * 256 + [1] * len(PIECES)
SCORES = [0.0] * 259 + [-float(i) for i in range(len(PIECES))]
VOCAB = len(TOKENS)


def _permute_like_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: within each head, interleave the two rotary halves."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def mat(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    w = {"token_embd.weight": mat(VOCAB, HIDDEN), "output.weight": mat(VOCAB, HIDDEN)}
    w["output_norm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    for i in range(LAYERS):
        p = f"blk.{i}."
        w[p + "attn_q.weight"] = mat(HEADS * head_dim, HIDDEN)
        w[p + "attn_k.weight"] = mat(KV_HEADS * head_dim, HIDDEN)
        w[p + "attn_v.weight"] = mat(KV_HEADS * head_dim, HIDDEN)
        w[p + "attn_output.weight"] = mat(HIDDEN, HEADS * head_dim)
        w[p + "ffn_gate.weight"] = mat(FFN, HIDDEN)
        w[p + "ffn_up.weight"] = mat(FFN, HIDDEN)
        w[p + "ffn_down.weight"] = mat(HIDDEN, FFN)
        w[p + "attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        w[p + "ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    return w


def _stored(name: str, w: np.ndarray) -> tuple[np.ndarray, object | None]:
    """What goes into the file: norms F32, FFN as Q8_0, the rest F16; Q/K permuted first."""
    if name.endswith("attn_q.weight"):
        w = _permute_like_llama_cpp(w, HEADS)
    elif name.endswith("attn_k.weight"):
        w = _permute_like_llama_cpp(w, KV_HEADS)
    if w.ndim == 1:
        return w, None
    if "ffn_" in name:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(w, q8), q8
    return w.astype(np.float16), None


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    weights = _weights()
    path = tmp_path_factory.mktemp("tinyllama") / "tiny-llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_block_count(LAYERS)
    writer.add_embedding_length(HIDDEN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_feed_forward_length(FFN)
    writer.add_context_length(CTX)
    writer.add_rope_freq_base(THETA)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_types(TYPES)
    writer.add_token_scores(SCORES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    for name, w in weights.items():
        data, raw = _stored(name, w)
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, weights


def _reference(weights: dict[str, np.ndarray]) -> torch.nn.Module:
    """HF Llama over the same values the file holds (F16 / Q8_0 rounding applied, un-permuted)."""
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CTX,
        rope_theta=THETA,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()

    def val(name: str) -> torch.Tensor:
        data, raw = _stored(name, weights[name])
        arr = gguf.quants.dequantize(data, raw) if raw is not None else data.astype(np.float32)
        arr = arr.reshape(weights[name].shape)
        if name.endswith("attn_q.weight") or name.endswith("attn_k.weight"):
            return _unpermute(name, arr)
        return torch.from_numpy(np.ascontiguousarray(arr)).float()

    sd = {"model.embed_tokens.weight": val("token_embd.weight"), "lm_head.weight": val("output.weight")}
    sd["model.norm.weight"] = val("output_norm.weight")
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(LAYERS):
        for hf, ours in names.items():
            sd[f"model.layers.{i}.{hf}.weight"] = val(f"blk.{i}.{ours}.weight")
    model.load_state_dict(sd, strict=True)
    return model


def _unpermute(name: str, stored: np.ndarray) -> torch.Tensor:
    heads = HEADS if name.endswith("attn_q.weight") else KV_HEADS
    w = stored.reshape(heads, stored.shape[0] // heads // 2, 2, stored.shape[1]).swapaxes(1, 2)
    return torch.from_numpy(np.ascontiguousarray(w.reshape(stored.shape))).float()


def test_tiny_llama_matches_transformers(tiny_llama: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, weights = tiny_llama
    engine = Engine.load(LoadOptions(quant="fp32", model_path=str(path), device="cpu"))
    assert not engine.info.config.tied_embeddings
    assert engine.info.config.rope_theta == THETA
    ids = engine.encode_prompt("the cat sat on the mat. a dog sats")
    assert ids[0] == 1  # sentencepiece models add BOS
    x = torch.tensor([ids])
    with torch.inference_mode():
        mine = engine.loaded.model(x, 0, None, last_only=False)[0]
        theirs = _reference(weights)(x).logits[0]
    assert (mine - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4", "fp8"])
def test_tiny_llama_loads_in_every_format(tiny_llama: tuple[Path, dict[str, np.ndarray]], fmt: str) -> None:
    path, _ = tiny_llama
    engine = Engine.load(LoadOptions(quant=fmt, model_path=str(path), device="cpu"))
    result = engine.generate("the cat", SamplingParams(max_tokens=8, ignore_eos=True))
    assert result.completion_tokens == 8
    reference = Engine.load(LoadOptions(quant="fp32", model_path=str(path), device="cpu"))
    ids = torch.tensor([reference.encode_prompt("the cat sat on the mat")])
    with torch.inference_mode():
        ref = reference.loaded.model(ids, 0, None, last_only=False).softmax(-1)
        got = engine.loaded.model(ids, 0, None, last_only=False).softmax(-1)
    # Quantization moves probabilities a little, never wildly, on a random model.
    assert (ref - got).abs().max().item() < 0.1
