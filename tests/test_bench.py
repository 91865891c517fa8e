"""llm.bench: the framework-vs-bare comparison does the same work, and every figure comes out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

# the test vocabulary (shared with the other tests' prepared data), short sequences
SMALL = ["--override", "data.vocab_size=1024", "--seq-len", "64", "--micro-batch-size", "8"]


def test_bench_small_run(tmp_path, demo_data):
    from llm.bench import parse_args, run

    out = tmp_path / "bench.jsonl"
    lines: list[str] = []
    res = run(parse_args([*SMALL, "--steps", "8", "--log-every", "4", "--repeats", "1", "--loader-seconds", "0.5",
                          "--fixed-steps", "20", "--fixed-repeats", "1",
                          "--memory", "tiny:64x8", "--workdir", str(tmp_path / "runs"), "--json", str(out)]),
              say=lines.append)
    thr = res["throughput"]
    # same model, seed, batches and optimizer: the logged losses are the bare loop's
    assert thr["max_rel_loss_diff"] is not None and thr["max_rel_loss_diff"] < 1e-5
    assert thr["framework_median"] > 0 and thr["bare_median"] > 0 and 0.2 < thr["ratio"] < 5
    assert thr["framework_mfu"] is not None and 0 < thr["framework_mfu"] < 1.5
    assert [r["num_workers"] for r in res["loaders"]] == [1, 0, 2]
    assert all(r["tokens_per_s"] > 0 and r["batches"] > 0 for r in res["loaders"])
    (mem,) = res["memory"]
    assert mem["preset"] == "tiny" and mem["params"] > 1e6
    # weights + AdamW state are held after the warm-up step; a step needs more on top
    assert mem["steady"] >= 12 * mem["params"] * 0.9
    assert mem["step_peak"] > 0 and mem["total"] >= mem["steady"]
    report = lines[-1]
    for needle in ("ratio framework/bare", "data loader alone", "memory of one training step", "torch threads"):
        assert needle in report
    kinds = [json.loads(line)["kind"] for line in out.read_text().splitlines()]
    assert kinds == ["throughput", "fixed_cost", "loader", "loader", "loader", "memory"]
    fixed = res["fixed_cost"]
    assert fixed["max_rel_loss_diff"] < 1e-5 and fixed["bare_step_s"] > 0 and fixed["framework_step_s"] > 0


@pytest.mark.slow
def test_bench_quick_cli(tmp_path, demo_data):
    """``python -m llm.bench --quick`` (the demo data at its own vocabulary) in under ~1.5 minutes."""
    r = subprocess.run([sys.executable, "-m", "llm.bench", "--quick", "--json", str(tmp_path / "b.jsonl")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ratio framework/bare" in r.stdout and "x training" in r.stdout
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 6
