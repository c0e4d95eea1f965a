"""The server's load state: loading, ready or failed, and what handlers need once it is ready.

Apart from the app and the routes so that both route modules (control and OpenAI) can read it
without importing each other or the app that includes them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from engine.batch.batch_engine import BatchConfig, BatchEngine
from engine.batch.loop import BatchLoop
from engine.errors import first_line
from engine.model.loader import LoadedModel, load_model
from engine.run.runtime import Engine
from engine.serving.errors import APIError
from engine.serving.metrics import ServerMetrics
from engine.serving.options import ServerOptions
from engine.serving.step_log import StepLog

logger = logging.getLogger("preflight.server")


def batch_config(options: ServerOptions, loaded: LoadedModel, draft: LoadedModel | None = None) -> BatchConfig:
    """Serving limits for BatchEngine; the default KV pool always holds one full-length sequence.

    With a draft model `--kv-cache-bytes` covers both pools (the draft's mirrors the target's blocks).
    """
    ctx = loaded.config.context_length
    max_len = min(options.max_model_len or ctx, ctx)
    defaults = BatchConfig()
    block_size = defaults.block_size
    per_block = defaults.bytes_per_block(loaded, draft)
    kv_bytes = options.kv_cache_bytes or max(defaults.kv_cache_bytes, math.ceil(max_len / block_size) * per_block)
    return BatchConfig(
        max_num_seqs=options.max_num_seqs,
        max_model_len=max_len,
        max_num_batched_tokens=max(512, options.max_num_seqs),
        max_queue=options.max_queue,
        block_size=block_size,
        kv_cache_bytes=kv_bytes,
        speculative_tokens=options.num_speculative_tokens if options.speculative_method.kind != "none" else 0,
    )


def load_draft(options: ServerOptions, target: LoadedModel) -> LoadedModel | None:
    """The draft model of `--speculative draft:FORMAT`: the served file in FORMAT, on the target's device.

    A draft in the target's own format shares the target's weights (no second copy).
    """
    fmt = options.speculative_method.draft_format
    if fmt is None:
        return None
    if fmt == target.fmt:
        logger.warning("the draft format is the target's own (%s): drafts cost as much as decoding, no speed-up", fmt)
        return target
    return load_model(options.model, fmt, str(target.device), options.use_weight_cache)


def build_batch_engine(options: ServerOptions, target: LoadedModel) -> BatchEngine:
    """The server's batch engine over a loaded target, with the draft model `--speculative draft:FORMAT` asks for.

    The one way to build it: the server's load thread, and `generate --speculative` for its single request.
    """
    draft = load_draft(options, target)
    return BatchEngine(target, batch_config(options, target, draft), draft)


def draft_model(llm: BatchEngine) -> LoadedModel | None:
    """The draft model with weights of its own, None without one (or when it shares the target's)."""
    drafter = llm.draft_model
    if drafter is None or drafter.draft is llm.loaded:
        return None
    return drafter.draft


def compile_draft(llm: BatchEngine, on_build: Callable[[str], None] | None = None) -> str | None:
    """Compile the draft model's decode step: None when compiled (or there is nothing to compile), else why not.

    Its k - 1 single-token forwards per step are decode-only batches over its paged pool, the one
    kind a compiled step runs (the target's verification of k + 1 tokens stays eager). Called once
    the target compiled; a draft that cannot compile drafts eagerly, which is slower, never wrong.
    """
    draft = draft_model(llm)
    return None if draft is None else Engine(draft).compile_by_default(serving=True, on_build=on_build)


class ServerStatus(Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Serving:
    """What handlers need once the model is loaded."""

    engine: Engine
    loop: BatchLoop
    max_model_len: int


class ServerState:
    """Load status, the engine loop once loaded, and the per-app metrics."""

    def __init__(
        self,
        options: ServerOptions,
        model_name: str,
        load: Callable[[], Engine],
        on_load_failed: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.model_name = model_name
        self.metrics = ServerMetrics(model_name)
        # Opened here, before the port is bound: a path that cannot be written is one line at start-up.
        self.step_log = StepLog(options.step_log) if options.step_log else None
        self.created = int(time.time())
        self.status = ServerStatus.LOADING
        self.phase = "loading the weights"  # what the load thread is doing: /health's 503 says it
        self.serving: Serving | None = None
        self._load = load
        self._on_load_failed = on_load_failed

    def start_loading(self) -> None:
        threading.Thread(target=self._load_model, name="preflight-load", daemon=True).start()

    def _load_model(self) -> None:
        t0 = time.perf_counter()
        try:
            engine = self._load()
            llm = build_batch_engine(self.options, engine.loaded)
            # After the serving limits are checked (a bad one fails in seconds, not after a build) and
            # before /health turns 200, so that no request waits on the compiler.
            if self.options.compile:
                self._compile(engine, llm)
            self._capture_graphs(llm)
            loop = BatchLoop(llm, self.metrics.on_step, *([self.step_log] if self.step_log is not None else []))
            loop.start()
        except Exception as exc:  # any load failure: one line, then the server exits non-zero
            self.status = ServerStatus.FAILED
            logger.error("error: the model failed to load: %s", exc)
            if self._on_load_failed is not None:
                self._on_load_failed()
            return
        self.serving = Serving(engine, loop, llm.max_model_len)
        self.status = ServerStatus.READY
        info = engine.info
        spec = self.options.speculative_method
        logger.info(
            "model %s ready: %s on %s, %s decode, max_model_len %d, %d KV blocks, speculative %s, loaded in %.1f s",
            self.model_name,
            info.weights_label,
            info.device,
            info.decode,
            llm.max_model_len,
            llm.scheduler.config.num_kv_blocks,
            f"{spec} k={llm.config.speculative_tokens}" if spec.kind != "none" else "off",
            time.perf_counter() - t0,
        )

    def _compile(self, engine: Engine, llm: BatchEngine) -> None:
        """The compiled default in the load thread: the HTTP server keeps answering (/health: 503 loading).

        A cold build is said in the log and in /health's 503; where compiled decode cannot work or
        its build fails, the server serves eager and says why in the log and in /health. A draft
        model of its own compiles after the target (`compile_draft`).
        """

        def on_build(note: str) -> None:
            self.phase = note
            logger.info("%s", note)

        self.phase = "loading the compiled decode step"
        reason = engine.compile_by_default(serving=True, on_build=on_build)
        if reason is None:
            logger.info("compiled decode step ready in %.1f s", engine.info.compile_s or 0.0)
        else:
            logger.info("serving with eager decode: %s", reason)  # correct, only slower: not an error
            return
        if draft_model(llm) is not None:
            self.phase = "loading the draft model's compiled decode step"
            reason = compile_draft(llm, on_build)
            if reason is None:
                logger.info("the draft model's compiled decode step is ready")
            else:
                logger.info("the draft model drafts with eager decode: %s", reason)

    def _capture_graphs(self, llm: BatchEngine) -> None:
        """On CUDA: every decode-step graph captured before /health turns 200, as vLLM captures its own at start-up,
        so that no request's step waits on a capture (batch/decode_graphs.py). A capture that fails leaves the
        server decoding eagerly, slower and never wrong, and says so."""
        captured = [graphs for graphs in llm.decode_graphs if graphs.capture]
        if not captured:
            return
        self.phase = "capturing the CUDA graphs of decode"
        t0 = time.perf_counter()
        try:
            count = sum(graphs.capture_all() for graphs in captured)  # the target's, and a draft model's
        except Exception as exc:  # out of memory, or an op that cannot be captured: the eager step still works
            llm.drop_graphs()
            logger.warning("serving with eager batched decode: capturing its CUDA graphs failed (%s)", first_line(exc))
            return
        logger.info("captured %d CUDA graphs of decode in %.1f s", count, time.perf_counter() - t0)

    def health(self) -> dict[str, object]:
        """GET /health's 200 body: ok and how the engine decodes (eager_reason: why the compiled default did not)."""
        serving = self.require()
        info = serving.engine.info
        body: dict[str, object] = {"status": "ok", "decode": info.decode}
        if info.eager_reason is not None:
            body["eager_reason"] = info.eager_reason
        return body

    def require(self) -> Serving:
        """The loaded engine, or a 503 that says why there is none."""
        if self.status is ServerStatus.LOADING:
            raise APIError(
                503,
                f"the model is still loading: {self.phase}. Retry when GET /health answers 200",
                "model_loading",
                headers={"Retry-After": "5"},
            )
        if self.status is ServerStatus.FAILED or self.serving is None:
            raise APIError(503, "the model failed to load; see the server log", "model_load_failed")
        if not self.serving.loop.alive:
            raise APIError(503, "the engine has stopped; restart the server", "engine_stopped")
        return self.serving

    def check_model(self, requested: str) -> None:
        if requested != self.model_name:
            raise APIError(
                404,
                f"model {requested[:100]!r} does not exist: this server serves {self.model_name!r}",
                "model_not_found",
                "model",
            )

    def shutdown(self, timeout_s: float = 10.0) -> None:
        if self.serving is not None and not self.serving.loop.stop(timeout_s):
            logger.warning("the engine thread did not stop within %.0f s", timeout_s)
        if self.step_log is not None:
            self.step_log.close()

    def model_card(self) -> dict[str, object]:
        serving = self.require()
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "preflight",
            "max_model_len": serving.max_model_len,
        }
