"""Tasks with verifiable answers for RL: the record, its JSON-lines form, answer extraction, the
verifiers, and built-in synthetic tasks generated deterministically from a seed.

A task file is JSON lines, one task a line::

    {"prompt": "What is 12 * 34? ...", "answer": "408", "verifier": "number"}
    {"prompt": "Using 3, 5, 7 ... equals 26 ...", "verifier": "countdown", "meta": {"numbers": [3, 5, 7], "target": 26}}

    {"prompt": "Write a function f(x) ...", "verifier": "code", "tests": ["assert f(2) == 5"], "meta": {"entry_point": "f"}}

Fields: ``prompt`` (text, required), ``verifier`` (how an answer is checked, default ``exact``),
``answer`` (required except for ``countdown`` and ``code``), ``tests`` (``code`` only, and
required there), ``id`` and ``meta`` (an object; ``countdown`` reads ``numbers``, ``target`` and
optionally ``use_all``; ``code`` reads ``entry_point``). Verifiers:

* ``number``: numerically equal as exact rationals: ``1,234`` = ``1234.0``; ``2/4`` = ``0.5`` =
  ``\\frac{1}{2}``; ``1/3`` is not ``0.333``.
* ``exact``: the same text after trimming, collapsing whitespace and dropping matching quotes.
* ``int_list``: the same sequence of integers (``[1, 2, 3]``, ``1,2,3`` and ``1 2 3`` alike).
* ``countdown``: an arithmetic expression (+ - * / and parentheses, read with :mod:`ast`, never
  evaluated as Python) that uses each given number at most once (all of them with ``use_all``)
  and equals ``target``.
* ``code``: Python run against ``tests`` (a list of ``assert`` statements, or one test program)
  in :mod:`llm.rl.sandbox`; the score is the fraction of tests passed. With ``meta.entry_point``
  the answer must define that function (tests may call it as ``candidate``).
* ``math``: mathematically equal, by the ``math-verify`` package (LaTeX or plain expressions:
  ``\\frac{1}{2}`` = ``0.5``, ``\\sqrt{4}`` = ``2``, ``x=3`` = ``3``, sets and intervals;
  :mod:`llm.rl.math_answer`, each comparison in a worker process killed after a time limit).
  Needs the ``rl`` extra: a task file asking for it without the package is refused at load.

The answer is taken from a response's last ``\\boxed{...}``, else its last ``Answer: ...`` line;
for ``code``, from its last fenced code block (the whole response when it has none).
:func:`verify` gives 1 for a right answer, 0 for none, and ``format_reward`` (default 0) for an
answer in the right format that is wrong; for ``code`` the fraction of tests passed.

Built-in tasks (:func:`builtin_tasks`): ``arithmetic``, ``countdown``, ``sort``, ``reverse``,
``code`` (write a small function; tests held by the task).
Each problem falls into the train or the held-out (``test``) split by a hash of the problem
itself, so the splits never share a problem whatever the seeds (for one ``held_out`` fraction).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from llm.data.chat import jsonl_records
from llm.rl.math_answer import MathVerifyMissing, math_equal, require_math_verify
from llm.rl.sandbox import SandboxLimits, run_tests_batch
from llm.writes import write_guard

log = logging.getLogger(__name__)

VERIFIERS = ("number", "exact", "int_list", "countdown", "code", "math")
FIELDS = ("prompt", "answer", "verifier", "id", "meta", "tests")
MAX_ANSWER_CHARS = 200  # longer answers are not parsed (numbers, expressions): wrong, not slow


class TaskDataError(ValueError):
    """A task record that cannot be used; the message names file, line and field."""


@dataclass
class Task:
    prompt: str
    verifier: str = "exact"
    answer: str | None = None
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tests: list[str] | str | None = None  # verifier "code": assert statements, or one test program

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"prompt": self.prompt, "verifier": self.verifier}
        if self.answer is not None:
            rec["answer"] = self.answer
        if self.tests is not None:
            rec["tests"] = self.tests
        if self.id:
            rec["id"] = self.id
        if self.meta:
            rec["meta"] = self.meta
        return rec

    @classmethod
    def from_record(cls, rec: Any, where: str = "task") -> Task:
        """Check a parsed JSON record; errors name ``where`` (``file:line``) and the field."""
        if not isinstance(rec, dict):
            raise TaskDataError(f"{where}: a task is a JSON object, got {type(rec).__name__}")
        unknown = sorted(set(rec) - set(FIELDS))
        if unknown:
            raise TaskDataError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} (known: {', '.join(FIELDS)})")
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise TaskDataError(f"{where}: field 'prompt' must be non-empty text")
        verifier = rec.get("verifier", "exact")
        if verifier not in VERIFIERS:
            raise TaskDataError(f"{where}: field 'verifier': {verifier!r} is not one of {', '.join(VERIFIERS)}")
        meta = rec.get("meta", {})
        if not isinstance(meta, dict):
            raise TaskDataError(f"{where}: field 'meta' must be an object")
        answer = rec.get("answer")
        if isinstance(answer, bool) or not (answer is None or isinstance(answer, (str, int, float))):
            raise TaskDataError(f"{where}: field 'answer' must be text or a number")
        if answer is not None:
            answer = str(answer)
        tests = rec.get("tests")
        if verifier != "code" and tests is not None:
            raise TaskDataError(f"{where}: field 'tests' is only for verifier 'code' (this task's verifier is {verifier!r})")
        if verifier == "code":
            if isinstance(tests, str):
                ok = bool(tests.strip())
            else:
                ok = isinstance(tests, list) and bool(tests) and all(isinstance(x, str) and x.strip() for x in tests)
            if not ok:
                raise TaskDataError(
                    f"{where}: field 'tests' must be a non-empty list of test statements or one test program for verifier 'code'"
                )
            entry = meta.get("entry_point")
            if entry is not None and not (isinstance(entry, str) and entry.isidentifier()):
                raise TaskDataError(f"{where}: field 'meta.entry_point' must be a function name, got {entry!r}")
        elif verifier == "countdown":
            nums, target = meta.get("numbers"), meta.get("target")
            if not (isinstance(nums, list) and nums and all(type(x) is int and x >= 0 for x in nums)):
                raise TaskDataError(f"{where}: field 'meta.numbers' must be a non-empty list of integers >= 0 for verifier 'countdown'")
            if type(target) is not int:
                raise TaskDataError(f"{where}: field 'meta.target' must be an integer for verifier 'countdown'")
        elif answer is None:
            raise TaskDataError(f"{where}: field 'answer' is required for verifier {verifier!r}")
        elif verifier == "math":
            try:
                require_math_verify()
            except MathVerifyMissing as e:
                raise TaskDataError(f"{where}: {e}") from None
        elif verifier == "number" and parse_number(answer) is None:
            raise TaskDataError(f"{where}: field 'answer': {answer!r} is not a number")
        elif verifier == "int_list" and parse_int_list(answer) is None:
            raise TaskDataError(f"{where}: field 'answer': {answer!r} is not a list of integers")
        task_id = rec.get("id", "")
        return cls(prompt=prompt, verifier=verifier, answer=answer, id=str(task_id), meta=meta, tests=tests)


def read_tasks(path: str | Path, on_bad_row: str = "error") -> list[Task]:
    """The tasks of a JSON-lines file. A bad line raises :class:`TaskDataError` naming
    ``file:line`` and the field, or with ``on_bad_row="skip"`` is counted, logged and left out."""
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row={on_bad_row!r}: error or skip")
    tasks, skipped = [], 0
    for where, rec in jsonl_records(path):
        try:
            if isinstance(rec, Exception):
                raise TaskDataError(str(rec))
            tasks.append(Task.from_record(rec, where))
        except TaskDataError as e:
            if on_bad_row == "error":
                raise
            skipped += 1
            log.warning("skipped: %s", e)
    if skipped:
        log.warning("%s: %d bad task line(s) skipped, %d kept", path, skipped, len(tasks))
    if not tasks:
        raise TaskDataError(f"{path}: no tasks")
    return tasks


def write_tasks(path: str | Path, tasks: Iterable[Task]) -> int:
    """Write tasks as JSON lines (UTF-8); returns how many."""
    n = 0
    with write_guard(path, "task file"), open(path, "w", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps(t.to_record(), ensure_ascii=False) + "\n")
            n += 1
    return n


# ------------------------------------------------------------------------ answer extraction
_ANSWER_LINE = re.compile(r"answer\s*[:：]\s*(.*)", re.IGNORECASE)
_ANSWER_IS = re.compile(r"\banswer\s+is\s*[:：]?\s*(.*)", re.IGNORECASE)  # "The (final) answer is 16." (GSM8K's form)


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces balanced;
    None when there is none or it is not closed."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The answer of a response: its last ``\\boxed{...}``, else the rest of the line after its
    last ``Answer:``, else after its last "answer is" (``The final answer is 16.``; both
    case-insensitive; surrounding ``$``, ``**`` and a final period dropped), else None. An empty
    last ``\\boxed{}`` is no answer: it would earn the format reward for nothing (a policy learns
    to write it, as SmolLM2 did in the GRPO demo)."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed or None
    matches = _ANSWER_LINE.findall(text) or _ANSWER_IS.findall(text)
    if not matches:
        return None
    ans = matches[-1].strip()
    for wrap in ("**", "$", "`"):
        if len(ans) >= 2 * len(wrap) and ans.startswith(wrap) and ans.endswith(wrap):
            ans = ans[len(wrap) : -len(wrap)].strip()
    ans = ans.rstrip(".").strip()
    return ans or None


# -------------------------------------------------------------------------------- verifiers
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_EXPONENT = re.compile(r"[eE]([+-]?\d+)")


def parse_number(text: str) -> Fraction | None:
    """An integer, decimal, fraction (``a/b``, ``\\frac{a}{b}``) or number with thousands commas
    as an exact :class:`~fractions.Fraction`; None when it is not one. ``$`` signs and the spaces
    around ``/`` and after a sign are ignored."""
    s = text.strip()
    if len(s) > MAX_ANSWER_CHARS:
        return None
    s = s.replace("$", "").replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    s = re.sub(r"\s*/\s*", "/", re.sub(r"^([+-])\s+", r"\1", s.strip())).rstrip(".")
    if re.search(r"\s", s):  # "1 2" is not 12
        return None
    s = _FRAC.sub(r"\1/\2", s)
    if "," in s:
        if not _THOUSANDS.fullmatch(s):
            return None
        s = s.replace(",", "")
    if any(abs(int(e)) > 100 for e in _EXPONENT.findall(s)):  # 1e999999999 would take minutes
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def parse_int_list(text: str) -> list[int] | None:
    """``[1, 2, 3]``, ``1,2,3`` or ``1 2 3`` as a list of ints; None when any item is not one."""
    s = text.strip()
    if len(s) > 10 * MAX_ANSWER_CHARS:
        return None
    if s[:1] in "[(" and s[-1:] in "])":
        s = s[1:-1]
    items = [x for x in re.split(r"[,\s]+", s) if x]
    if not items or not all(re.fullmatch(r"[+-]?\d+", x) for x in items):
        return None
    return [int(x) for x in items]


def _normalise_text(text: str) -> str:
    s = " ".join(text.split())
    for q in ('"', "'", "`"):
        if len(s) >= 2 and s[0] == q and s[-1] == q:
            s = s[1:-1].strip()
    return s


_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def eval_countdown(expr: str, numbers: Sequence[int], use_all: bool = False) -> Fraction:
    """The exact value of a countdown expression. Raises ``ValueError`` naming why it is not
    allowed: anything but integer literals, + - * / and parentheses; a number not given or used
    more often than given; (``use_all``) a given number unused; division by zero. A trailing
    ``= N`` is ignored, and ×, ÷, − read as *, /, -. Nothing is run: the text is parsed with
    :mod:`ast` and the tree walked."""
    s = expr.replace("×", "*").replace("·", "*").replace("÷", "/").replace("−", "-").replace("\\times", "*").replace("\\div", "/")
    s = s.split("=")[0].strip()
    if not s or len(s) > MAX_ANSWER_CHARS:
        raise ValueError("empty or too long")
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {s!r}") from None
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"not allowed in a countdown expression: {ast.dump(node)[:60]}")

    value = walk(tree.body)
    extra = Counter(used) - Counter(numbers)
    if extra:
        raise ValueError(f"uses {sorted(extra.elements())} beyond the given numbers {list(numbers)}")
    if use_all and Counter(numbers) - Counter(used):
        raise ValueError(f"does not use all of {list(numbers)}")
    return value


_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The code of a response: its last fenced block marked ``python`` (or ``py``, ``python3``),
    else its last unmarked fenced block, else the whole response."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    for want in (("python", "py", "python3"), ("",)):
        found = [body for lang, body in blocks if lang in want]
        if found:
            return found[-1]
    return text


def has_code_block(text: str) -> bool:
    return bool(_FENCE.search(text))


def code_scores(
    tasks: Sequence[Task], responses: Sequence[str], limits: SandboxLimits | None = None, workers: int | None = None
) -> list[float]:
    """The fraction of its tests each response's code passes (``code`` tasks), run in the
    sandbox, ``workers`` answers at a time."""
    if any(t.verifier != "code" for t in tasks):
        raise ValueError("code_scores: only tasks with verifier 'code'")
    results = run_tests_batch(
        [extract_code(r) for r in responses],
        [t.tests or [] for t in tasks],
        limits,
        entry_points=[t.meta.get("entry_point") for t in tasks],
        workers=workers,
    )
    return [r.fraction for r in results]


def score_responses(tasks: Sequence[Task], responses: Sequence[str], limits: SandboxLimits | None = None) -> tuple[list[float], list[bool]]:
    """(correctness, has an answer in the asked form) of each response: 1/0 by the task's
    verifier, or for ``code`` tasks the fraction of tests passed (all of a batch's code run in
    the sandbox in parallel); the form is a fenced code block for ``code``, else an extracted
    answer."""
    if len(tasks) != len(responses):
        raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses")
    correct, formed = [0.0] * len(tasks), [False] * len(tasks)
    code = [i for i, t in enumerate(tasks) if t.verifier == "code"]
    for i, s in zip(code, code_scores([tasks[i] for i in code], [responses[i] for i in code], limits) if code else []):
        correct[i], formed[i] = s, has_code_block(responses[i])
    for i, (t, r) in enumerate(zip(tasks, responses)):
        if t.verifier != "code":
            a = extract_answer(r)
            correct[i], formed[i] = float(a is not None and check_answer(t, a)), a is not None
    return correct, formed


def check_answer(task: Task, answer: str) -> bool:
    """Whether an extracted ``answer`` is right for ``task`` (for ``code``: the code passes all
    its tests)."""
    if task.verifier == "number":
        got, want = parse_number(answer), parse_number(task.answer or "")
        return got is not None and got == want
    if task.verifier == "exact":
        return _normalise_text(answer) == _normalise_text(task.answer or "")
    if task.verifier == "int_list":
        got = parse_int_list(answer)
        return got is not None and got == parse_int_list(task.answer or "")
    if task.verifier == "countdown":
        try:
            return eval_countdown(answer, task.meta["numbers"], bool(task.meta.get("use_all", False))) == task.meta["target"]
        except ValueError:
            return False
    if task.verifier == "code":
        return code_scores([task], [answer], workers=1)[0] == 1.0
    if task.verifier == "math":
        return math_equal(task.answer or "", answer)
    raise ValueError(f"unknown verifier {task.verifier!r} (one of {', '.join(VERIFIERS)})")


def verify(task: Task, response: str, format_reward: float = 0.0) -> float:
    """The reward of a response: 1.0 when its extracted answer is right, ``format_reward`` when it
    has an answer in the asked format (``\\boxed{}`` or ``Answer:``) that is wrong, 0.0 when it
    has none. For ``code``: the fraction of tests passed (``format_reward`` instead of 0 when a
    fenced block fails them all)."""
    if task.verifier == "code":
        frac = code_scores([task], [response], workers=1)[0]
        return frac if frac > 0 or not has_code_block(response) else float(format_reward)
    answer = extract_answer(response)
    if answer is None:
        return 0.0
    return 1.0 if check_answer(task, answer) else float(format_reward)


def verify_batch(tasks: Sequence[Task], responses: Sequence[str], format_reward: float = 0.0) -> list[float]:
    if len(tasks) != len(responses):
        raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses")
    correct, formed = score_responses(tasks, responses)
    return [c if c > 0 or not f else float(format_reward) for c, f in zip(correct, formed)]


# ---------------------------------------------------------------------------- built-in tasks
BOXED = "Put the final answer in \\boxed{}."
SPLITS = ("train", "test")


def split_of(key: str, held_out: float) -> str:
    """``test`` for the fraction ``held_out`` of problem keys (by a hash of the key), else
    ``train``: the same problem is always in the same split."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if h < held_out else "train"


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def gen_arithmetic(rng: random.Random, digits: int = 3, ops: Sequence[str] = ("+", "-", "*")) -> tuple[str, Task]:
    """``a op b`` with ``digits``-digit operands (1 digit: 0-9)."""
    if digits < 1 or not ops or any(o not in "+-*" for o in ops):
        raise ValueError(f"arithmetic: digits >= 1 and ops from + - * (got digits={digits}, ops={list(ops)})")
    a, b, op = _operand(rng, digits), _operand(rng, digits), rng.choice(list(ops))
    value = a + b if op == "+" else a - b if op == "-" else a * b
    task = Task(f"What is {a} {op} {b}? {BOXED}", "number", str(value), meta={"a": a, "b": b, "op": op, "digits": digits})
    return f"{a}{op}{b}", task


