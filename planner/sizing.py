"""Memory: weights per format, KV cache per token and per sequence, and how many
sequences fit, in vLLM's block arithmetic.

vLLM (REFERENCE.md [V-wk][V-blk][V-kv]):
    available_kv = total x gpu_memory_utilization - (weights + peak activations + non-torch)
    num_blocks   = available_kv // (block_size x KV bytes per token, all layers)
    a sequence of n tokens holds ceil(n / block_size) blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.catalog import FormatSpec
from planner.model_spec import ModelSpec

GIB = 2**30


@dataclass(frozen=True, slots=True)
class WeightBytes:
    """Weights in a format: transformer body (experts included) and token table + head."""

    body: int
    embedding: int

    @property
    def total(self) -> int:
        return self.body + self.embedding


EDGE_LAYERS = 2  # "edge_layers": the first and the last decoder layer


def sixteen_bit_layout_problem(model: ModelSpec, fmt: FormatSpec) -> str | None:
    """Why a mixed-precision layout cannot describe this model (None when it can, or the format has none).

    The layouts name dense-layer parts (attention projections, whole first/last layers); MoE experts
    and MLA's latent projections have no such split in them.
    """
    if fmt.sixteen_bit_parts and (model.moe is not None or model.uses_mla):
        return f"{fmt.label} is a layout of dense checkpoints; {model.name} has MoE or MLA layers"
    return None


def sixteen_bit_params(model: ModelSpec, fmt: FormatSpec) -> int:
    """Body parameters a mixed-precision checkpoint keeps at 16 bits, norms included (0 for a uniform format).

    Meta's FP8 checkpoints quantize only the MLPs of the middle layers: every attention projection and
    the first and last layers stay BF16 (formats.json fbgemm-fp8 cites the layout).
    """
    parts = set(fmt.sixteen_bit_parts)
    if not parts:
        return 0
    problem = sixteen_bit_layout_problem(model, fmt)
    if problem:
        raise ValueError(problem)
    attention_per_layer = model.attention_params // model.n_layers
    edge = min(EDGE_LAYERS, model.n_layers)
    kept = model.norm_params
    if "attention" in parts:
        kept += model.attention_params
    if "edge_layers" in parts:
        kept += edge * model.dense_mlp_params_per_layer
        if "attention" not in parts:
            kept += edge * attention_per_layer
    return kept


def weight_bytes(model: ModelSpec, fmt: FormatSpec) -> WeightBytes:
    """params x bits / 8, with the table and untied head at the format's embedding bits, and the parts a
    mixed-precision checkpoint keeps at 16 bits at 2 bytes."""
    emb_bits = fmt.embedding_bits or fmt.bits_per_weight
    body_params = model.params_total - model.embedding_params
    kept = sixteen_bit_params(model, fmt)
    return WeightBytes(
        body=math.ceil((body_params - kept) * fmt.bits_per_weight / 8) + 2 * kept,
        embedding=math.ceil(model.embedding_params * emb_bits / 8),
    )


def kv_bytes_per_token(model: ModelSpec, kv_dtype_bytes: int = 2) -> int:
    """K and V of one token over all layers: 2 x layers x KV heads x head dim x bytes.

    MLA (DeepSeek) caches one latent of kv_lora_rank plus the shared RoPE key per layer
    instead: layers x (kv_lora_rank + qk_rope_head_dim) x bytes.
    """
    if model.uses_mla:
        return model.n_layers * (model.kv_lora_rank + model.qk_rope_head_dim) * kv_dtype_bytes  # type: ignore[operator]
    return 2 * model.n_layers * model.n_kv_heads * model.head_dim * kv_dtype_bytes


def kv_bytes_per_token_per_device(model: ModelSpec, kv_dtype_bytes: int = 2, tp: int = 1) -> int:
    """One GPU's share under tensor parallelism.

    KV heads split across ranks; with more ranks than KV heads each rank keeps one head
    (vLLM replicates). The MLA latent is not split by heads, so every rank keeps it all.
    """
    per_token = kv_bytes_per_token(model, kv_dtype_bytes)
    if model.uses_mla or tp == 1:
        return per_token
    heads_per_rank = max(1, model.n_kv_heads // tp)
    return per_token * heads_per_rank // model.n_kv_heads


def _blocks(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size)


def kv_bytes_per_sequence(
    model: ModelSpec, tokens: int, kv_dtype_bytes: int = 2, block_size: int = 1, tp: int = 1
) -> int:
    """KV held by one sequence of `tokens`, block-rounded; sliding-window layers keep only the window."""
    per_layer = kv_bytes_per_token_per_device(model, kv_dtype_bytes, tp) // model.n_layers
    swa = model.swa_layers
    full_tokens = _blocks(tokens, block_size) * block_size
    window_tokens = _blocks(min(tokens, model.sliding_window or tokens), block_size) * block_size
    return per_layer * ((model.n_layers - swa) * full_tokens + swa * window_tokens)


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """How an engine budgets memory. `mode`:
    utilization (vLLM, SGLang): KV = total x utilization - weights - activations - overhead;
    free_fraction (TensorRT-LLM): KV = fraction x (total - weights - activations - overhead);
    plain (llama.cpp, bundled): KV = total - weights - fixed overhead, no blocks."""

    mode: str = "utilization"
    utilization: float = 0.9
    kv_free_fraction: float = 0.9
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    chunked_prefill: bool = True
    overhead_min_bytes: int = GIB
    overhead_fraction: float = 0.02
    tp_rank_overhead_bytes: int = 0
    # A fixed non-torch charge (vLLM V1's profile) in place of max(minimum, fraction of VRAM); None: the fraction.
    non_torch_bytes: int | None = None
    # The profile's dummy sampler pass: bytes alive per logit (rows x vocabulary) at its peak (4: fp32 logits,
    # the V0 rule, engines.json vllm_versions "v0"), and whether the profile pass's hidden states (batched
    # tokens x hidden) are still held then (vLLM V1's profile_run).
    sampler_bytes_per_logit: float = 4.0
    sampler_holds_hidden: bool = False
    fixed_overhead_bytes: int = GIB // 2
    # vLLM >= 0.21: its CUDA-graph estimate, taken out of the KV budget (given by the user from a start-up log).
    graph_reserve_bytes: int = 0
    kv_dtype_bytes: int = 2
    act_ffn: float = 3.0
    act_hidden: float = 3.0
    act_bytes: int = 2


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Per-device memory for one replica, and how many sequences its KV cache holds."""

    device_bytes: int
    budget_bytes: int
    weights_bytes: int
    activation_bytes: int
    overhead_bytes: int
    kv_budget_bytes: int
    kv_bytes_per_token: int
    block_size: int
    num_blocks: int
    context: int
    max_seqs_at_context: int
    seq_tokens: int
    max_seqs_at_workload: int

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def fits(self) -> bool:
        """Weights fit and at least one full-context sequence has KV room (vLLM refuses to start otherwise:
        "The model's max seq len (N) is larger than the maximum number of tokens that can be stored in
        KV cache (M)")."""
        return self.kv_budget_bytes > 0 and self.max_seqs_at_context >= 1

    def refusal(self) -> str | None:
        """vLLM's own words when the KV cache cannot hold one max_model_len sequence (None when it can,
        or when the weights alone overflow and there is no KV cache to speak of)."""
        if self.fits or self.kv_budget_bytes <= 0:
            return None
        return (
            f"The model's max seq len ({self.context}) is larger than the maximum number of tokens that can be "
            f"stored in KV cache ({self.kv_tokens}). Try increasing `gpu_memory_utilization` or decreasing "
            "`max_model_len` when initializing the engine."
        )

    def shortfall_bytes(self) -> int:
        """How much more memory per device one full-context sequence would need (0 when it fits)."""
        if self.fits:
            return 0
        one_seq = _blocks(self.context, self.block_size) * self.block_size * self.kv_bytes_per_token
        return max(0, one_seq - self.kv_budget_bytes)


