"""Every weight of every format against the GGUF, with a reference we did not write.

The reference is the `gguf` package's own dequantization of each tensor in the
bundled file (llama.cpp's Python reader). A format must reproduce it bit for bit
where it keeps the file's values (fp32 everywhere; the Q8_0 table in int8 and
int4; norms in every format) and stay within its own rounding otherwise:
bf16 is exactly the reference rounded to bf16, per-row int8 within half a step,
fp8 within e4m3's half ulp, and int4's Q4_1 codes are kept but its block scale
and zero are stored in bf16 (the packed CPU kernel takes no other dtype beside
bf16 activations), so it is within that rounding of the file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.model.gguf_file import GGUFModelFile
from engine.model.loader import build_from_gguf

gguf = pytest.importorskip("gguf")

BF16_REL = 2.0**-8  # bf16 keeps 8 significant bits: rounding moves a value by at most 2^-9 of it


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row interleave: within each head, pairs (0, 1), (2, 3)... become halves."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, -1).transpose(1, 2).reshape(w.shape)


def _q4_1_bf16_bound(raw: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Per element: what storing Q4_1's d and m + 8d in bf16 may move it (|q - 8| <= 8), from the raw blocks."""
    blocks = raw.reshape(-1, 20)
    d = np.abs(blocks[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32))
    m = blocks[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32)
    per_block = BF16_REL * (8 * d + np.abs(m) + 8 * d) + 1e-7
    return torch.from_numpy(np.repeat(per_block, 32)).reshape(shape)


@pytest.fixture(scope="module")
def reference() -> dict[str, tuple[torch.Tensor, torch.Tensor | None, str]]:
    """Per GGUF tensor: gguf's dequantized float32 (out, in) in our row order, int4's bound for Q4_1, its type."""
    mf = GGUFModelFile(None)
    cfg = mf.config
    out = {}
    for t in gguf.GGUFReader(mf.path).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)).reshape(shape)
        bound = _q4_1_bf16_bound(np.asarray(t.data), shape) if t.tensor_type.name == "Q4_1" else None
        heads = cfg.n_heads if t.name.endswith("attn_q.weight") else cfg.n_kv_heads
        if t.name.endswith(("attn_q.weight", "attn_k.weight")):
            w = _unpermute(w, heads)
            bound = _unpermute(bound, heads) if bound is not None else None
        out[t.name] = (w, bound, t.tensor_type.name)
    return out


def _pairs(n_layers: int) -> list[tuple[str, list[str]]]:
    """Our module (or parameter) name and the GGUF tensors it holds, in order along its rows."""
    pairs = [("embedding.head", ["token_embd.weight"]), ("norm.weight", ["output_norm.weight"])]
    for i in range(n_layers):
        b = f"blk.{i}."
        pairs += [
            (f"layers.{i}.attention.wqkv", [b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"]),
            (f"layers.{i}.attention.wo", [b + "attn_output.weight"]),
            (f"layers.{i}.feed_forward.w13", [b + "ffn_gate.weight", b + "ffn_up.weight"]),
            (f"layers.{i}.feed_forward.w2", [b + "ffn_down.weight"]),
            (f"layers.{i}.attention_norm.weight", [b + "attn_norm.weight"]),
            (f"layers.{i}.ffn_norm.weight", [b + "ffn_norm.weight"]),
        ]
    return pairs


def _check(fmt: str, ours: torch.Tensor, want: torch.Tensor, types: set[str], bound: torch.Tensor | None) -> None:
    lossless = fmt == "fp32" or want.ndim == 1 or (types == {"Q8_0"} and fmt in ("int8", "int4"))
    if lossless:
        assert torch.equal(ours, want)
    elif fmt == "bf16":
        assert torch.equal(ours, want.to(torch.bfloat16).float())
    elif fmt == "int8":  # per-row symmetric: half a step of max|row| / 127
        step = want.abs().amax(dim=1, keepdim=True) / 127
        assert bool(((ours - want).abs() <= step * (0.5 + 1e-5)).all())
    elif fmt == "fp8":  # e4m3: half an ulp (2^-4 of the value), or half the smallest subnormal step
        scale = want.abs().amax(dim=1, keepdim=True) / 448
        assert bool(((ours - want).abs() <= want.abs() / 16 + scale * 2.0**-9 + 1e-12).all())
    else:
        assert fmt == "int4" and types == {"Q4_1"} and bound is not None, f"int4 has no stated tolerance for {types}"
        assert bool(((ours - want).abs() <= bound).all())


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "int4", "fp8"])
def test_every_weight_matches_the_gguf(fmt: str, reference: dict, int4: object) -> None:
    mf = GGUFModelFile(None)
    # int4 is the session's engine (loaded through the weight cache, so its round trip is checked too).
    model = int4.loaded.model if fmt == "int4" else build_from_gguf(mf, fmt, torch.device("cpu"))  # type: ignore[attr-defined]
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    covered: set[str] = set()
    with torch.no_grad():
        for name, tensors in _pairs(mf.config.n_layers):
            want = torch.cat([reference[t][0] for t in tensors])
            ours = params[name].float() if name in params else modules[name].dequantized()
            assert ours.shape == want.shape, name
            types = {reference[t][2] for t in tensors}
            bound = torch.cat([reference[t][1] for t in tensors]) if types == {"Q4_1"} else None
            _check(fmt, ours, want, types, bound)
            covered.update(tensors)
        assert covered == set(reference), "a GGUF tensor has no engine counterpart"
        ids = torch.tensor([[0, 1, 2, 17, 49151]])
        rows = model.embedding.lookup(ids)[0].float()
        table = reference["token_embd.weight"][0][ids[0]]
        if fmt in ("fp32", "int8", "int4"):
            assert torch.equal(rows, table)  # the lookup reads the same exact values as the head
