"""llm.bench.grpo: one GRPO iteration of Xiulian against TRL's GRPOTrainer -- every figure comes out
and both sides did the same work (same prompts, same answer length, same trainable parameters).
No wall-clock assertion."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT


def _pos(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.tier("integration")
@pytest.mark.timeout(1800)
def test_bench_grpo_quick_cli(tmp_path):
    """``python -m llm.bench.grpo --model tiny --quick``: one Xiulian and one TRL process of 3
    iterations each on the cached tiny export; a Markdown section is appended."""
    out, md = tmp_path / "bench.json", tmp_path / "B.md"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm.bench.grpo",
            "--model",
            "tiny",
            "--quick",
            "--max-new-tokens",
            "8",
            "--json",
            str(out),
            "--markdown",
            str(md),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Xiulian GRPO benchmark" in r.stdout
    res = json.loads(out.read_text())
    s, c = res["settings"], res["comparison"]
    assert res["trl"]["available"], res["trl"]
    for side in ("xiulian", "trl"):
        x = c[side]
        assert x["timed_iterations"] == 2 and _pos(x["wall_s"]), (side, x)
        for k in ("generate_s", "reference_s", "train_s"):
            assert _pos(x[k]), (side, k)
        assert x["score_s"] >= 0
        assert x["response_length"] == s["max_new_tokens"]  # the answer length was forced on both sides
    assert c["same_prompts"]  # TRL got Xiulian's prompts, tokenized to the same ids
    assert c["trainable_params"]["xiulian"] == c["trainable_params"]["trl"]
    assert _pos(c["ratio_xiulian_over_trl"]) and set(c["phase_ratios"]) == {"generate_s", "score_s", "reference_s", "evaluate_s", "train_s"}
    text = md.read_text()
    assert "GRPO iteration, Xiulian vs TRL GRPOTrainer, tiny" in text and "| xiulian |" in text and "| trl |" in text
