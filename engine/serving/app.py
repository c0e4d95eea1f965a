"""The OpenAI-compatible HTTP server: `python -m engine serve`.

`create_app(options)` builds a FastAPI app that starts listening at once and
loads the model on a background thread, so `GET /health` really answers 503
while loading and 200 when ready. `run_server(options)` runs it under
uvicorn; SIGTERM stops accepting connections, lets in-flight requests finish
within `--grace-period`, stops the engine thread and exits 0.

Routes: /health, /version, /metrics, /v1/models (and /v1/models/{id}) here;
/v1/completions and /v1/chat/completions in `engine.serving.routes_openai`.
Middleware (outermost first): access log, Host check (only without a key),
CORS (only with --cors-origin), API key, rate limit, body size; see
`engine.serving.security`. Open connections are capped by uvicorn's
`limit_concurrency` (`--max-connections`): above it a request gets 503 before
any of its body is buffered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware

from engine.batch.async_engine import EngineLoop
from engine.batch.llm_engine import EngineConfig, LLMEngine
from engine.batch.paged_cache import PagedKVCache
from engine.model.gguf_file import resolve_model_path
from engine.model.loader import LoadedModel
from engine.run.runtime import Engine, LoadOptions
from engine.serving.errors import APIError, install_error_handlers
from engine.serving.metrics import ServerMetrics
from engine.serving.options import ServerOptions, model_id
from engine.serving.parent_watch import watch_parent
from engine.serving.security import (
    AccessLogMiddleware,
    AuthMiddleware,
    BodyLimitMiddleware,
    HostCheckMiddleware,
    RateLimitMiddleware,
    TokenBucketLimiter,
    allowed_host_names,
)

if TYPE_CHECKING:
    import uvicorn

SERVER_VERSION = "0.1.0"
logger = logging.getLogger("preflight.server")


def engine_config(options: ServerOptions, loaded: LoadedModel) -> EngineConfig:
    """Serving limits for LLMEngine; the default KV pool always holds one full-length sequence."""
    ctx = loaded.config.context_length
    max_len = min(options.max_model_len or ctx, ctx)
    defaults = EngineConfig()
    block_size = defaults.block_size
    per_block = PagedKVCache.bytes_per_block(loaded.config, block_size, loaded.model.act_dtype)
    kv_bytes = options.kv_cache_bytes or max(defaults.kv_cache_bytes, math.ceil(max_len / block_size) * per_block)
    return EngineConfig(
        max_num_seqs=options.max_num_seqs,
        max_model_len=max_len,
        max_num_batched_tokens=max(512, options.max_num_seqs),
        max_queue=options.max_queue,
        block_size=block_size,
        kv_cache_bytes=kv_bytes,
        speculative_tokens=options.num_speculative_tokens if options.speculative == "ngram" else 0,
    )


class ServerStatus(Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Serving:
    """What handlers need once the model is loaded."""

    engine: Engine
    loop: EngineLoop
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
        self.created = int(time.time())
        self.status = ServerStatus.LOADING
        self.serving: Serving | None = None
        self._load = load
        self._on_load_failed = on_load_failed

    def start_loading(self) -> None:
        threading.Thread(target=self._load_model, name="preflight-load", daemon=True).start()

    def _load_model(self) -> None:
        t0 = time.perf_counter()
        try:
            engine = self._load()
            if self.options.compile:  # before /health turns 200, so no request waits on the compiler
                logger.info("compiled the decode step in %.1f s", engine.compile(serving=True))
            llm = LLMEngine(engine.loaded, engine_config(self.options, engine.loaded))
            loop = EngineLoop(llm, self.metrics.on_step)
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
        logger.info(
            "model %s ready: %s on %s, max_model_len %d, %d KV blocks, loaded in %.1f s",
            self.model_name, info.quant, info.device, llm.max_model_len,
            llm.scheduler.config.num_kv_blocks, time.perf_counter() - t0,
        )  # fmt: skip

    def require(self) -> Serving:
        """The loaded engine, or a 503 that says why there is none."""
        if self.status is ServerStatus.LOADING:
            raise APIError(503, "the model is still loading: retry when GET /health answers 200", "model_loading",
                           headers={"Retry-After": "5"})  # fmt: skip
        if self.status is ServerStatus.FAILED or self.serving is None:
            raise APIError(503, "the model failed to load; see the server log", "model_load_failed")
        if not self.serving.loop.alive:
            raise APIError(503, "the engine has stopped; restart the server", "engine_stopped")
        return self.serving

    def check_model(self, requested: str) -> None:
        if requested != self.model_name:
            raise APIError(
                404, f"model {requested[:100]!r} does not exist: this server serves {self.model_name!r}",
                "model_not_found", "model",
            )  # fmt: skip

    def shutdown(self, timeout_s: float = 10.0) -> None:
        if self.serving is not None and not self.serving.loop.stop(timeout_s):
            logger.warning("the engine thread did not stop within %.0f s", timeout_s)

    def model_card(self) -> dict[str, object]:
        serving = self.require()
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "preflight",
            "max_model_len": serving.max_model_len,
        }


control = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.server


@control.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> JSONResponse:
    _state(request).require()
    return JSONResponse({"status": "ok"})


@control.get("/version")
async def version() -> JSONResponse:
    return JSONResponse({"version": SERVER_VERSION})


@control.get("/metrics")
async def metrics(request: Request) -> Response:
    m = _state(request).metrics
    return Response(m.render(), media_type=m.content_type)


@control.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [_state(request).model_card()]})


@control.get("/v1/models/{model}")
async def get_model(request: Request, model: str) -> JSONResponse:
    state = _state(request)
    state.check_model(model)
    return JSONResponse(state.model_card())


def create_app(
    options: ServerOptions,
    load: Callable[[], Engine] | None = None,
    on_load_failed: Callable[[], None] | None = None,
) -> FastAPI:
    """The app; `load` (default: `Engine.load` with the options) runs on a background thread."""
    from engine.serving.routes_openai import router as openai_router

    name = options.served_model_name or model_id(resolve_model_path(options.model))
    load_options = LoadOptions(options.quant, options.model, options.device, options.use_weight_cache)
    state = ServerState(options, name, load or (lambda: Engine.load(load_options)), on_load_failed)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        yield
        await asyncio.to_thread(state.shutdown)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(control)
    app.include_router(openai_router)
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=options.max_body_bytes)
    if options.rate_limit_rpm is not None:
        limiter = TokenBucketLimiter(options.rate_limit_rpm, options.rate_limit_bucket or 1)
        app.add_middleware(RateLimitMiddleware, limiter=limiter)
    if options.key is not None:
        failures = TokenBucketLimiter(options.auth_failure_limit, options.auth_failure_limit)
        app.add_middleware(AuthMiddleware, api_key=options.key, failures=failures)
    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(options.cors_origins), allow_credentials=False,
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
        )  # fmt: skip
    if options.key is None:  # with a key, a rebinding page has nothing to send
        app.add_middleware(HostCheckMiddleware, names=allowed_host_names(options.host, options.allowed_hosts))
    app.add_middleware(AccessLogMiddleware)
    return app


def _parent_ended(parent_pid: int | None) -> None:
    """The process that started us is gone: stop as SIGTERM would (graceful, exit 0), so nothing is orphaned."""
    logger.warning("the parent process %s has exited: stopping", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


def uvicorn_config(app: FastAPI, options: ServerOptions) -> uvicorn.Config:
    """How uvicorn runs the app; `limit_concurrency` bounds open connections (each may hold a body being read)."""
    import uvicorn

    return uvicorn.Config(
        app, host=options.host, port=options.port, log_config=None, access_log=False, server_header=False,
        timeout_graceful_shutdown=options.grace_period_s, lifespan="on", limit_concurrency=options.max_connections,
    )  # fmt: skip


def run_server(options: ServerOptions) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a graceful stop, 1 when the model failed to load."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    failed = threading.Event()
    server: uvicorn.Server | None = None

    def load_failed() -> None:
        failed.set()
        if server is not None:
            server.should_exit = True

    app = create_app(options, on_load_failed=load_failed)
    server = uvicorn.Server(uvicorn_config(app, options))
    # uvicorn re-raises the signal it caught after a graceful stop; with the default SIGTERM
    # handler that would kill us with -15. Ours only asks uvicorn to stop (also before it
    # installs its own handlers), so a graceful stop exits 0.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: setattr(server, "should_exit", True))
    if options.parent_pid is not None:
        watch_parent(options.parent_pid, lambda: _parent_ended(options.parent_pid))
    server.run()
    return 1 if failed.is_set() else 0
