"""Rewards beyond the built-in verifiers: math answers compared for equivalence by math-verify (in a
worker process a time limit can kill), rule rewards (length, think format, regex), an LLM judge
against a real OpenAI-compatible server on loopback, and the weighted components in a GRPO run."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm.data.self_instruct.teachers import TeacherError
from llm.rl.judge import Judge, parse_score, render
from llm.rl.math_answer import MathChecker, math_equal
from llm.rl.rewards import length, load_reward_fn, regex, think_format
from llm.rl.tasks import Task, TaskDataError, check_answer, read_tasks, verify

needs_math_verify = pytest.mark.skipif(
    importlib.util.find_spec("math_verify") is None, reason="math-verify missing: pip install 'xiulian[rl]'"
)


# ------------------------------------------------------------------------------------ math
@needs_math_verify
@pytest.mark.parametrize(
    "gold, answer",
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "1/2"),
        ("\\sqrt{4}", "2"),
        ("2", "\\sqrt{4}"),
        ("x=3", "3"),
        ("3", "x = 3"),
        ("\\{1,2\\}", "\\{2,1\\}"),
        ("[1,2)", "[1, 2)"),
        ("(x+1)^2", "x^2+2x+1"),
        ("\\dfrac{3}{4}", "0.75"),
        ("50\\%", "50"),
        ("1,234", "1234"),
    ],
)
def test_math_verifier_accepts_equivalent_answers(gold, answer):
    assert check_answer(Task("q", "math", gold), answer)


@needs_math_verify
@pytest.mark.parametrize(
    "gold, answer",
    [
        ("\\frac{1}{2}", "0.51"),
        ("[1,2)", "[1,2]"),  # closed is not half-open
        ("\\{1,2\\}", "\\{1,3\\}"),
        ("1/3", "0.333"),
        ("\\pi", "3.14159"),
        ("x=3", "4"),
        ("2", ""),
        ("2", "two apples and a pear"),
    ],
)
def test_math_verifier_rejects_different_answers(gold, answer):
    assert not check_answer(Task("q", "math", gold), answer)


@needs_math_verify
def test_math_answer_is_extracted_from_the_stated_format():
    task = Task("q", "math", "\\frac{1}{2}")
    assert verify(task, "Half of one is \\boxed{0.5}.") == 1.0
    assert verify(task, "I think so.\nAnswer: $1/2$") == 1.0
    assert verify(task, "The final answer is $0.5$.") == 1.0  # GSM8K's "The answer is" form
    assert verify(task, "Half of one is 0.5") == 0.0  # in no stated form
    assert verify(task, "\\boxed{2}", format_reward=0.1) == 0.1


@needs_math_verify
def test_math_timeout_scores_a_pathological_answer_wrong_without_hanging():
    checker = MathChecker(timeout=1)
    try:
        assert checker.equal("1", "1")  # the worker is up
        t0 = time.perf_counter()
        assert not checker.equal("5", "9^{9^{9^{9}}}")  # minutes of sympy without a limit
        assert time.perf_counter() - t0 < 10
        assert checker.equal("\\frac{1}{2}", "0.5")  # and the checker still answers
    finally:
        checker.close()


@needs_math_verify
def test_math_works_off_the_main_thread_and_survives_a_dead_worker():
    checker = MathChecker(timeout=2)
    got = []
    try:
        t = threading.Thread(target=lambda: got.append(checker.equal("\\sqrt{4}", "2")))
        t.start()
        t.join(60)
        assert got == [True]  # math-verify's own signal alarms refuse to run here
        checker._proc.kill()  # the worker dies (e.g. out of memory): a new one takes over
        checker._proc.wait()
        assert checker.equal("x=3", "3")
    finally:
        checker.close()
    assert math_equal("2", "3") is False  # the shared checker


@needs_math_verify
def test_task_file_with_math_verifier_and_a_clear_error_without_the_package(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "Half of 1?", "answer": "\\frac{1}{2}", "verifier": "math"}) + "\n")
    (task,) = read_tasks(path)
    assert task.verifier == "math" and verify(task, "\\boxed{0.5}") == 1.0
    monkeypatch.setitem(__import__("sys").modules, "math_verify", None)  # as if not installed
    with pytest.raises(TaskDataError, match=r"t.jsonl:1: .*math-verify.*pip install 'xiulian\[rl\]'"):
        read_tasks(path)


# ------------------------------------------------------------------------------ rule rewards
def test_length_reward_has_a_target_range():
    r = ["", "abcd", "a" * 10, "a" * 20, "a" * 30, "a" * 45]
    assert length([], r, min_chars=8, max_chars=20) == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]
    assert length([], ["one two three", "one"], min_chars=2, max_chars=2, words=True) == [0.5, 0.5]
    with pytest.raises(ValueError, match="min_chars <= max_chars"):
        length([], ["x"], min_chars=5, max_chars=2)


def test_think_format_wants_reasoning_then_an_answer():
    r = [
        "<think>3 times 4 is 12</think> \\boxed{12}",
        "<think>3 times 4 is 12</think>\nAnswer: 12",
        "<think>3 times 4 is 12</think> It is 12.",  # no boxed / Answer: line
        "<think> </think> \\boxed{12}",  # empty reasoning
        "\\boxed{12}",  # no reasoning
        "So <think>x</think> \\boxed{12}",  # text before the block
        "<think>a</think><think>b</think> \\boxed{1}",  # two blocks
        "<think>unclosed \\boxed{12}",
    ]
    assert think_format([], r) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert think_format([], r[:3], require_answer=False) == [1.0, 1.0, 1.0]


def test_regex_reward_and_loading_the_new_built_ins():
    r = ["Answer: 42", "answer: 42\nthanks", "no"]
    assert regex([], r, pattern=r"^Answer: \d+$") == [1.0, 0.0, 0.0]
    assert regex([], r, pattern=r"answer: \d+", ignore_case=True) == [1.0, 1.0, 0.0]
    assert regex([], r, pattern=r"answer: \d+.*", full=True) == [0.0, 1.0, 0.0]  # . spans newlines
    with pytest.raises(ValueError, match="pattern"):
        regex([], r)
    assert load_reward_fn("length") is length and load_reward_fn("think_format") is think_format


# ------------------------------------------------------------------------------------- judge
TEMPLATE = "Question: {prompt}\nGold: {answer}\nAnswer: {response}\nScore 0-{max_score}."


class _JudgeServer:
    """A real /v1/chat/completions server on loopback: ``Score: 10`` when the graded answer contains
    the gold word, ``Score: 0`` when it does not, no score at all when it says ``garble``; the
    first ``fail_first`` requests get HTTP 503. With ``partial``, a wrong answer scores its length
    modulo 10 instead of 0."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0, partial: bool = False):
        self.requests, self.inflight, self.max_inflight, self.fail_first = [], 0, 0, fail_first
        lock, outer = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.requests.append(body)
                    n = len(outer.requests)
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                time.sleep(delay)
                with lock:
                    outer.inflight -= 1
                if self.path != "/v1/chat/completions" or n <= outer.fail_first:
                    self.send_response(503 if n <= outer.fail_first else 404)
                    self.end_headers()
                    return
                text = body["messages"][-1]["content"]
                gold = text.split("Gold: ")[1].split("\n")[0]
                answer = text.split("Answer: ")[1].split("\nScore")[0]
                reply = (
                    "hmm, hard to say"
                    if "garble" in answer
                    else f"Score: {10 if gold and gold in answer else len(answer) % 10 if partial else 0}"
                )
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge_server():
    s = _JudgeServer(delay=0.05)
    yield s
    s.close()