def profiled_tokens(context: int, cfg: MemoryConfig) -> int:
    """Tokens in the profiling forward pass: the batched-token limit as the engine resolved it
    (planner.predict.scheduler_limits; vLLM raises it to max_model_len when chunked prefill is off)."""
    return cfg.max_num_batched_tokens


def sampler_rows(context: int, cfg: MemoryConfig) -> int:
    """Rows of logits the profile samples: one per dummy request, min(max_num_seqs, batched tokens)
    (vLLM V1's _dummy_run: 'num_reqs = min(num_tokens, max_num_reqs)')."""
    return min(cfg.max_num_seqs, profiled_tokens(context, cfg))


def sampler_peak_bytes(model: ModelSpec, cfg: MemoryConfig, context: int = 0) -> int:
    """The dummy sampler pass at its peak: rows x full vocabulary x the bytes its sampler keeps alive per
    logit (every rank samples the all-gathered vocabulary), plus the profile pass's hidden states where
    the engine still holds them (engines.json vllm_versions names each buffer and its source)."""
    tokens = profiled_tokens(context, cfg)
    logits = sampler_rows(context, cfg) * model.vocab_size * cfg.sampler_bytes_per_logit
    hidden = tokens * model.hidden_size * cfg.act_bytes if cfg.sampler_holds_hidden else 0
    return int(logits + hidden)


