"""The OpenAI-compatible HTTP server: `python -m engine serve`.

`create_app(options)` builds a FastAPI app that starts listening at once and
loads the model on a background thread, so `GET /health` really answers 503
while loading and 200 when ready. `run_server(options)` runs it under
uvicorn; SIGTERM stops accepting connections, lets in-flight requests finish
within `--grace-period`, stops the engine thread and exits 0.

Routes: /health, /version, /metrics, /v1/models (and /v1/models/{id}) in
`engine.serving.routes_control`; /v1/completions and /v1/chat/completions in
`engine.serving.routes_openai`; the load state both read is `engine.serving.state`.
Middleware (outermost first): access log, Host check (only without a key),
CORS (only with --cors-origin), API key, rate limit, body size; see
`engine.serving.security`. Open connections are capped by uvicorn's
`limit_concurrency` (`--max-connections`): above it a request gets 503 before
any of its body is buffered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from engine.model.gguf_file import resolve_model_path
from engine.run.runtime import Engine, LoadOptions
from engine.serving.errors import install_error_handlers
from engine.serving.options import ServerOptions, model_id
from engine.serving.parent_watch import watch_parent
from engine.serving.routes_control import control
from engine.serving.routes_openai import router as openai_router
from engine.serving.security import (
    AccessLogMiddleware,
    AuthMiddleware,
    BodyLimitMiddleware,
    HostCheckMiddleware,
    RateLimitMiddleware,
    TokenBucketLimiter,
    allowed_host_names,
)
from engine.serving.state import ServerState

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger("preflight.server")


def create_app(
    options: ServerOptions,
    load: Callable[[], Engine] | None = None,
    on_load_failed: Callable[[], None] | None = None,
) -> FastAPI:
    """The app; `load` (default: `Engine.load` with the options) runs on a background thread."""
    name = options.served_model_name or model_id(resolve_model_path(options.model))
    load_options = LoadOptions(
        options.load_quant, options.model, options.device, options.use_weight_cache, weights_dir=options.weights
    )
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
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_credentials=False,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
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
        app,
        host=options.host,
        port=options.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=options.grace_period_s,
        lifespan="on",
        limit_concurrency=options.max_connections,
    )


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
