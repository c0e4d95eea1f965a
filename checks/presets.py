"""What Preflight knows about the servers people point it at: default URL, API, metrics and launch line.

A user who picks "SGLang" should not have to remember that it listens on 30000 and only
exports `/metrics` with `--enable-metrics`; the target picker and `python -m checks connect
--preset` fill the URL from here and say what the server needs for the monitoring checks.
The figures are each server's documented defaults on one machine; a deployment behind a
gateway has its own URL, which the user types instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from reports.metrics_timeline import MetricsSource


@dataclass(frozen=True, slots=True)
class ServerPreset:
    """One kind of OpenAI-compatible server and its defaults."""

    key: str
    name: str
    base_url: str  # where it serves the OpenAI API by default, on this machine
    metrics: MetricsSource | None  # the /metrics dialect it speaks; None: it exports none
    metrics_hint: str  # what it takes to get /metrics, in words
    launch: str  # the usual command that starts it (MODEL is the user's model)


PRESETS: dict[str, ServerPreset] = {
    p.key: p
    for p in (
        ServerPreset(
            "vllm",
            "vLLM",
            "http://127.0.0.1:8000/v1",
            "vllm",
            "/metrics is on by default (names vllm:*)",
            "vllm serve MODEL --port 8000",
        ),
        ServerPreset(
            "sglang",
            "SGLang",
            "http://127.0.0.1:30000/v1",
            "sglang",
            "start it with --enable-metrics for /metrics (names sglang:*)",
            "python -m sglang.launch_server --model-path MODEL --port 30000 --enable-metrics",
        ),
        ServerPreset(
            "tgi",
            "Text Generation Inference",
            "http://127.0.0.1:8080/v1",
            "tgi",
            "/metrics is on by default (names tgi_*; no KV-cache gauge, no TTFT histogram)",
            "text-generation-launcher --model-id MODEL --port 8080",
        ),
        ServerPreset(
            "llamacpp",
            "llama.cpp server",
            "http://127.0.0.1:8080/v1",
            "llamacpp",
            "start it with --metrics for /metrics (names llamacpp:*)",
            "llama-server -m MODEL.gguf --port 8080 --metrics",
        ),
        ServerPreset(
            "ollama",
            "Ollama",
            "http://127.0.0.1:11434/v1",
            None,
            "Ollama exports no Prometheus /metrics, so the monitoring checks cannot pass",
            "ollama serve  (then: ollama pull MODEL)",
        ),
    )
}


def preset_for(metrics: MetricsSource | None) -> ServerPreset | None:
    """The preset whose /metrics dialect was seen, to name the server a connection test found."""
    return next((p for p in PRESETS.values() if metrics is not None and p.metrics == metrics), None)
