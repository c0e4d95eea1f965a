"""A minimal OpenAI-style server that streams tokens as fast as it can (for bench/loadgen_capacity.py).

    python bench/_stream_server.py --port 8123 [--tokens-per-chunk 1] [--first-token-ms T --token-ms T]

No model: every completion request streams `max_tokens` content chunks ("tok ") with no
delay, then a usage chunk and `[DONE]`. It exists to find where a load generator, not
the server, becomes the bottleneck. Runs in its own process so it never shares an
event loop (or a core, where there are two) with the client under test.

Paced (`--first-token-ms`, `--token-ms`): each request waits that long before its first chunk
and between chunks, whatever the load (the requests only share an event loop, never a model). A
server whose TTFT and TPOT are known in advance is what decides whether two clients measure the
same: a real engine's own run-to-run spread is larger than the 5% being checked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

MODEL = "stream-server"


def _chunk(api: str, text: str | None, finish: str | None = None) -> bytes:
    if api == "chat":
        delta = {} if text is None else {"content": text}
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
    body = {"id": "x", "object": "chunk", "created": int(time.time()), "model": MODEL, "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def models(_request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def completion_handler(api: str, tokens_per_chunk: int, first_s: float = 0.0, gap_s: float = 0.0):  # noqa: ANN201 - aiohttp handler factory
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        piece = _chunk(api, "tok " * tokens_per_chunk)
        sent = 0
        if first_s:
            await asyncio.sleep(first_s)
        while sent < n:
            if sent and gap_s:
                await asyncio.sleep(gap_s)
            await resp.write(piece)
            sent += tokens_per_chunk
        await resp.write(_chunk(api, None, "length"))
        usage = {
            "id": "x",
            "object": "chunk",
            "model": MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 16, "completion_tokens": sent, "total_tokens": 16 + sent},
        }
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n" + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    parser.add_argument("--first-token-ms", type=float, default=0.0, help="wait before each request's first chunk")
    parser.add_argument("--token-ms", type=float, default=0.0, help="wait between a request's chunks")
    args = parser.parse_args()
    pacing = (args.first_token_ms / 1e3, args.token_ms / 1e3)
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", completion_handler("chat", args.tokens_per_chunk, *pacing))
    app.router.add_post("/v1/completions", completion_handler("completions", args.tokens_per_chunk, *pacing))
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
