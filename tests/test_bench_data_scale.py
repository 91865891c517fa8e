"""``python -m llm.bench.data_scale`` on a small corpus: every stage runs in its own process and
reports its peak RSS, the planted exact duplicates are removed, and the former in-memory mixture
writes as many documents as the streamed one. No figure is asserted beyond that."""

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


def test_bench_data_scale_small(tmp_path):
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    out, md = tmp_path / "scale.json", tmp_path / "BENCH.md"
    args = ["--docs", "3000", "--set", "mixture.shuffle_buffer_mb=1", "--baseline-rev", rev, "--work", str(tmp_path / "w")]
    r = subprocess.run(
        [sys.executable, "-m", "llm.bench.data_scale", *args, "--json", str(out), "--markdown", str(md)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (size,) = json.loads(out.read_text())["sizes"]
    assert set(size["stages"]) == {"extract", "prepare", "filter", "buckets", "cluster", "final", "mixture", "report"}
    assert all(s["peak_rss_mib"] > 0 for s in size["stages"].values())
    assert size["removed"]["exact_dedup"] >= 0.9 * size["planted"]["exact"] > 0
    assert size["shuffle"]["buckets"] > 1 and size["baseline_mixture"]["documents"] == size["mixture_documents"]
    assert "stage-1 data pipeline at scale" in md.read_text()