def gen_countdown(rng: random.Random, count: int = 4, max_number: int = 25, max_target: int = 500) -> tuple[str, Task]:
    """``count`` numbers in 1..``max_number`` and a target in 2..``max_target`` that a random
    expression over all of them reaches (so every task has a solution, kept in ``meta.solution``);
    intermediate values stay positive integers and the target is none of the numbers."""
    if count < 2 or max_number < 1 or max_target < 2:
        raise ValueError(f"countdown: need count >= 2, max_number >= 1, max_target >= 2 (got {count}, {max_number}, {max_target})")
    for _ in range(1000):
        nums = [rng.randint(1, max_number) for _ in range(count)]
        items = [(Fraction(x), str(x)) for x in nums]
        while len(items) > 1:
            (a, ea), (b, eb) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
            op = rng.choice("+-*/")
            # keep every intermediate value a non-negative integer: swap, or add instead
            if op == "-" and a < b or op == "/" and (b == 0 or a % b) and a != 0 and b % a == 0:
                (a, ea), (b, eb) = (b, eb), (a, ea)
            if op == "/" and (b == 0 or a % b):
                op = "+"
            value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
            items.append((value, f"({ea} {op} {eb})"))
        target, solution = items[0]
        if target.denominator == 1 and 2 <= target <= max_target and int(target) not in nums:
            nums_sorted = sorted(nums)
            t = int(target)
            prompt = (
                f"Using the numbers {', '.join(map(str, nums_sorted))}, each at most once, with + - * / and parentheses, "
                f"write an expression that equals {t}. Put the expression in \\boxed{{}}."
            )
            meta = {"numbers": nums_sorted, "target": t, "solution": solution[1:-1]}
            return f"{nums_sorted}->{t}", Task(prompt, "countdown", None, meta=meta)
    raise ValueError(f"countdown: no target in 2..{max_target} found for count={count}, max_number={max_number}")


