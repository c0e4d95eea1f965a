"""The control routes: /health, /version, /metrics, /v1/models and /v1/models/{id}.

Each reads the app's `ServerState`; generation routes are in `engine.serving.routes_openai`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from engine.serving.state import ServerState

SERVER_VERSION = "0.1.0"

control = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.server


@control.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> JSONResponse:
    return JSONResponse(_state(request).health())


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
