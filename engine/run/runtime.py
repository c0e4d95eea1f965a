"""The engine as callers use it: load once, then generate or stream text.

`Engine.stream()` returns a `Generation`: iterate it for text deltas (what a
chat UI shows), then read `.result` for token ids, logprobs and timings. The
CLI, the dashboard and the studies all go through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from engine.batch.decode_graphs import cuda_graphs_enabled, graph_capacity
from engine.batch.paged_cache import PagedBatch
from engine.errors import EngineError, PromptError
from engine.model.chat_template import TemplateLimits
from engine.model.compiled import BUILD_NOTE, compile_model, compile_unavailable_reason
from engine.model.config import ModelConfig
from engine.model.loader import LoadedModel, load_model
from engine.run.cuda_graph import CudaGraphDecoder
from engine.run.kv_cache import KVCache
from engine.sampling import SamplingParams, make_generator, sample_token
from engine.text_stream import TextStream


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What to load and where. `model_path=None` means the bundled SmolLM2 file.

    `weights_dir`: a directory written by `python -m engine compress`; the format is then the
    directory's, and `quant` may be None or must name it.
    """

    quant: str | None = "int4"
    model_path: str | None = None
    device: str = "auto"
    use_cache: bool = True
    # Compiled decode steps (engine/model/compiled.py), loaded or built by Engine.load; an error when they
    # cannot be. Off for library callers (studies, tests) that measure or check the model as written; the
    # CLI, the server and the Engine page use compiled decode by default through `Engine.compile_by_default`.
    compile: bool = False
    weights_dir: str | None = None


@dataclass(frozen=True, slots=True)
class LoadInfo:
    """Evidence about a load, shown on the Engine page and in `info --json`."""

    quant: str
    device: str
    source: str
    load_s: float
    weight_bytes: int
    gguf_bytes: int
    gguf_path: str
    kernel_notes: tuple[str, ...]
    model_name: str
    config: ModelConfig
    compile_s: float | None = None  # time to load (or build) the compiled decode steps (None: eager)
    eager_reason: str | None = None  # why the compiled default did not run here (None: compiled, or eager asked for)
    weights_dir: str | None = None  # where the weights came from when they are a compressed directory
    recipe: dict[str, Any] | None = None  # that directory's recipe (method, settings, per-layer figures)

    @property
    def decode(self) -> str:
        """How the decode steps run: 'compiled' or 'eager' (shown by /health, `generate --json`, the Engine page)."""
        return "eager" if self.compile_s is None else "compiled"

    @property
    def weights_label(self) -> str:
        """The format, and with a weights directory the method that made it: 'int4 (gptq)'."""
        method = (self.recipe or {}).get("settings", {}).get("method") if self.recipe else None
        return f"{self.quant} ({method})" if method else self.quant


@dataclass(slots=True)
class GenerationResult:
    """One finished request. Rates are None when there was nothing to time."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" | "length"
    prefill_s: float
    decode_s: float
    logprobs: list[float] | None = None
    kv_cache: bool = True

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prefill_tok_s(self) -> float | None:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else None

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens after the first over the time spent producing them (the first comes with prefill)."""
        n = self.completion_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else None

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs,
            "kv_cache": self.kv_cache,
            "timings": {
                "prefill_s": self.prefill_s,
                "decode_s": self.decode_s,
                "prefill_tok_s": self.prefill_tok_s,
                "decode_tok_s": self.decode_tok_s,
            },
        }