def gen_sort(rng: random.Random, length: int = 5, max_number: int = 99) -> tuple[str, Task]:
    """Sort ``length`` integers in 0..``max_number`` ascending."""
    if length < 1 or max_number < 0:
        raise ValueError(f"sort: need length >= 1 and max_number >= 0 (got {length}, {max_number})")
    nums = [rng.randint(0, max_number) for _ in range(length)]
    shown = ", ".join(map(str, nums))
    prompt = f"Sort these numbers from smallest to largest: {shown}. Put the sorted list, comma-separated, in \\boxed{{}}."
    return "sort:" + shown, Task(prompt, "int_list", ", ".join(map(str, sorted(nums))), meta={"numbers": nums})


def gen_reverse(rng: random.Random, length: int = 6) -> tuple[str, Task]:
    """Write a random lower-case string of ``length`` letters backwards."""
    if length < 1:
        raise ValueError(f"reverse: need length >= 1 (got {length})")
    s = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
    return "reverse:" + s, Task(f"Write the string '{s}' backwards. {BOXED}", "exact", s[::-1], meta={"text": s})


CODE_FORMAT = "Answer with the function in a ```python code block."


def gen_code(rng: random.Random, n_tests: int = 4) -> tuple[str, Task]:
    """Write a small Python function ``f``: ``a*x + b``, ``x`` repeated ``n`` times (a string),
    the count of list items above ``t``, or the ``k``-th digit from the right; ``n_tests`` asserts
    on random inputs (kept in the task, never shown in the prompt), a reference solution in
    ``meta.solution``."""
    if n_tests < 1:
        raise ValueError(f"code: n_tests >= 1 (got {n_tests})")
    kind = rng.choice(["linear", "repeat", "count_above", "digit"])
    if kind == "linear":
        a, b = rng.randint(2, 9), rng.randint(-20, 20)
        desc, key = f"takes an integer x and returns {a} * x {'+' if b >= 0 else '-'} {abs(b)}", f"linear:{a}:{b}"
        cases = [(x, a * x + b) for x in (rng.randint(-50, 50) for _ in range(n_tests))]
        solution = f"return {a} * x + {b}"
    elif kind == "repeat":
        n = rng.randint(2, 5)
        desc, key = f"takes a string x and returns x repeated {n} times", f"repeat:{n}"
        words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 4))) for _ in range(n_tests)]
        cases = [(repr(w), repr(w * n)) for w in words]
        solution = f"return x * {n}"
    elif kind == "count_above":
        t = rng.randint(0, 20)
        desc, key = f"takes a list of integers x and returns how many of them are greater than {t}", f"count_above:{t}"
        lists = [[rng.randint(0, 30) for _ in range(rng.randint(0, 6))] for _ in range(n_tests)]
        cases = [(xs, sum(v > t for v in xs)) for xs in lists]
        solution = f"return sum(1 for v in x if v > {t})"
    else:
        k = rng.randint(1, 3)
        desc, key = (
            f"takes a non-negative integer x and returns its digit number {k} counted from the right (0 if x has fewer digits)",
            f"digit:{k}",
        )
        cases = [(x, x // 10 ** (k - 1) % 10) for x in (rng.randint(0, 99999) for _ in range(n_tests))]
        solution = f"return x // {10 ** (k - 1)} % 10"
    tests = [f"assert f({x}) == {y}" for x, y in cases]
    prompt = f"Write a Python function f(x) that {desc}. {CODE_FORMAT}"
    meta = {"entry_point": "f", "kind": kind, "solution": f"def f(x):\n    {solution}\n"}
    return key, Task(prompt, "code", None, meta=meta, tests=tests)


GENERATORS: dict[str, Callable[..., tuple[str, Task]]] = {
    "arithmetic": gen_arithmetic,
    "countdown": gen_countdown,
    "sort": gen_sort,
    "reverse": gen_reverse,
    "code": gen_code,
}


def builtin_tasks(name: str, n: int, split: str = "train", seed: int = 0, held_out: float = 0.2, **params: Any) -> list[Task]:
    """``n`` distinct tasks of the built-in generator ``name`` in ``split`` (``train`` or
    ``test``), the same for the same arguments. ``params`` set the difficulty (``digits`` for
    arithmetic, ``count`` for countdown, ``length`` for sort and reverse; see each ``gen_*``).
    Raises ``ValueError`` when the settings do not hold ``n`` distinct problems for the split."""
    if name not in GENERATORS:
        raise ValueError(f"unknown built-in task {name!r} (one of {', '.join(GENERATORS)})")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: train or test")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out={held_out}: a fraction strictly between 0 and 1")
    gen = GENERATORS[name]
    rng = random.Random(f"{name}:{split}:{seed}")
    tasks: list[Task] = []
    seen: set[str] = set()
    for _ in range(max(2000, 50 * n)):
        if len(tasks) == n:
            break
        key, task = gen(rng, **params)
        if key in seen or split_of(f"{name}:{key}", held_out) != split:
            continue
        seen.add(key)
        task.id = f"{name}-{split}-{seed}-{len(tasks)}"
        tasks.append(task)
    if len(tasks) < n:
        raise ValueError(
            f"{name} {params or ''}: only {len(tasks)} distinct {split} problems found, {n} asked; make them harder or ask for fewer"
        )
    return tasks
