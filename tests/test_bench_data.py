"""``python -m llm.bench.data --quick``: the data benchmark runs end to end and reports every block
on both sides. No timing is asserted (the figures are the script's output, not a test's), only
that each side did the same work on the same input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = Path("/usr/share/doc/python3.11/html")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DOCS / "_sources").is_dir(), reason="python3.11-doc is not installed (bash launch/fixtures.sh as root)"),
]


def test_bench_data_quick(tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "BENCH.md"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm.bench.data",
            "--quick",
            "--min-seconds",
            "0.05",
            "--mem-sizes",
            "500,2000",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
            "--markdown",
            str(md),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(out.read_text())
    blocks = {b["block"]: b for b in res["blocks"]}
    assert {"read WARC", "extract HTML (resiliparse)", "language id", "heuristic rules", "MinHash signature", "quality classifier"} <= set(
        blocks
    )
    for b in res["blocks"]:
        assert b["ours"]["docs_per_s"] > 0 and b["datatrove"]["docs_per_s"] > 0, b
    # pass-through blocks keep everything on both sides; the same lid model routes the same way
    assert blocks["write JSONL"]["ours"]["kept_fraction"] == blocks["write JSONL"]["datatrove"]["kept_fraction"] == 1
    assert blocks["extract HTML (trafilatura)"]["ours"]["kept_fraction"] > 0.8
    e2e = res["e2e"]
    assert e2e["ours"]["kept"] > 0 and e2e["datatrove"]["kept"] > 0
    assert set(e2e["ours"]["stages"]) >= {"extract", "filter", "final", "mixture"}
    mem = res["memory"]
    sig = mem["sizes"]["2000"]["disk"]["signature_bytes_per_doc"]
    assert sig == 14 * (8 * 8 + 4)  # 14 bands x (8 64-bit hashes + a 32-bit document index)
    assert set(mem["per_million"]) == {"signature", "signature_sort", "buckets", "cluster", "filter"}
    assert "| block | ours docs/s/core |" in r.stdout and "stage-1 data pipeline" in md.read_text()