def activation_bytes(model: ModelSpec, tp: int, cfg: MemoryConfig, context: int = 0) -> int:
    """Peak activations of vLLM's profiling forward pass.

    tokens x (ffn-sized buffers / TP + hidden-sized buffers) x bytes: the MLP's gate+up output and
    activated product dominate the forward pass. The sampler pass over the logits comes after the MLP
    buffers are freed, so the peak is the larger of the two, not their sum (engines.json cites the logs).
    """
    per_token = cfg.act_ffn * model.intermediate_size / tp + cfg.act_hidden * model.hidden_size
    mlp = int(profiled_tokens(context, cfg) * per_token * cfg.act_bytes)
    return max(mlp, sampler_peak_bytes(model, cfg, context))


def overhead_bytes(device_bytes: int, tp: int, cfg: MemoryConfig) -> int:
    """Non-torch memory (CUDA context, cuBLAS): max(minimum, share of VRAM) [VW], or the fixed figure an
    engine version's profile charges (vLLM V1), plus, on every rank of a tensor-parallel group, the NCCL
    and custom all-reduce buffers (engines.json tp_rank_overhead, or the version's own figure)."""
    if cfg.non_torch_bytes is not None:
        base = cfg.non_torch_bytes
    else:
        base = max(cfg.overhead_min_bytes, int(cfg.overhead_fraction * device_bytes))
    return base + (cfg.tp_rank_overhead_bytes if tp > 1 else 0)


def plan_memory(
    model: ModelSpec,
    fmt: FormatSpec,
    device_bytes: int,
    context: int,
    seq_tokens: int,
    cfg: MemoryConfig,
    tp: int = 1,
    pp: int = 1,
) -> MemoryPlan:
    """Fit one replica (TP x PP devices of `device_bytes` each) and count sequences.

    `context` is --max-model-len (the worst case every sequence could reach);
    `seq_tokens` is a typical request (input + output), what the scheduler really holds.
    """
    weights = math.ceil(weight_bytes(model, fmt).total / (tp * pp))
    kv_per_token = kv_bytes_per_token_per_device(model, cfg.kv_dtype_bytes, tp) // pp
    if cfg.mode == "plain":
        budget, act, over = device_bytes, 0, cfg.fixed_overhead_bytes
        kv_budget = budget - weights - over
        block = 1
    else:
        act = activation_bytes(model, tp, cfg, context)
        over = overhead_bytes(device_bytes, tp, cfg)
        if cfg.mode == "utilization":
            budget = int(device_bytes * cfg.utilization)
            over += cfg.graph_reserve_bytes
            kv_budget = budget - weights - act - over
        else:
            budget = device_bytes
            kv_budget = int(cfg.kv_free_fraction * (device_bytes - weights - act - over))
        block = cfg.block_size
    num_blocks = max(0, kv_budget) // (block * kv_per_token)

    def seqs(tokens: int) -> int:
        per_seq = kv_bytes_per_sequence(model, tokens, cfg.kv_dtype_bytes, block, tp) // pp
        return max(0, kv_budget) // per_seq if per_seq else 0

    return MemoryPlan(
        device_bytes=device_bytes,
        budget_bytes=budget,
        weights_bytes=weights,
        activation_bytes=act,
        overhead_bytes=over,
        kv_budget_bytes=kv_budget,
        kv_bytes_per_token=kv_per_token,
        block_size=block,
        num_blocks=num_blocks,
        context=context,
        max_seqs_at_context=seqs(context),
        seq_tokens=seq_tokens,
        max_seqs_at_workload=seqs(seq_tokens),
    )
