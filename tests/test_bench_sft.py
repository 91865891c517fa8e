"""llm.bench.sft: Xiulian SFT vs TRL SFTTrainer and full vs LoRA -- every figure comes out, and
both sides did the same work. No wall-clock assertion."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_bench_sft_quick_cli(tmp_path):
    """``python -m llm.bench.sft --quick --model tiny``: 3 fresh processes (Xiulian, TRL, Xiulian
    LoRA), about a minute once the tiny export is cached."""
    out = tmp_path / "bench_sft.json"
    r = subprocess.run(
        [sys.executable, "-m", "llm.bench.sft", "--quick", "--model", "tiny", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Xiulian SFT benchmark" in r.stdout
    res = json.loads(out.read_text())
    thr, mem = res["throughput"], res["memory"]

    x = thr["xiulian"]
    assert x["tokens_per_s_median"] > 0 and x["loss_tokens_per_s_median"] > 0
    assert math.isfinite(x["first_loss"]) and math.isfinite(x["final_loss"])
    if importlib.util.find_spec("trl") is None:
        assert res["trl_skipped"] and "trl" not in thr and "ratio" not in thr
    else:
        assert res["trl_skipped"] is None
        t = thr["trl"]
        assert t["tokens_per_s_median"] > 0 and thr["ratio"] > 0
        assert math.isfinite(t["final_loss"])
        # the same work: the same batches, TRL's tokens and loss tokens are Xiulian's, same start
        assert thr["same_batches"]
        tc = thr["token_check"]
        assert tc["checked"] > 0 and tc["identical"] == tc["checked"], tc
        assert thr["first_loss_rel_diff"] < 1e-4
        assert t["trainable_params"] == x["trainable_params"]

    full, lora = mem["full"], mem["lora"]
    assert full["peak_rss"] > 0 and lora["peak_rss"] > 0 and mem["peak_ratio_lora_over_full"] > 0
    assert 0 < lora["trainable_params"] < full["trainable_params"] == full["total_params"]


def test_summary_without_trl():
    """With no TRL run the summary has Xiulian's figures and memory, and no ratio."""
    from llm.bench.sft import summarize

    def run(lora: bool, peak: int) -> dict:
        return {
            "tokens_per_s": 100.0,
            "loss_tokens_per_s": 50.0,
            "padded_tokens_per_s": 120.0,
            "median_step_s": 0.5,
            "window_steps": 2,
            "tokens_per_step": [10, 10, 10],
            "losses": [3.0, 2.9, 2.8],
            "peak_rss": peak,
            "rss_after_imports": 100,
            "rss_before_first_step": 150,
            "trainable_params": 10 if lora else 1000,
            "total_params": 1010 if lora else 1000,
            "torch_threads": 2,
            "internal_loss_tokens_per_s": [40.0],
            "fingerprints": ["a", "b", "c"],
        }

    s = summarize([run(False, 400)], [], [run(True, 300)], ["X", "L"])
    assert "ratio" not in s["throughput"] and "trl" not in s["throughput"]
    assert s["throughput"]["xiulian"]["tokens_per_s_median"] == 100.0
    assert s["memory"]["peak_ratio_lora_over_full"] == 0.75
    assert s["memory"]["lora"]["peak_above_imports"] == 200
