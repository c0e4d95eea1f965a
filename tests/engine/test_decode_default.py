"""Compiled decode is the default wherever it works; `--eager` opts out; elsewhere the engine runs eager and
says why, as one line and in /health, never as an error.

Nothing here builds a package (tests/engine/test_compile.py does): where the default would compile,
PATH holds no C++ compiler, which is exactly the machine that must fall back.
"""

from __future__ import annotations

import time

import httpx
import pytest
import torch
from server_harness import in_process_server

from engine.cli import build_parser, main
from engine.model.compiled import compile_unavailable_reason
from engine.serving.app import create_app
from engine.serving.options import ServerOptions


def test_serve_and_generate_default_to_compiled_and_eager_opts_out() -> None:
    parser = build_parser()
    for command in (["serve"], ["generate", "--prompt", "Hi"]):
        assert parser.parse_args(command).compile is True
        assert parser.parse_args([*command, "--eager"]).compile is False
        assert parser.parse_args([*command, "--compile"]).compile is True  # old command lines still work
    assert ServerOptions().compile is True


def test_the_default_resolves_to_compiled_with_a_compiler_and_to_eager_with_a_reason_without(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "g++"
    compiler.write_text("#!/bin/sh\nexit 0\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert compile_unavailable_reason(torch.device("cpu")) is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    reason = compile_unavailable_reason(torch.device("cpu"))
    assert reason is not None and "C++ compiler" in reason
    gpu = compile_unavailable_reason(torch.device("cuda"))
    assert gpu is not None and "CPU-only" in gpu


def test_without_a_compiler_the_engine_stays_eager_and_keeps_the_reason(int4, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("PATH", str(tmp_path))
    info = int4.info
    heard: list[str] = []
    try:
        reason = int4.compile_by_default(on_build=heard.append)
        assert reason is not None and "C++ compiler" in reason
        assert int4.info.eager_reason == reason and int4.info.decode == "eager"
        assert not int4.loaded.model.compiled and heard == []  # nothing to build, so no build note
    finally:
        int4.info = info  # the session's shared engine


def test_generate_without_a_compiler_runs_eager_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    argv = ["generate", "--device", "cpu", "--prompt", "Hello", "--max-tokens", "2", "--ignore-eos", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    notes = [line for line in err.splitlines() if line.startswith("eager decode: ")]
    assert len(notes) == 1 and "C++ compiler" in notes[0], err
    assert '"decode": "eager"' in out and "C++ compiler" in out  # --json's load block says it too


def test_a_server_without_a_compiler_serves_eager_and_says_why_in_health(int4, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """`serve` with no flag on a machine without a compiler: not a failed server, an eager one that says why."""
    monkeypatch.setenv("PATH", str(tmp_path))
    info = int4.info
    options = ServerOptions(max_num_seqs=1, max_model_len=64, kv_cache_bytes=8 * 2**20)
    try:
        app = create_app(options, load=lambda: int4)
        with in_process_server(app) as (base, _thread):
            while (r := httpx.get(f"{base}/health", timeout=30)).status_code == 503:
                assert r.json()["error"]["code"] == "model_loading", r.text
                time.sleep(0.05)  # the poll interval of a wait the load thread ends (ready or failed)
            health = r.json()
        assert health["status"] == "ok" and health["decode"] == "eager", health
        assert "C++ compiler" in health["eager_reason"]
    finally:
        int4.info = info
