"""bench/single_stream.py end to end on the real engine: a server and a `generate` worker, measured in pairs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_rounds_pair_the_server_with_generate_in_abba_order(tmp_path: Path) -> None:
    out = tmp_path / "single.json"
    cmd = [sys.executable, "bench/single_stream.py", "--threads", "1", "--rounds", "4", "--eager"]
    cmd += ["--input-len", "16", "--output-len", "8", "--cpu-requests", "4", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    rounds = doc["rounds"]
    assert [r["order"].split(",")[0] for r in rounds] == ["generate", "server", "server", "generate"]
    for r in rounds:
        assert r["generate_tok_s"] > 0 and r["server_tok_s"] > 0
        assert r["ratio"] == r["server_tok_s"] / r["generate_tok_s"]
    ratios = sorted(r["ratio"] for r in rounds)
    assert doc["median_ratio"] == (ratios[1] + ratios[2]) / 2
    # the CPU the client (the script's process) and the server's event loop spent on the 2 extra requests' tokens
    assert doc["client_ms_per_token"] > 0 and doc["loop_ms_per_token"] > 0
    slow, fast = sorted(r["generate_tok_s"] for r in rounds)[1:3]
    gen_ms = 1000 / ((slow + fast) / 2)
    cpu_ms = doc["client_ms_per_token"] + doc["loop_ms_per_token"]
    assert doc["their_cpu_leaves"] == pytest.approx(gen_ms / (gen_ms + cpu_ms))
    assert "(eager generate, eager server, 1 thread(s), 4 rounds)" in proc.stdout
    assert "CPU per streamed token (4 requests against 2): client " in proc.stdout
