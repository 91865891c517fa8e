"""The unbiased pass@k estimator (llm.eval.passk) against hand values and brute-force
enumeration of every k-subset of the answers; verified eval tasks (greedy accuracy and pass@k
from ``xiulian eval``) on a hand-built bigram model and on the tiny trained model; ``val/pass@k``
in GRPO's validation."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from llm.eval.passk import mean_pass_at_k, pass_at_k, pass_at_k_table


def test_pass_at_k_by_hand():
    # pass@1 is c / n
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-12)
    # n = 4, c = 1, k = 2: 1 - C(3, 2) / C(4, 2) = 1 - 3 / 6 = 0.5; product form 1 - (1 - 2/4) = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-12)
    # n = 5, c = 2, k = 2: 1 - C(3, 2) / C(5, 2) = 1 - 3/10 = 0.7; product 1 - (1 - 2/4)(1 - 2/5) = 1 - 0.3
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # n - c < k: every pair holds a right one
    assert pass_at_k(3, 2, 2) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 5) == 1.0


def test_pass_at_k_matches_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            answers = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(answers[i] for i in s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable():
    # C(1000, 100) overflows a float; the product form does not build it
    n, c, k = 1000, 3, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact integers, then one division
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 0)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="no problems"):
        mean_pass_at_k([], 1)


def test_mean_and_table():
    # problem A: 4 answers, 1 right; problem B: 5 answers, 2 right
    # pass@1 = (0.25 + 0.4) / 2 = 0.325; pass@2 = (0.5 + 0.7) / 2 = 0.6
    assert mean_pass_at_k([(4, 1), (5, 2)], 2) == pytest.approx(0.6, abs=1e-12)
    table = pass_at_k_table([[False, True, False, False], [True, False, False, True, False]], ks=(1, 2))
    assert table == pytest.approx({"pass@1": 0.325, "pass@2": 0.6}, abs=1e-12)


# ------------------------------------------------------------------ verified eval tasks (llm.eval)
# A bigram model built by hand (as in tests/test_eval.py): p(next | ..., cur) = softmax(B[cur])[next].
# Problem "qI" has the answer I; every prompt is followed by "answer:", then a digit drawn from one
# row of B, then the end: greedy answers "1" to every problem, so greedy accuracy is 1/3 exactly.
WORDS = ["<s>", "</s>", "<unk>", "q1", "q2", "q3", "answer:", "1", "2", "3"]
ID = {w: i for i, w in enumerate(WORDS)}
DIGITS = {"1": 2.0, "2": 1.0, "3": 0.5}
TABLE = {**{(q, "answer:"): 12.0 for q in ("q1", "q2", "q3")}, **{("answer:", d): v for d, v in DIGITS.items()}}
TABLE.update({(d, "</s>"): 12.0 for d in DIGITS})


def _bigram():
    from test_eval import bigram_model, bigram_tokenizer

    return bigram_model(TABLE, WORDS), bigram_tokenizer(WORDS)


def _p_right(digit: str) -> float:
    """p("answer:" | q) p(digit | "answer:") p("</s>" | digit), from the table by hand."""
    V = len(WORDS)

    def p(row: dict[str, float], nxt: str) -> float:
        return math.exp(row.get(nxt, 0.0)) / (sum(math.exp(v) for v in row.values()) + V - len(row))

    return p({"answer:": 12.0}, "answer:") * p(DIGITS, digit) * p({"</s>": 12.0}, "</s>")


def _task_file(tmp_path):
    p = tmp_path / "qs.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": str(i), "verifier": "number", "id": f"q{i}"}) + "\n" for i in (1, 2, 3)))
    return str(p)


def _verified(path, **kw):
    from omegaconf import OmegaConf

    from llm.config import EvalConfig

    return OmegaConf.merge(
        OmegaConf.structured(EvalConfig),
        {"name": "s", "batch_size": 2, "tasks": [{"name": "qs", "type": "verified", "path": path, "max_new_tokens": 4, **kw}]},
    )


def test_verified_task_greedy_accuracy_and_pass_at_k_from_the_written_verdicts(tmp_path):
    from llm.eval.core import run_suite, write_results

    m, tok = _bigram()
    suite = _verified(_task_file(tmp_path), samples=64, pass_k=[2, 8, 64], seed=7)
    res = run_suite(m, tok, suite, say=lambda s: None)["tasks"]["qs"]
    out = write_results({"suite": "s", "tasks": {"qs": res}}, tmp_path / "out" / "s.json")
    summary = json.loads(out.read_text())["tasks"]["qs"]
    assert "problems" not in summary and summary["problems_file"] == "s.qs.jsonl"
    rows = [json.loads(line) for line in (tmp_path / "out" / "s.qs.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["q1", "q2", "q3"] and all(len(r["answers"]) == len(r["verdicts"]) == 64 for r in rows)
    # greedy: "answer: 1" to every problem, right for q1 only
    assert [r["greedy"] for r in rows] == ["answer: 1"] * 3 and [r["greedy_correct"] for r in rows] == [True, False, False]
    assert summary["greedy_accuracy"] == pytest.approx(1 / 3) == sum(r["greedy_correct"] for r in rows) / 3
    # pass@k by hand from the written verdicts
    for k in (1, 2, 8, 64):
        by_hand = sum(pass_at_k(64, sum(r["verdicts"]), k) for r in rows) / 3
        assert summary[f"pass@{k}"] == pytest.approx(by_hand, abs=1e-12), k
    assert summary["pass@1"] == pytest.approx(sum(sum(r["verdicts"]) for r in rows) / (3 * 64))
    vals = [summary[f"pass@{k}"] for k in (1, 2, 8, 64)]
    assert vals == sorted(vals) and 0 < vals[0] < vals[-1] <= 1
    # the samples follow the model: each problem's right fraction near its probability worked by hand
    for r, d in zip(rows, "123"):
        assert sum(r["verdicts"]) / 64 == pytest.approx(_p_right(d), abs=0.2), (d, sum(r["verdicts"]))
    # the same seed gives the same answers; another seed other ones
    again = run_suite(m, tok, suite, say=lambda s: None)["tasks"]["qs"]
    assert again["problems"] == res["problems"] and again["pass@8"] == res["pass@8"]
    suite.tasks[0].seed = 8
    other = run_suite(m, tok, suite, say=lambda s: None)["tasks"]["qs"]
    assert [p["answers"] for p in other["problems"]] != [p["answers"] for p in res["problems"]]


def test_verified_task_refuses_k_above_n_and_names_a_bad_line(tmp_path):
    from llm.eval.__main__ import main
    from llm.eval.core import EvalDataError, run_suite
    from llm.rl.tasks import TaskDataError

    m, tok = _bigram()
    with pytest.raises(EvalDataError, match=r"task qs: pass@8 needs at least 8 sampled answers per problem, but samples \(--n\) is 4"):
        run_suite(m, tok, _verified(_task_file(tmp_path), samples=4, pass_k=[1, 8]))
    with pytest.raises(EvalDataError, match=r"pass@2 needs at least 2 .* samples \(--n\) is 0"):
        run_suite(m, tok, _verified(_task_file(tmp_path), pass_k=[2]))
    # the command line refuses before loading any model (the path need not be one)
    with pytest.raises(SystemExit, match=r"pass@8 needs at least 8 sampled answers per problem, but samples \(--n\) is 4"):
        main([str(tmp_path / "no-model"), "--tasks", "builtin:arithmetic", "--n", "4", "--k", "1,8"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q1", "answer": "1", "verifier": "number"}\n{"prompt": "q2", "answer": "two", "verifier": "number"}\n')
    with pytest.raises(TaskDataError, match=r"bad.jsonl:2: field 'answer': 'two' is not a number"):
        run_suite(m, tok, _verified(str(bad)))
    with pytest.raises(EvalDataError, match="unknown built-in task 'nope'"):
        run_suite(m, tok, _verified("builtin:nope"))


@pytest.mark.tier("integration")
def test_xiulian_eval_tasks_builtin_arithmetic_on_the_tiny_model(tmp_path, tiny_base):
    """``xiulian eval <export> --tasks builtin:arithmetic --n 4 --k 1,2,4``: the summary JSON and the
    per-problem jsonl beside it agree, and the same seed gives the same file."""
    from llm.eval.__main__ import main

    args = [tiny_base, "--tasks", "builtin:arithmetic", "--n", "4", "--k", "1,2,4", "--limit", "6", "--max-new-tokens", "8"]
    res = main([*args, "--out", str(tmp_path / "a.json")])
    summary = json.loads((tmp_path / "a.json").read_text())
    t = summary["tasks"]["arithmetic"]
    assert summary["suite"] == "arithmetic" and t["type"] == "verified" and t["n"] == 6 and t["samples"] == 4
    assert t == {k: v for k, v in res["tasks"]["arithmetic"].items() if k != "problems"}
    rows = [json.loads(line) for line in (tmp_path / t["problems_file"]).read_text().splitlines()]
    assert len(rows) == 6 and all(r["prompt"].startswith("What is ") and len(r["verdicts"]) == 4 for r in rows)
    assert t["greedy_accuracy"] == sum(r["greedy_correct"] for r in rows) / 6
    for k in (1, 2, 4):
        assert t[f"pass@{k}"] == pytest.approx(sum(pass_at_k(4, sum(r["verdicts"]), k) for r in rows) / 6, abs=1e-12)
    assert t["pass@1"] <= t["pass@2"] <= t["pass@4"]
    main([*args, "--out", str(tmp_path / "b.json")])
    assert (tmp_path / "b.arithmetic.jsonl").read_text() == (tmp_path / "a.arithmetic.jsonl").read_text()


@pytest.mark.tier("integration")
def test_grpo_validation_logs_pass_at_k(tmp_path, sft_run):
    from test_grpo import SHORT, _train

    res = _train(
        tmp_path,
        sft_run[1]["export"],
        [*SHORT, "trainer.max_steps=1", "trainer.val_every_n_steps=1", "stage.grpo.val_samples=4", "stage.grpo.val_pass_k=[4,1,2]"],
    )
    for m in (res["before"], res["metrics"]):
        vals = [m[f"val/pass@{k}"] for k in (1, 2, 4)]
        assert all(0 <= v <= 1 for v in vals) and vals == sorted(vals), m
        assert 0 <= m["val/accuracy"] <= 1
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "val/pass@4" in header
    from llm.config import GRPOConfig

    with pytest.raises(ValueError, match=r"stage.grpo.val_pass_k=\[1, 8\]: each k must be in 1..stage.grpo.val_samples=4"):
        GRPOConfig(val_samples=4, val_pass_k=[1, 8])
