"""Verifiable tasks (llm.rl.tasks): answer extraction, number equivalence, the countdown checker
(ast, never eval), the JSON-lines format and its errors, and the built-in generators' determinism
and disjoint splits."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from llm.rl.tasks import (
    GENERATORS,
    Task,
    TaskDataError,
    builtin_tasks,
    check_answer,
    eval_countdown,
    extract_answer,
    extract_boxed,
    parse_int_list,
    parse_number,
    read_tasks,
    score_responses,
    verify,
    verify_batch,
    write_tasks,
)


# ============================================================================ extraction
def test_extract_boxed_nested_and_last():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed(r"first \boxed{3}, then \boxed{ 4 }") == "4"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed{12") is None  # not closed
    assert extract_boxed("no box") is None


def test_extract_answer_formats():
    assert extract_answer(r"work... \boxed{42}. Answer: 41") == "42"  # a box wins
    assert extract_answer("Let me think.\nAnswer: 1,234.") == "1,234"
    assert extract_answer("answer: **7**\nmore text\nFinal answer: $-3$") == "-3"  # the last one
    assert extract_answer("ANSWER:   (3 + 5) * 3 = 24") == "(3 + 5) * 3 = 24"
    assert extract_answer(r"unclosed \boxed{5 but Answer: 6") == "6"
    assert extract_answer("It is 42.") is None
    assert extract_answer("7 + 9 = 16\n\nThe final answer is 16.") == "16"  # GSM8K's form, as SmolLM2 writes it
    assert extract_answer("The answer is: [1, 2]\nthanks") == "[1, 2]"
    assert extract_answer("the answer is 3. Answer: 4") == "4"  # an Answer: line wins
    assert extract_answer("Answer:   ") is None
    # an empty box is no answer (the GRPO demo's policy learned to write "\boxed{}" for the format reward)
    assert extract_answer(r"\boxed{} is the final answer \boxed{ }") is None
    task = Task(prompt="What is 7 * 0?", verifier="number", answer="0")
    assert score_responses([task], [r"7 * 0 = \boxed{}"]) == ([0.0], [False])
    assert score_responses([task], [r"7 * 0 = \boxed{0}"]) == ([1.0], [True])


# ============================================================================== numbers
@pytest.mark.parametrize(
    "a, b",
    [
        ("1,234", "1234"),
        ("1234.0", "1234"),
        ("2/4", "0.5"),
        (r"\frac{1}{2}", "0.5"),
        (r"-\dfrac{3}{6}", "-0.5"),
        ("$1,000,000$", "1e6"),
        ("007", "7"),
        ("+5", "5."),
        ("2 / 4", "0.5"),
        ("- 3", "-3"),
    ],
)
def test_numbers_equal(a, b):
    assert parse_number(a) is not None and parse_number(a) == parse_number(b)


def test_numbers_not_equal_or_not_numbers():
    assert parse_number("1/3") != parse_number("0.333")  # exact rationals
    assert parse_number("1,23") is None  # not a thousands grouping
    for bad in ("abc", "1/0", "inf", "nan", "1e999999999", "1 2", "", "9" * 300):
        assert parse_number(bad) is None, bad
    assert parse_number("1e100") == Fraction(10**100)


def test_parse_int_list():
    assert parse_int_list("[3, 1, 2]") == [3, 1, 2]
    assert parse_int_list("3,1,2") == parse_int_list("3 1 2") == [3, 1, 2]
    assert parse_int_list("-1, +2") == [-1, 2]
    assert parse_int_list("1, two") is None
    assert parse_int_list("1.5, 2") is None
    assert parse_int_list("[]") is None


# ============================================================================ countdown
def test_countdown_by_hand():
    assert eval_countdown("6 / (1 - 3 / 4)", [1, 3, 4, 6]) == 24  # 6 / (1/4), exact rationals
    assert eval_countdown("(3 + 5) * 3 = 24", [3, 3, 5]) == 24  # a trailing "= N" is ignored
    assert eval_countdown("7 × 2 − 10 ÷ 5", [2, 5, 7, 10]) == 12
    assert eval_countdown("25 - 5", [5, 25, 9]) == 20  # at most once: 9 unused is fine
    with pytest.raises(ValueError, match="does not use all"):
        eval_countdown("25 - 5", [5, 25, 9], use_all=True)


@pytest.mark.parametrize(
    "expr, why",
    [
        ("3 * 3", "beyond the given numbers"),  # 3 given once
        ("3 + 4", "beyond the given numbers"),  # 4 not given
        ("-3 + 5", "not allowed"),  # unary minus
        ("3 ** 5", "not allowed"),
        ("5 // 3", "not allowed"),
        ("1.5 * 2", "not allowed"),
        ("__import__('os').system('true')", "not allowed"),
        ("(lambda: 3)()", "not allowed"),
        ("5 / (3 - 3)", "beyond|division by zero"),
        ("3 +", "not an arithmetic expression"),
        ("", "empty"),
    ],
)
def test_countdown_refuses(expr, why):
    with pytest.raises(ValueError, match=why):
        eval_countdown(expr, [3, 5])


def test_countdown_division_by_zero():
    with pytest.raises(ValueError, match="division by zero"):
        eval_countdown("5 / (3 - 3)", [3, 3, 5])


# ============================================================================= verifying
def test_verify_rewards_and_format_credit():
    t = Task("What is 1 + 1?", "number", "2")
    assert verify(t, r"\boxed{2.0}") == 1.0
    assert verify(t, "Answer: 4/2") == 1.0
    assert verify(t, r"\boxed{3}") == 0.0
    assert verify(t, r"\boxed{3}", format_reward=0.1) == 0.1  # well-formed, wrong
    assert verify(t, "2", format_reward=0.1) == 0.0  # no answer in the asked format
    c = Task("reach 24", "countdown", meta={"numbers": [1, 3, 4, 6], "target": 24})
    assert verify(c, r"\boxed{6 / (1 - 3 / 4)}") == 1.0
    assert verify(c, r"\boxed{6 * 4}") == 1.0
    assert verify(c, r"\boxed{6 * 4 * 1 * 1}", format_reward=0.2) == 0.2  # 1 used twice
    assert verify_batch([t, c], [r"\boxed{2}", r"\boxed{6*4}"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="2 tasks but 1 responses"):
        verify_batch([t, c], ["x"])


def test_exact_and_int_list_verifiers():
    r = Task("reverse abc", "exact", "cba")
    assert check_answer(r, " 'cba' ") and check_answer(r, "`cba`")
    assert not check_answer(r, "CBA") and not check_answer(r, "cb a")
    s = Task("sort", "int_list", "1, 2, 3")
    assert check_answer(s, "[1,2,3]") and check_answer(s, "1 2 3")
    assert not check_answer(s, "3, 2, 1") and not check_answer(s, "1, 2")


# ============================================================================ jsonl
def test_write_read_round_trip(tmp_path):
    tasks = builtin_tasks("arithmetic", 3) + builtin_tasks("countdown", 2) + builtin_tasks("sort", 2) + builtin_tasks("reverse", 2)
    path = tmp_path / "tasks.jsonl"
    assert write_tasks(path, tasks) == 9
    assert read_tasks(path) == tasks


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "q"}', "field 'answer' is required for verifier 'exact'"),
        ('{"prompt": "", "answer": "a"}', "field 'prompt'"),
        ('{"prompt": "q", "answer": "a", "verifier": "regex"}', "field 'verifier': 'regex' is not one of"),
        ('{"prompt": "q", "answer": "x", "verifier": "number"}', "field 'answer': 'x' is not a number"),
        ('{"prompt": "q", "answer": "1, b", "verifier": "int_list"}', "not a list of integers"),
        ('{"prompt": "q", "verifier": "countdown", "meta": {"numbers": [1, 2]}}', "field 'meta.target'"),
        ('{"prompt": "q", "verifier": "countdown", "meta": {"numbers": [1.5], "target": 3}}', "field 'meta.numbers'"),
        ('{"prompt": "q", "answr": "a"}', "unknown field(s) 'answr'"),
        ('{"prompt": "q", "answer": "1", "tests": ["assert f() == 1"]}', "field 'tests' is only for verifier 'code'"),
        ('{"prompt": "q", "verifier": "code"}', "field 'tests' must be a non-empty list"),
        ('{"prompt": "q", "verifier": "code", "tests": ["assert f()", 3]}', "field 'tests' must be a non-empty list"),
        ('{"prompt": "q", "verifier": "code", "tests": "  "}', "field 'tests' must be a non-empty list"),
        ('{"prompt": "q", "verifier": "code", "tests": "assert f()", "meta": {"entry_point": "f()"}}', "field 'meta.entry_point'"),
        ('{"prompt": "q", "answer": true}', "field 'answer' must be text or a number"),
        ("[1, 2]", "a task is a JSON object"),
        ('{"prompt": "q", ', "invalid JSON"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "fine", "answer": "4", "verifier": "number"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(TaskDataError) as e:
        read_tasks(path)
    assert f"{path}:3:" in str(e.value)
    assert message in str(e.value)


def test_skip_bad_lines_keeps_the_good(tmp_path, caplog):
    path = tmp_path / "t.jsonl"
    rows = [{"prompt": "a", "answer": 4, "verifier": "number"}, {"prompt": "b"}, {"prompt": "c", "answer": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tasks = read_tasks(path, on_bad_row="skip")
    assert [t.prompt for t in tasks] == ["a", "c"]
    assert tasks[0].answer == "4"  # a number answer becomes text
    assert "1 bad task line(s) skipped, 2 kept" in caplog.text
    path.write_text('{"prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(TaskDataError, match="no tasks"):
        read_tasks(path, on_bad_row="skip")


# ====================================================================== built-in tasks
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_builtin_deterministic_and_splits_disjoint(name):
    train = builtin_tasks(name, 200, "train", seed=0)
    assert builtin_tasks(name, 200, "train", seed=0) == train
    assert builtin_tasks(name, 200, "train", seed=1) != train
    # every seed's held-out problems are apart from every seed's training problems
    test = builtin_tasks(name, 50, "test", seed=0) + builtin_tasks(name, 50, "test", seed=1)
    train += builtin_tasks(name, 200, "train", seed=1)
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    assert len({t.prompt for t in builtin_tasks(name, 200, "train", seed=0)}) == 200  # distinct within a split
    assert len({t.id for t in train + test}) == len(train + test)


@pytest.mark.parametrize("name", sorted(set(GENERATORS) - {"code"}))  # code: tests/test_sandbox.py (it runs them)
def test_builtin_gold_answers_verify(name):
    for t in builtin_tasks(name, 30, "test", seed=3):
        gold = t.meta["solution"] if t.verifier == "countdown" else t.answer
        assert verify(t, f"Answer: {gold}") == 1.0, t
        assert verify(t, r"\boxed{" + gold + "}") == 1.0, t
        assert verify(t, r"\boxed{12345678}") == 0.0, t


def test_builtin_difficulty_and_errors():
    four = builtin_tasks("arithmetic", 20, digits=4, ops=["*"])
    assert all(1000 <= t.meta["a"] <= 9999 and t.meta["op"] == "*" for t in four)
    assert all(len(t.meta["numbers"]) == 3 for t in builtin_tasks("countdown", 10, count=3))
    assert all(len(t.meta["text"]) == 9 for t in builtin_tasks("reverse", 5, length=9))
    # one-digit additions: 100 problems, about 20 of them held out -> 60 distinct test ones do not exist
    with pytest.raises(ValueError, match=r"only \d+ distinct test problems found, 60 asked"):
        builtin_tasks("arithmetic", 60, "test", digits=1, ops=["+"])
    with pytest.raises(ValueError, match="unknown built-in task 'gsm8k'"):
        builtin_tasks("gsm8k", 1)
    with pytest.raises(ValueError, match="split='val'"):
        builtin_tasks("sort", 1, "val")
    with pytest.raises(ValueError, match="ops from"):
        builtin_tasks("arithmetic", 1, ops=["/"])