def test_parse_score_reads_a_number_and_normalises_it():
    assert parse_score("Score: 7") == 0.7
    assert parse_score("**Score:** 10", 10) == 1.0
    assert parse_score("I'd say 8/10 overall") == 0.8
    assert parse_score("reasoning mentions 3 steps. Score: 4.5") == 0.45  # the Score: wins over the first number
    assert parse_score("Score: 3", max_score=5) == 0.6
    assert parse_score("no idea") is None
    assert parse_score("Score: 11") is None and parse_score("Score: -1") is None
    assert render("{prompt} | \\boxed{} {response} {answer}/{max_score}", "P", "R") == "P | \\boxed{} R /10"


def test_judge_scores_answers_concurrently_and_counts_unparseable_replies(judge_server):
    judge = Judge(judge_server.url, "judge-model", prompt_template=TEMPLATE, max_concurrency=4)
    prompts = ["Capital of France?"] * 6
    responses = ["Paris.", "London", "It is Paris", "garble", "paris?", "Lyon"]
    scores = judge.score(prompts, responses, ["Paris"] * 6)
    assert scores == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert judge.unparseable == 1 and judge.calls == 6
    assert judge_server.max_inflight > 1  # requests in flight at once
    body = judge_server.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0


def test_judge_retries_a_failing_server_and_names_an_unreachable_url():
    server = _JudgeServer(fail_first=2)
    try:
        judge = Judge(server.url, prompt_template=TEMPLATE, backoff=0.01, max_concurrency=1)
        assert judge.score(["q"], ["Paris"], ["Paris"]) == [1.0]
        assert len(server.requests) == 3  # two 503s, then the answer
    finally:
        server.close()
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TeacherError, match=rf"stage.reward.judge.url=http://127.0.0.1:{port}/v1/chat/completions: .*unreachable"):
        Judge(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ValueError, match=r"\{response\}"):
        Judge(f"http://127.0.0.1:{port}/v1", prompt_template="no placeholder", check=False)


