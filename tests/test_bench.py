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
    from llm.bench.train import parse_args, run

    out = tmp_path / "bench.jsonl"
    lines: list[str] = []
    res = run(
        parse_args(
            [
                *SMALL,
                "--steps",
                "8",
                "--log-every",
                "4",
                "--repeats",
                "1",
                "--loader-seconds",
                "0.5",
                "--fixed-steps",
                "20",
                "--fixed-repeats",
                "1",
                "--memory",
                "tiny:64x8",
                "--workdir",
                str(tmp_path / "runs"),
                "--json",
                str(out),
            ]
        ),
        say=lines.append,
    )
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
    # the step split: data + forward + backward + optimizer is the bare loop's step
    ph = thr["bare_phases_s"]
    assert set(ph) == {"data", "forward", "backward", "optimizer"} and all(v >= 0 for v in ph.values())
    assert ph["forward"] > 0 and ph["backward"] > 0 and ph["optimizer"] > 0
    assert sum(ph.values()) == pytest.approx(thr["bare_step_s"], rel=0.1)
    assert "step time split" in report


def test_markdown_table(tmp_path):
    """--markdown appends one section per run to BENCHMARKS.md-style file, header written once."""
    from llm.bench.train import append_markdown, parse_args

    out = {
        "machine": {"cpu": "X", "cores_usable": 2, "torch": "2", "torch_threads": 2, "cuda": None, "lightning": "2", "transformers": "5"},
        "throughput": {
            "model": "tiny",
            "framework_median": 1000.0,
            "bare_median": 990.0,
            "ratio": 1.0101,
            "pair_ratios": [1.01],
            "tokens_per_step": 512,
            "framework_step_s": 0.5,
            "framework_mfu": 0.31,
            "bare_phases_s": {"data": 0.01, "forward": 0.15, "backward": 0.3, "optimizer": 0.04},
        },
        "fixed_cost": None,
        "memory": [],
        "peak_flops": 1e11,
        "time": 0,
        "baselines": {
            "litgpt": {
                "ratio_xiulian_vs_litgpt": 0.98,
                "ratio_xiulian_compiled_vs_litgpt": 1.03,
                "litgpt_version": "0.5.13",
                "tokens_per_s": {"litgpt": 1020.0},
            },
            "trl": {"ratio": 1.18, "model": "tiny", "xiulian": 70.0, "trl": 59.3},
        },
    }
    md = tmp_path / "B.md"
    for _ in range(2):
        append_markdown(md, out, parse_args([]))
    text = md.read_text()
    assert text.count("# Benchmarks") == 1 and text.count("| figure | value | notes |") == 2
    for needle in (
        "**1.010**",
        "| MFU | 31.00% |",
        "| forward | 150.0 ms | 30% of a bare-loop step (500.0 ms) |",
        "Xiulian / litgpt pretrain** | **0.980**",
        "Xiulian / TRL SFTTrainer** | **1.180**",
    ):
        assert needle.replace("| forward", "|   forward") in text or needle in text, needle


@pytest.mark.slow
def test_bench_quick_cli(tmp_path, demo_data):
    """``python -m llm.bench --quick`` (the demo data at its own vocabulary) end to end, with its
    runs shortened further to ``test_bench_small_run``'s (8 steps, one run of each loop, 20
    micro-model steps, half a second per loader): every block still runs and writes its line."""
    short = ["--steps", "8", "--log-every", "4", "--repeats", "1", "--fixed-steps", "20", "--fixed-repeats", "1", "--loader-seconds", "0.5"]
    r = subprocess.run(
        [sys.executable, "-m", "llm.bench", "--quick", *short, "--json", str(tmp_path / "b.jsonl"), "--markdown", str(tmp_path / "B.md")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ratio framework/bare" in r.stdout and "x training" in r.stdout and "step time split" in r.stdout
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 6
    md = (tmp_path / "B.md").read_text()
    assert "**ratio framework / bare**" in md and "| MFU |" in md and "peak memory of a step, tiny" in md


@pytest.mark.slow
def test_litgpt_baseline_same_shape_and_both_learn(demo_data):
    """litgpt's own pretraining loop on our data with our model's shape (skips if litgpt cannot be installed)."""
    from llm.bench.litgpt import compare

    res = compare("tiny", 12, 4, 1, ["data.vocab_size=1024", "data.seq_len=64", "data.micro_batch_size=8"], say=print)
    if "skipped" in res:
        pytest.skip(res["skipped"])
    assert res["params"]["litgpt"] == res["params"]["xiulian"]
    assert res["litgpt_loss_first_last"][1] < res["litgpt_loss_first_last"][0]
    assert res["xiulian_loss_first_last"][1] < res["xiulian_loss_first_last"][0]
    # speeds are the benchmark's business, not the test's (a 12-step run is mostly compilation)
    assert all(v > 0 for v in res["tokens_per_s"].values())
