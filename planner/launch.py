"""The launch command to copy for each option, with the flags the plan computed.

A format that needs a pre-quantized checkpoint (AWQ, GPTQ, INT8, TensorRT-LLM FP8,
GGUF) names it with a shell variable and a comment line saying what to put there;
nothing is downloaded or guessed. A vLLM command says in a comment line which release's
memory rule its KV cache was planned for.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from planner.catalog import FormatSpec
from planner.model_spec import ModelSpec

BUNDLED_MODEL_ID = "smollm2-135m"  # the bundled engine's own model needs no --model


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What the command must say: engine, format, parallelism, lengths and batch limits."""

    engine: str
    fmt: FormatSpec
    model: ModelSpec
    device_kind: str  # "gpu" | "cpu"
    tp: int = 1
    pp: int = 1
    context: int = 8192
    max_seqs: int | None = None  # None: the engine's own default (continuous-batching servers)
    gpu_memory_utilization: float = 0.9
    threads: int | None = None
    # vLLM: which release's start-up memory rule the KV figures assume. vLLM has no flag that pins it, so
    # the command says it in a comment line.
    planned_for: str | None = None


def _checkpoint(spec: LaunchSpec) -> tuple[str, list[str]]:
    """The model argument and any comment lines explaining it."""
    repo = spec.model.hf_repo
    fmt, engine = spec.fmt, spec.engine
    needs_export = fmt.id in ("awq", "gptq", "int8") or (engine == "tensorrt-llm" and fmt.id == "fp8")
    if needs_export or fmt.checkpoint_only:
        var = f"{fmt.id.upper().replace('-', '_')}_CHECKPOINT"
        base = repo or "your model"
        if fmt.checkpoint_only:
            return f'"${var}"', [f"# {var}: the published {fmt.label} checkpoint of {base}"]
        tool = "nvidia-modelopt" if engine == "tensorrt-llm" else "llm-compressor or AutoAWQ"
        return f'"${var}"', [f"# {var}: a {fmt.label} export of {base} (made with {tool}, or a published one)"]
    if repo is None:
        return '"$MODEL_DIR"', ["# MODEL_DIR: the folder holding this model's config.json and weights"]
    return shlex.quote(repo), []


def _vllm(spec: LaunchSpec, extra: list[str]) -> list[str]:
    model, comments = _checkpoint(spec)
    if spec.planned_for:
        comments = [*comments, f"# {spec.planned_for}"]
    args = ["vllm", "serve", model]
    if spec.fmt.vllm_quantization:
        args += ["--quantization", spec.fmt.vllm_quantization]
    if spec.fmt.id == "fp16":
        args += ["--dtype", "float16"]
    args += [
        "--max-model-len",
        str(spec.context),
        "--gpu-memory-utilization",
        f"{spec.gpu_memory_utilization:g}",
        "--tensor-parallel-size",
        str(spec.tp),
    ]
    if spec.pp > 1:
        args += ["--pipeline-parallel-size", str(spec.pp)]
    if spec.max_seqs is not None:
        args += ["--max-num-seqs", str(spec.max_seqs)]
    args += extra
    return comments + [" ".join(args)]


def _ray(spec: LaunchSpec) -> list[str]:
    head = [
        "# on the head node:        ray start --head --port 6379",
        '# on each of the others:   ray start --address "$HEAD_IP:6379"',
    ]
    return head + _vllm(spec, ["--distributed-executor-backend", "ray"])


def _sglang(spec: LaunchSpec) -> list[str]:
    model, comments = _checkpoint(spec)
    args = ["python", "-m", "sglang.launch_server", "--model-path", model]
    if spec.fmt.id in ("fp8", "awq"):
        args += ["--quantization", spec.fmt.id]
    args += [
        "--context-length",
        str(spec.context),
        "--mem-fraction-static",
        f"{spec.gpu_memory_utilization:g}",
        "--tp-size",
        str(spec.tp),
    ]
    if spec.max_seqs is not None:
        args += ["--max-running-requests", str(spec.max_seqs)]
    return comments + [" ".join(args)]


def _trtllm(spec: LaunchSpec) -> list[str]:
    model, comments = _checkpoint(spec)
    args = [
        "trtllm-serve",
        model,
        "--backend",
        "pytorch",
        "--tp_size",
        str(spec.tp),
        "--pp_size",
        str(spec.pp),
        "--max_seq_len",
        str(spec.context),
    ]
    if spec.max_seqs is not None:
        args += ["--max_batch_size", str(spec.max_seqs)]
    args += ["--kv_cache_free_gpu_memory_fraction", f"{spec.gpu_memory_utilization:g}"]
    return comments + [" ".join(args)]


def _llama_cpp(spec: LaunchSpec) -> list[str]:
    base = spec.model.hf_repo or spec.model.name
    comments = [
        f"# GGUF_FILE: a {spec.fmt.label.removeprefix('GGUF ')} GGUF of {base} "
        "(convert_hf_to_gguf.py, then llama-quantize, or a published one)"
    ]
    slots = max(1, spec.max_seqs or 1)
    args = ["llama-server", "-m", '"$GGUF_FILE"', "-c", str(spec.context * slots), "-np", str(slots)]
    if spec.device_kind == "gpu":
        args += ["-ngl", "999"]
        if spec.tp > 1:
            args += ["--split-mode", "row"]
    elif spec.threads:
        args += ["-t", str(spec.threads)]
    args += ["--host", "127.0.0.1", "--port", "8080"]
    return comments + [" ".join(args)]


def _bundled(spec: LaunchSpec) -> list[str]:
    args = ["python", "-m", "engine", "serve", "--quant", spec.fmt.engine_quant or "int4"]
    comments: list[str] = []
    if spec.model.id != BUNDLED_MODEL_ID:
        args += ["--model", '"$GGUF_FILE"']
        comments = [f"# GGUF_FILE: a GGUF of {spec.model.hf_repo or spec.model.name}"]
    args += [
        "--device",
        "cuda" if spec.device_kind == "gpu" else "cpu",
        "--max-model-len",
        str(spec.context),
        "--max-num-seqs",
        str(max(1, spec.max_seqs or 1)),
        "--host",
        "127.0.0.1",
        "--port",
        "8000",
    ]
    return comments + [" ".join(args)]


BUILDERS = {
    "vllm": lambda s: _vllm(s, []),
    "vllm-ray": _ray,
    "sglang": _sglang,
    "tensorrt-llm": _trtllm,
    "llama.cpp": _llama_cpp,
    "bundled": _bundled,
}


# Where each launch command serves the OpenAI API on the machine that runs it: the port it sets
# (llama.cpp, the bundled engine) or the server's own default (vLLM and trtllm-serve 8000, SGLang 30000).
SERVE_PORTS = {
    "vllm": 8000,
    "vllm-ray": 8000,
    "sglang": 30000,
    "tensorrt-llm": 8000,
    "llama.cpp": 8080,
    "bundled": 8000,
}


def serve_url(engine: str, host: str = "127.0.0.1") -> str:
    """The base URL an option's launch command serves on: what "benchmark this" pre-fills as the target."""
    try:
        return f"http://{host}:{SERVE_PORTS[engine]}/v1"
    except KeyError:
        raise ValueError(f"no serving port known for engine {engine!r}") from None


def launch_command(spec: LaunchSpec) -> str:
    """Shell lines to start the option (comments first); the last line is the command."""
    try:
        build = BUILDERS[spec.engine]
    except KeyError:
        raise ValueError(f"no launch command for engine {spec.engine!r}") from None
    return "\n".join(build(spec))