# ----------------------------------------------------------------------- weighted components
def test_reward_config_takes_a_list_of_weighted_functions_and_a_judge(tmp_path):
    from conftest import compose

    cfg = compose(
        [
            "stage=grpo",
            "model=hf",
            "data=tasks_demo",
            "stage.reward.functions=[{function: length, weight: 0.5, kwargs: {max_chars: 8}}, {function: regex, name: digits, kwargs: {pattern: '[0-9]'}}]",
            "stage.reward.judge.url=http://127.0.0.1:1/v1",
            "stage.reward.judge.weight=2.0",
        ],
        run_dir=tmp_path,
    )
    from omegaconf import OmegaConf

    from llm.config import Config

    c = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))
    f = c.stage.reward.functions
    assert [(x.function, x.weight, x.name, x.kwargs) for x in f] == [
        ("length", 0.5, None, {"max_chars": 8}),
        ("regex", 1.0, "digits", {"pattern": "[0-9]"}),
    ]
    assert c.stage.reward.judge.weight == 2.0 and c.stage.reward.judge.max_score == 10.0


@pytest.fixture(scope="session")
def sft_export(sft_run):
    return sft_run[1]["export"]


@pytest.mark.tier("integration")
def test_grpo_logs_the_judge_and_each_weighted_rule_reward(tmp_path, sft_export):
    from test_grpo import _rows, _train

    server = _JudgeServer(partial=True)
    try:
        res = _train(
            tmp_path,
            sft_export,
            [
                "stage.reward.functions=[{function: length, weight: 0.5, kwargs: {max_chars: 8}}, {function: regex, name: digits, kwargs: {pattern: '[0-9]'}}]",
                f"stage.reward.judge.url={server.url}",
                f"stage.reward.judge.prompt_template='{TEMPLATE}'",
                "stage.reward.judge.weight=2.0",
                "stage.grpo.dynamic_sampling=off",
                "trainer.max_steps=2",
                "trainer.val_every_n_steps=2",
            ],
        )
    finally:
        server.close()
    assert res["global_step"] == 2
    rows = _rows(tmp_path)
    assert len(rows) == 2
    for r in rows:  # each component logged unweighted, the total their weighted sum
        total = r["grpo/reward/correct"] + 0.5 * r["grpo/reward/length"] + r["grpo/reward/digits"] + 2.0 * r["grpo/reward/judge"]
        assert r["grpo/reward"] == pytest.approx(total, abs=1e-5)
        assert 0 <= r["grpo/reward/judge"] <= 1 and r["grpo/judge_unparseable"] == 0.0
    assert sum(r["grpo/reward/judge"] for r in rows) > 0
    # 2 iterations x 4 prompts x 4 answers, then greedy validation before and after (2 x 8 prompts)
    assert len(server.requests) == 2 * 16 + 2 * 8
    golds = [b["messages"][0]["content"].split("Gold: ")[1].split("\n")[0] for b in server.requests]
    assert all(g.lstrip("-").isdigit() for g in golds)  # the arithmetic task's answer, given to the judge


def test_stage_reward_sources_name_each_function_and_refuse_a_taken_name_or_a_dead_judge(tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from llm.config import JudgeConfig, RewardConfig, RewardFunctionConfig
    from llm.stages.rollout import RolloutStage

    def sources(**kw):
        holder = SimpleNamespace(stage_cfg=SimpleNamespace(reward=OmegaConf.structured(RewardConfig(**kw))), _frozen={})
        RolloutStage.setup_reward_sources(holder)
        return holder

    h = sources(
        functions=[RewardFunctionConfig("length", 0.5), RewardFunctionConfig("llm.rl.rewards:regex", 2.0, {"pattern": "x"}, "has_x")]
    )
    assert {k: w for k, (_, w, _) in h.rule_fns.items()} == {"length": 0.5, "has_x": 2.0} and h.judge is None
    with pytest.raises(ValueError, match=r"functions\[1\]: component name 'format' is taken"):
        sources(functions=[RewardFunctionConfig("short"), RewardFunctionConfig("regex", name="format")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TeacherError, match=rf"judge.url=http://127.0.0.1:{port}/v1/chat/completions: the judge endpoint is unreachable"):
        sources(judge=JudgeConfig(url=f"http://127.0.0.1:{port}/v1"))
