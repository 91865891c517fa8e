"""llm.bench.rl: rollout vs plain generate, PPO iteration phases, full vs LoRA memory, Xiulian vs
TRL PPO -- every figure comes out and both sides of each comparison did the same work. No
wall-clock assertion."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT

MiB = 2**20


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_bench_rl_quick_cli(tmp_path):
    """``python -m llm.bench.rl --model tiny --quick``: 5 fresh processes (prepare + rollout,
    Xiulian and TRL in TRL's layout, Xiulian default full and LoRA), about a minute once the
    tiny export is cached. TRL's PPO may be unavailable (it left TRL in 1.13): then the json
    says why and the rest must still be there."""
    out = tmp_path / "bench_rl.json"
    r = subprocess.run(
        [sys.executable, "-m", "llm.bench.rl", "--model", "tiny", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Xiulian RLHF benchmark" in r.stdout
    res = json.loads(out.read_text())
    assert res["machine"]["cores"] > 0 and res["machine"]["torch"] and res["machine"]["cpu"]

    # 1. rollout: the framework's generate and plain generate, same inputs and seeds -> same tokens
    g = res["generation"]
    for side in ("framework", "plain_hf"):
        assert _pos(g[side]["tokens_per_s"]) and _pos(g[side]["median_tokens_per_s"])
        assert all(0 < t <= g["batch_size"] * g["max_new_tokens"] for t in g[side]["tokens"])
    assert _pos(g["ratio"]) and g["same_weights"]
    assert g["identical_outputs"] == g["calls"]
    assert _pos(g["in_ppo_iterations_tokens_per_s"])

    # 2. phases of a PPO iteration (metrics.csv) inside the measured wall time
    it = res["iteration"]["xiulian"]
    assert it["timed_iterations"] >= 1 and _pos(it["wall_s"])
    for k in ("generate_s", "evaluate_s", "train_s"):
        assert _pos(it[k]), k
    assert it["score_s"] >= 0
    assert it["generate_s"] + it["score_s"] + it["evaluate_s"] + it["train_s"] <= it["wall_s"] * 1.05

    # 3. memory: LoRA keeps no reference copy and no optimizer state for the base weights
    full, lora = res["memory"]["full"], res["memory"]["lora"]
    assert full["reference"] == "frozen copy" and lora["reference"] == "adapters disabled"
    assert _pos(full["peak_rss"]) and _pos(lora["peak_rss"])
    assert lora["peak_rss"] <= full["peak_rss"] + 64 * MiB, (lora["peak_rss"] / MiB, full["peak_rss"] / MiB)
    assert 0 < lora["trainable_params"] < full["trainable_params"] == full["total_params"]

    # 4. TRL: either a comparison on the same prompts and trainable parameters, or the reason why not
    tc, trl = res["trl_comparison"], res["trl"]
    assert _pos(tc["xiulian"]["wall_s"])
    if trl["available"]:
        assert _pos(tc["trl"]["wall_s"]) and _pos(tc["ratio_time_xiulian_over_trl"])
        assert tc["same_prompts"]
        assert tc["trainable_params"]["xiulian"] == tc["trainable_params"]["trl"]
        assert _pos(tc["trl"]["generate_s"]) and _pos(tc["trl"]["train_s"])
        assert trl["version"] and res["trl_differences"]
    else:
        assert trl["reason"], trl
        assert "ratio_time_xiulian_over_trl" not in tc


def test_summary_without_trl():
    """No TRL run: the summary still has the Xiulian figures, the memory comparison and no ratio."""
    from llm.bench.rl import summarize

    def run(lora: bool, peak: int) -> dict:
        phases = [
            {
                "generate_s": 0.2,
                "score_s": 0.01,
                "evaluate_s": 0.1,
                "train_s": 0.3,
                "generate_tokens_per_s": 1000.0,
                "response_length": 30.0,
                "score": 0.5,
            }
        ] * 3
        return {
            "phases": phases,
            "step_s": [0.7, 0.7],
            "median_step_s": 0.7,
            "tokens_per_s": 300.0,
            "losses": [0.5, 0.5, 0.6],
            "peak_rss": peak,
            "rss_after_imports": 100,
            "rss_before_first_step": 150,
            "trainable_params": 10 if lora else 1000,
            "total_params": 1010 if lora else 1000,
            "reference": "adapters disabled" if lora else "frozen copy",
            "fingerprints": ["a"] * 3,
        }

    s = summarize(None, [run(False, 400)], [run(True, 300)], [run(False, 500)], [], warmup=1, order=["X", "D", "L"])
    assert "ratio_time_xiulian_over_trl" not in s["trl_comparison"] and s["trl_comparison"]["trl"] is None
    it = s["iteration"]["xiulian"]
    assert it["timed_iterations"] == 2 and it["wall_s"] == 0.7 and it["other_s"] == pytest.approx(0.09)
    assert s["memory"]["lora_over_full"] == 0.75 and s["memory"]["saved_bytes"] == 100
