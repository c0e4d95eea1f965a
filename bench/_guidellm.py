"""guidellm as a peer for the load-generator benchmarks: run its CLI, read its JSON report.

guidellm lives in its own virtualenv (.venv-guidellm, made by `make bench`): its pins would
downgrade ours. Its synthetic prompts need a tokenizer folder; `export_tokenizer` writes the
bundled model's tokenizer to one, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import REPO_ROOT

GUIDELLM = REPO_ROOT / ".venv-guidellm" / "bin" / "guidellm"


@dataclass(frozen=True, slots=True)
class GuidellmRun:
    """One `guidellm run` at a fixed concurrency with synthetic prompts."""

    base_url: str
    model: str
    streams: int
    requests: int
    input_len: int
    output_len: int
    tokenizer_dir: Path
    api_key: str | None = None


def export_tokenizer(folder: Path) -> Path:
    """The bundled model's tokenizer as a local Hugging Face folder (guidellm needs one)."""
    from transformers import AutoTokenizer

    from engine.model.gguf_file import bundled_model_path

    gguf = bundled_model_path()
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    return folder


def run_guidellm(run: GuidellmRun) -> dict[str, Any]:
    """guidellm's metrics section for the run (its own definitions; callers match them to ours)."""
    report = Path(tempfile.mkdtemp(prefix="guidellm-")) / "report.json"
    cmd = [
        str(GUIDELLM),
        "run",
        "--backend",
        f"kind=openai_http,target={run.base_url},model={run.model}",
        "--profile",
        f"kind=concurrent,streams={run.streams}",
        "--constraint",
        f"kind=max_requests,count={run.requests}",
        "--tokenizer",
        f"kind=hf_auto,model={run.tokenizer_dir}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={run.input_len},output_tokens={run.output_len}",
        "--output",
        f"kind=json,path={report}",
        "--disable-console-interactive",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if run.api_key:
        env["GUIDELLM__OPENAI__API_KEY"] = run.api_key
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env, check=False)
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"guidellm failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}")
    return json.loads(report.read_text())["benchmarks"][0]["metrics"]
