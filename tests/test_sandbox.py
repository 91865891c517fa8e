"""The code sandbox (llm/rl/sandbox.py) and code tasks: a right answer scores 1 and a partly right
one its fraction; an answer that loops, allocates without end, opens a socket, reads or writes
the trainer's files, or does not compile is stopped and counted by its cause; the process that
runs the sandbox (this test) is unaffected. Every case runs a real child interpreter."""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest

from llm.rl.sandbox import SandboxLimits, run_python, run_tests, run_tests_batch
from llm.rl.tasks import Task, builtin_tasks, extract_code, read_tasks, score_responses, verify, verify_batch, write_tasks

pytestmark = pytest.mark.tier("integration")  # each test starts child interpreters (about 0.1 s each)

FAST = SandboxLimits(timeout_s=4.0, test_timeout_s=1.0, memory_mb=256)
DOUBLE = "def f(x):\n    return 2 * x\n"
TESTS = ["assert f(1) == 2", "assert f(3) == 6", "assert f(0) == 0", "assert f(-2) == -4"]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_right_answer_scores_one_and_partly_right_a_fraction():
    r = run_tests(DOUBLE, TESTS, FAST)
    assert (r.passed, r.total, r.fraction, r.causes) == (4, 4, 1.0, {})
    # x * x equals 2 * x at 0 (and 2): one of the four tests
    r = run_tests("def f(x):\n    return x * x\n", TESTS, FAST)
    assert r.outcomes == ["wrong_answer", "wrong_answer", "passed", "wrong_answer"]
    assert r.fraction == 0.25 and r.causes == {"wrong_answer": 3}
    # one test program instead of a list: one test
    assert run_tests(DOUBLE, "for x in range(5):\n    assert f(x) == x + x\n", FAST).outcomes == ["passed"]
    # a test that raises something else than AssertionError is a crash, and the others still run
    r = run_tests(DOUBLE, ["assert f(1) == 2", "assert f(None) == 0", "assert f(2) == 4"], FAST)
    assert r.outcomes == ["passed", "crash", "passed"] and "TypeError" in r.errors[1]


def test_syntax_errors_are_counted_as_such():
    r = run_tests("def f(x) return 2 * x", TESTS, FAST)
    assert r.fraction == 0 and r.causes == {"syntax_error": 4} and "SyntaxError" in r.errors[0]
    r = run_tests(DOUBLE, ["assert f(1) == 2", "assert f(1 == 2"], FAST)
    assert r.outcomes == ["passed", "syntax_error"]


def test_endless_loop_is_stopped_at_the_time_limit():
    # each test has its own budget: the loop is interrupted, the next test runs
    loop = "def f(x):\n    if x == 3:\n        while True:\n            pass\n    return 2 * x\n"
    t0 = time.perf_counter()
    r = run_tests(loop, TESTS, FAST)
    assert r.outcomes == ["passed", "timeout", "passed", "passed"]
    assert 1.0 <= time.perf_counter() - t0 < FAST.timeout_s
    # a loop that swallows the per-test timer is killed with its process group at the wall clock
    stubborn = (
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ndef f(x):\n    while True:\n        pass\n"  # ignores the timer
    )
    limits = SandboxLimits(timeout_s=2.0, test_timeout_s=1.0)
    t0 = time.perf_counter()
    r = run_tests(stubborn, TESTS, limits)
    took = time.perf_counter() - t0
    assert r.causes == {"timeout": 4} and "killed" in r.errors[0]
    assert 2.0 <= took < 4.5  # killed at 2 s (slack for a loaded machine)
    assert run_python("while True:\n    pass\n", limits=limits).status == "timeout"


def test_unbounded_allocation_is_stopped_and_counted_as_memory():
    rss = _rss_mb()
    grab = "def f(x):\n    hoard = []\n    while True:\n        hoard.append(bytearray(10**7))\n"
    r = run_tests(grab, TESTS[:2], FAST)
    assert r.causes == {"memory": 2} and "MemoryError" in r.errors[0]
    r = run_tests("big = bytearray(10**10)\ndef f(x):\n    return 2 * x\n", TESTS, FAST)  # at the top level: every test
    assert r.causes == {"memory": 4}
    assert _rss_mb() - rss < 50  # none of it in this process