class Generation:
    """A single request being decoded; iterating yields text deltas as they become final."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams, use_kv_cache: bool) -> None:
        self._engine = engine
        self._prompt = prompt_ids
        self._params = params
        self._use_kv = use_kv_cache
        self.result: GenerationResult | None = None

    def drain(self) -> GenerationResult:
        """Run the generation to its end without showing the text, and return its result.

        For callers that want only the result (`Engine.generate`, the studies, benchmarks).
        Each iteration decodes from the start, so drain a fresh `Generation`, not one
        already partly iterated.
        """
        for _ in self:
            pass
        if self.result is None:
            raise EngineError("generation ended without a result")
        return self.result

    def __iter__(self) -> Iterator[str]:
        eng, params = self._engine, self._params
        model, tok = eng.loaded.model, eng.loaded.tokenizer
        device = eng.loaded.device
        stop_ids = frozenset() if params.ignore_eos else tok.stop_token_ids
        text = TextStream(tok.stream_decoder(), params.stop)
        rng = make_generator(params.seed, device)
        needed = len(self._prompt) + params.max_tokens
        graphed = eng.graph_decoder(needed) if self._use_kv else None
        cache = KVCache(model.config, 1, needed, model.act_dtype, device) if self._use_kv and graphed is None else None
        ids: list[int] = []
        logprobs: list[float] = []
        finish = "length"
        seq = torch.tensor([self._prompt], dtype=torch.long, device=device)
        t0 = time.perf_counter()
        prefill_s = 0.0
        for step in range(params.max_tokens):
            with torch.inference_mode():
                if graphed is not None:
                    logits = graphed.forward(seq)
                elif cache is None:
                    logits = model(seq, 0, None)
                else:
                    start = cache.length
                    logits = model(seq, start, cache)
                    cache.advance(seq.shape[1])
            token, lp = sample_token(logits[0, -1], params, rng, self._prompt + ids)
            if step == 0:
                prefill_s = time.perf_counter() - t0
            if token in stop_ids:
                finish = "stop"
                text.flush()  # the sequence ended: bytes of a cut-off character show as U+FFFD, as the server does
                break
            ids.append(token)
            if lp is not None:
                logprobs.append(lp)
            if text.push(token):
                finish = "stop"
                break
            if final := text.take():
                yield final
            new = torch.tensor([[token]], dtype=torch.long, device=device)
            seq = new if self._use_kv else torch.cat([seq, new], dim=1)
        else:
            text.flush()
        if tail := text.rest():
            yield tail
        total = time.perf_counter() - t0
        self.result = GenerationResult(
            text=text.text,
            token_ids=ids,
            prompt_tokens=len(self._prompt),
            finish_reason=finish,
            prefill_s=prefill_s,
            decode_s=total - prefill_s,
            logprobs=logprobs if params.logprobs else None,
            kv_cache=self._use_kv,
        )


def _step_kinds(serving: bool) -> list[type]:
    """The decode step kind compiled: batches over the paged cache (the server) or one sequence (`generate`)."""
    return [PagedBatch] if serving else [KVCache]


@dataclass(slots=True)
class Engine:
    """A loaded model plus its tokenizer; one request at a time (the server adds batching)."""

    loaded: LoadedModel
    cuda_graphs: bool = field(default_factory=cuda_graphs_enabled)
    info: LoadInfo = field(init=False)
    _decoders: dict[int, CudaGraphDecoder] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        lm = self.loaded
        self.info = LoadInfo(
            quant=lm.fmt,
            device=str(lm.device),
            source=lm.source,
            load_s=lm.load_s,
            weight_bytes=lm.weight_bytes,
            gguf_bytes=lm.gguf_bytes,
            gguf_path=lm.gguf_path,
            kernel_notes=tuple(lm.kernel_notes),
            model_name=lm.config.name,
            config=lm.config,
            weights_dir=lm.weights_dir,
            recipe=lm.recipe,
        )

    @classmethod
    def load(cls, options: LoadOptions | None = None) -> Engine:
        opts = options or LoadOptions()
        engine = cls(load_model(opts.model_path, opts.quant, opts.device, opts.use_cache, opts.weights_dir))
        if opts.compile:
            engine.compile()
        return engine

    def compile(self, serving: bool = False, on_build: Callable[[str], None] | None = None) -> float:
        """Switch to compiled decode steps now (engine/model/compiled.py); returns the seconds it took.

        `generate` decodes one sequence over the contiguous cache; the server (`serving`)
        decodes batches over the paged cache: each gets the package of its own step kind,
        loaded from the cache or built there first, and checked against the eager model
        before any request runs on it. `on_build` hears the step kind just before a package is built.
        """
        seconds = compile_model(self.loaded.model, _step_kinds(serving), self.loaded.device, on_build)
        self.info = replace(self.info, compile_s=seconds)
        return seconds

    def compile_by_default(self, serving: bool = False, on_build: Callable[[str], None] | None = None) -> str | None:
        """The default decode: compiled wherever it works. None when compiled, else why it runs eager.

        Where compiled decode cannot work (no C++ compiler, not a CPU) or its build fails, the
        engine stays eager and working, and the reason is kept in `info.eager_reason` for the
        caller to show as one line, not an error: eager decode is correct, only slower.
        `on_build` hears `BUILD_NOTE` when the package loader starts a build, the one long wait (about
        a minute per step kind on 2 cores); a warm cache loads in seconds and says nothing.
        """
        reason = compile_unavailable_reason(self.loaded.device)
        if reason is None:
            notice = (lambda _kind: on_build(BUILD_NOTE)) if on_build is not None else None
            try:
                self.compile(serving, notice)
            except EngineError as exc:
                reason = f"the compiled decode step could not be used: {exc}"
        self.info = replace(self.info, eager_reason=reason)
        return reason

    @property
    def load_info(self) -> LoadInfo:
        return self.info

    def graph_decoder(self, needed: int) -> CudaGraphDecoder | None:
        """A reset CUDA-graph decoder with room for `needed` positions, or None off CUDA / when disabled.

        Decoders are kept per capacity (powers of two), so a graph is captured once per size.
        """
        if not self.cuda_graphs or self.loaded.device.type != "cuda":
            return None
        capacity = graph_capacity(needed, self.loaded.config.context_length)
        decoder = self._decoders.get(capacity)
        if decoder is None:
            decoder = self._decoders[capacity] = CudaGraphDecoder(self.loaded.model, capacity)
        decoder.reset()
        return decoder

    def encode_prompt(
        self, prompt: str | list[dict], chat: bool = False, limits: TemplateLimits | None = None
    ) -> list[int]:
        """Token ids for a raw prompt, or for messages rendered with the model's chat template (within `limits`)."""
        tok = self.loaded.tokenizer
        if chat or isinstance(prompt, list):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return tok.encode_chat(messages, add_generation_prompt=True, limits=limits)
        if not prompt:
            raise PromptError("the prompt is empty: give at least one token of text")
        return tok.encode(prompt)

    def check_fits(self, n_prompt: int, max_tokens: int) -> None:
        """Prompt plus requested output must fit the context; the message gives both counts."""
        ctx = self.loaded.config.context_length
        if n_prompt == 0:
            raise PromptError("the prompt encodes to no tokens")
        if n_prompt + max_tokens > ctx:
            raise PromptError(
                f"prompt of {n_prompt} tokens plus max_tokens {max_tokens} exceeds the model context of {ctx} tokens"
            )

    def stream(
        self,
        prompt: str | list[dict],
        params: SamplingParams | None = None,
        chat: bool = False,
        use_kv_cache: bool = True,
    ) -> Generation:
        params = params or SamplingParams()
        ids = self.encode_prompt(prompt, chat)
        self.check_fits(len(ids), params.max_tokens)
        return Generation(self, ids, params, use_kv_cache)

    def stream_ids(self, prompt_ids: list[int], params: SamplingParams, use_kv_cache: bool = True) -> Generation:
        """Like `stream` for callers that tokenized already (studies, benchmarks)."""
        self.check_fits(len(prompt_ids), params.max_tokens)
        return Generation(self, list(prompt_ids), params, use_kv_cache)

    def generate(
        self,
        prompt: str | list[dict],
        params: SamplingParams | None = None,
        chat: bool = False,
        use_kv_cache: bool = True,
    ) -> GenerationResult:
        return self.stream(prompt, params, chat, use_kv_cache).drain()
