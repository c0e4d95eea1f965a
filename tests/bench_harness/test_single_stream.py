"""bench/single_stream.py end to end on the real engine: a server and a `generate` worker, measured in pairs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_rounds_pair_the_server_with_generate_in_abba_order(tmp_path: Path) -> None:
    out = tmp_path / "single.json"
    cmd = [sys.executable, "bench/single_stream.py", "--threads", "1", "--rounds", "4", "--eager"]
    cmd += ["--input-len", "16", "--output-len", "8", "--json", str(out)]
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
    assert "(eager generate, eager server, 1 thread(s), 4 rounds)" in proc.stdout