@pytest.fixture
def server():
    """A TCP server on 127.0.0.1 that records any connection it accepts."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    yield srv
    srv.close()


def _accepted(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def test_sockets_are_refused_and_the_server_sees_no_connection(server):
    port = server.getsockname()[1]
    assert socket.create_connection(("127.0.0.1", port), timeout=2) and _accepted(server)  # the server works
    for target in (f"('127.0.0.1', {port})", "('8.8.8.8', 53)", "('example.com', 80)"):
        code = f"import socket\ndef f(x):\n    socket.create_connection({target}, timeout=1).sendall(b'hi')\n    return 2 * x\n"
        r = run_tests(code, TESTS[:2], FAST)
        assert r.causes == {"forbidden": 2}, (target, r.errors)
        raw = f"import _socket\ns = _socket.socket()\ns.connect({target})\n"  # the C module, below socket.py
        assert run_python(raw, limits=FAST).status == "forbidden"
    assert not _accepted(server)
    r = run_python("print('ok')", limits=FAST)
    assert r.network in ("namespace", "user+namespace", "audit_hook")
    if os.geteuid() == 0:  # as root the child always gets its own network namespace
        assert r.network == "namespace"


def test_files_outside_the_work_directory_are_refused(tmp_path):
    target = tmp_path / "checkpoint.txt"
    target.write_text("weights", encoding="utf-8")
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2", encoding="utf-8")
    attempts = [
        f"open({str(target)!r}, 'w').write('pwned')",
        f"open({str(target)!r}, 'a').write('pwned')",
        f"import os\nos.remove({str(target)!r})",
        f"import os\nos.rename({str(target)!r}, 'stolen.txt')",
        f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_TRUNC)",
        f"import shutil\nshutil.copy({str(secret)!r}, 'copy.txt')",
        f"print(open({str(secret)!r}).read())",
        f"import pathlib\nprint(pathlib.Path({str(secret)!r}).read_text())",
        f"print(open('/proc/{os.getpid()}/environ', 'rb').read())",  # the trainer's environment
        f"import os\nprint(os.listdir({str(tmp_path)!r}))",
        "print(open('/etc/passwd').read())",
    ]
    for code in attempts:
        r = run_python(code, limits=FAST)
        assert r.status == "forbidden", (code, r)
        assert "hunter2" not in r.stdout and "checkpoint" not in r.stdout and "PATH=" not in r.stdout
        t = run_tests(code.replace("\n", "; ") + "\ndef f(x):\n    return 2 * x\n", TESTS[:1], FAST)
        assert t.causes == {"forbidden": 1}, (code, t)
    assert target.read_text(encoding="utf-8") == "weights" and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.txt",
        "secret.txt",
    ]
    # inside its own directory it may write and read back; the directory is gone afterwards
    r = run_python("import os\nopen('a.txt', 'w').write('x' * 3)\nprint(open('a.txt').read(), os.getcwd())", limits=FAST)
    assert r.status == "ok" and r.stdout.startswith("xxx ")
    assert not os.path.exists(r.stdout.split()[1])


def test_processes_and_signals_to_the_trainer_are_refused():
    for code in (
        "import os\nos.system('true')",
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.fork()",
        f"import os\nos.kill({os.getpid()}, 9)",
        "import ctypes\nctypes.CDLL(None).getpid()",
    ):
        assert run_python(code, limits=FAST).status == "forbidden", code


def test_run_python_gives_output_errors_and_a_minimal_environment(monkeypatch):
    monkeypatch.setenv("XIULIAN_TEST_SECRET", "s3cret")
    r = run_python("import sys, os\nprint(sys.stdin.read().upper())\nprint(sorted(os.environ))", "hello", FAST)
    assert r.status == "ok" and r.stdout.startswith("HELLO\n") and "XIULIAN_TEST_SECRET" not in r.stdout
    r = run_python("print('before')\nraise ValueError('boom')", limits=FAST)
    assert r.status == "error" and r.stdout == "before\n" and "ValueError: boom" in r.stderr
    assert run_python("import sys\nsys.exit(3)", limits=FAST).status == "error"
    assert run_python("x = (", limits=FAST).status == "syntax_error"
    # output beyond the file limit is cut, not held in memory
    r = run_python("while True:\n    print('x' * 100000)\n", limits=SandboxLimits(timeout_s=4, file_mb=1, max_output_chars=1000))
    assert r.status == "error" and len(r.stdout) == 1000 and "File too large" in r.stderr
    import numpy  # noqa: F401 - site-packages are readable

    assert run_python("import numpy as np\nprint(int(np.arange(5).sum()))", limits=FAST).stdout == "10\n"


def test_the_training_process_is_unaffected(tmp_path):
    cwd, env, rss = os.getcwd(), dict(os.environ), _rss_mb()
    limits_before = [resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NOFILE)]
    codes = [
        "import os\nos.chdir('/')\nos.environ['X'] = '1'\ndef f(x):\n    return 2 * x\n",
        "import os\nos._exit(0)\n",  # leaves without a word: every test a crash
        "raise SystemExit(0)\n",
        "def f(x):\n    hoard = []\n    while True:\n        hoard.append(bytearray(10**7))\n",
    ]
    results = run_tests_batch(codes, [TESTS] * len(codes), FAST, workers=2)
    assert [r.causes for r in results] == [{"forbidden": 4}, {"crash": 4}, {"crash": 4}, {"memory": 4}]
    assert os.getcwd() == cwd and dict(os.environ) == env and _rss_mb() - rss < 50
    assert [resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_NOFILE)] == limits_before


def test_batch_keeps_order_and_entry_point():
    codes = [DOUBLE, "def g(x):\n    return 2 * x\n", "def f(x):\n    return x\n"]
    rs = run_tests_batch(codes, [TESTS, ["assert candidate(2) == 4"], TESTS], FAST, entry_points=[None, "g", "f"], workers=3)
    assert [r.fraction for r in rs] == [1.0, 1.0, 0.25]
    r = run_tests("def h(x):\n    return 2 * x\n", TESTS, FAST, entry_point="f")
    assert r.causes == {"crash": 4} and "no function 'f'" in r.errors[0]


# ------------------------------------------------------------------------------ code tasks
def test_code_tasks_score_the_fraction_of_tests_passed(tmp_path):
    task = Task("Write f(x) = 2x.", "code", meta={"entry_point": "f"}, tests=TESTS)
    fenced = "Here it is:\n```python\n" + DOUBLE + "```\nDone."
    assert extract_code(fenced) == DOUBLE
    assert extract_code("```\nprint(1)\n```\n```py\nx = 2\n```") == "x = 2\n"
    assert verify(task, fenced) == 1.0
    assert verify(task, DOUBLE) == 1.0  # no fence: the whole response is the code
    assert verify(task, "```python\ndef f(x):\n    return x * x\n```") == 0.25
    assert verify(task, "```python\ndef f(x):\n    return None\n```", format_reward=0.1) == 0.1
    assert verify(task, "I do not know.", format_reward=0.1) == 0.0
    number = Task("What is 2 + 2?", "number", "4")
    correct, formed = score_responses([task, number, task], [fenced, r"\boxed{4}", "while True: pass"], FAST)
    assert correct == [1.0, 1.0, 0.0] and formed == [True, True, False]
    assert verify_batch([task, number], ["```python\ndef f(x):\n    return x * x\n```", "Answer: 5"], 0.5) == [0.25, 0.5]
    path = tmp_path / "code.jsonl"
    write_tasks(path, [task, Task("p", "code", tests="assert True")])
    assert read_tasks(path) == [task, Task("p", "code", tests="assert True")]


def test_builtin_code_tasks_reference_solutions_pass():
    tasks = builtin_tasks("code", 12, "test", seed=3)
    assert tasks == builtin_tasks("code", 12, "test", seed=3) and all(t.verifier == "code" and t.tests for t in tasks)
    right = [f"```python\n{t.meta['solution']}```" for t in tasks]
    assert verify_batch(tasks, right) == [1.0] * len(tasks)
    assert verify_batch(tasks, ["```python\ndef f(x):\n    return None\n```"] * len(tasks)) == [0.0] * len(tasks)


def test_grpo_scores_code_tasks_in_the_sandbox(tmp_path, sft_run):
    """stage=grpo on the built-in code tasks runs; its ``correct`` component is the fraction of
    tests passed, run in the sandbox (answers given here, since the tiny model writes no code)."""
    from types import SimpleNamespace

    from llm.train import train

    from conftest import compose

    grpo = [
        "stage=grpo",
        "model=hf",
        f"model.pretrained={sft_run[1]['export']}",
        "data.tasks=builtin:code",  # not data=tasks_demo: its tasks_params (digits) are arithmetic's
        "data.micro_batch_size=2",
        "data.tasks_size=16",
        "data.tasks_val_size=2",
        "data.val_batches=1",
        "stage.grpo.group_size=2",
        "stage.grpo.max_new_tokens=8",
        "stage.grpo.format_weight=0.5",
        "stage.grpo.sandbox_timeout_s=3",
        "stage.sample_prompts=[]",
        "trainer.max_steps=1",
        "trainer.val_every_n_steps=1",
        "trainer.ckpt_every_n_steps=0",
        "eval=none",
        "export=false",
    ]
    res = train(compose(grpo, run_dir=tmp_path))
    assert res["global_step"] == 1 and 0 <= res["metrics"]["val/accuracy"] <= 1
    task = Task("Write f(x) = 2x.", "code", meta={"entry_point": "f"}, tests=TESTS)
    texts = [f"```python\n{DOUBLE}```", "```python\ndef f(x):\n    return x * x\n```", "```python\nwhile True: pass\n```", "no code"]
    prompts = [[{"role": "user", "content": task.prompt}]] * 4
    comps = res["module"].reward_components(SimpleNamespace(texts=texts, prompts=prompts), [task] * 4)
    assert comps["correct"].tolist() == [1.0, 0.25, 0.0, 0.0]
    assert comps["format"].tolist() == [1.0, 1.0, 1.0, 0.0]
