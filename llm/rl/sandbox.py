"""Run untrusted Python (a model's answer and its tests) in a separate, limited process.

Each run is one child ``python -I -S llm/rl/_sandbox_child.py`` (isolated mode: no ``PYTHON*``
variables, no user site, no current directory on the path; no ``site``: site-packages are added
without running their ``.pth`` files) started in its own session with no
inherited file descriptors and a minimal environment (``PATH``, ``LANG``, ``HOME``/``TMPDIR`` =
its work directory, one-thread BLAS settings), in a fresh temporary directory that is deleted
afterwards. Before the untrusted code runs, the child:

* sets resource limits: ``RLIMIT_CPU`` (CPU seconds), ``RLIMIT_AS`` and ``RLIMIT_DATA`` (memory),
  ``RLIMIT_FSIZE`` (largest file written, stdout and stderr included), ``RLIMIT_NOFILE``,
  ``RLIMIT_NPROC`` = 0 (no new processes or threads; the kernel does not apply it to root) and
  no core files;
* moves into a new network namespace (``unshare(CLONE_NEWNET)``, as root; else
  ``CLONE_NEWUSER | CLONE_NEWNET``), where only a loopback that is down exists: no connection
  reaches the host or beyond. Which one held is reported (``network``: ``namespace``,
  ``user+namespace`` or ``audit_hook``);
* installs an audit hook (:pep:`578`) that refuses sockets, subprocesses, ``fork``/``exec``,
  ``kill``, ``ctypes``, file writes outside its work directory and file reads outside the work
  directory, the standard library and site-packages (so ``/proc/<pid>/environ`` of the trainer, its
  data and checkpoints cannot be read).

The parent kills the child's whole process group at the wall-clock limit. Outcomes per test:
``passed``, ``wrong_answer`` (an ``AssertionError``), ``timeout`` (the per-test budget, the CPU or
the wall-clock limit), ``memory`` (a ``MemoryError`` at the memory limit), ``syntax_error`` (the
answer or the test does not compile), ``forbidden`` (the audit hook refused something the test
did) and ``crash`` (any other exception, or the process died).

This is isolation against accidents and the usual reward hacks of a policy model (loops,
allocation, reading or writing files, network), not a security boundary against a determined
attacker: the audit hook lives in the same interpreter as the code it watches (C extensions,
a forged results line written to an inherited descriptor, or interpreter bugs can go around it);
only the network namespace and the resource limits are enforced by the kernel. For hostile code
run it inside a container or VM with no credentials (gVisor, Firecracker, nsjail).
"""

from __future__ import annotations

import json
import logging
import marshal
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("_sandbox_child.py")
#: the causes a test can fail with
CAUSES = ("wrong_answer", "timeout", "memory", "crash", "syntax_error", "forbidden")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run (one answer with all its tests, or one program)."""

    timeout_s: float = 10.0
    """Wall-clock seconds for the whole child (start-up, the answer and all its tests); then its
    process group is killed and the tests not yet done count as ``timeout``."""
    test_timeout_s: float = 2.0
    """Seconds for running the answer's top level, and for each test (a timer in the child)."""
    cpu_s: int | None = None
    """CPU seconds (``RLIMIT_CPU``; ``None``: ``timeout_s`` rounded up, plus 1)."""
    memory_mb: int = 512
    """Address space (``RLIMIT_AS``, ``RLIMIT_DATA``) in MiB; Python itself takes about 30."""
    file_mb: int = 16
    """Largest file the child may write (``RLIMIT_FSIZE``), its stdout and stderr included."""
    open_files: int = 64
    """``RLIMIT_NOFILE``."""
    max_output_chars: int = 20_000
    """Of stdout and stderr, this many characters come back (each)."""

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.test_timeout_s > 0):
            raise ValueError(f"SandboxLimits: timeout_s={self.timeout_s}, test_timeout_s={self.test_timeout_s} must be positive")
        if self.memory_mb < 64:
            raise ValueError(f"SandboxLimits: memory_mb={self.memory_mb}: at least 64 (the interpreter needs about 30)")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"SandboxLimits: cpu_s={self.cpu_s}: at least 1")
        if self.file_mb < 1 or self.open_files < 16:
            raise ValueError(f"SandboxLimits: file_mb={self.file_mb} >= 1 and open_files={self.open_files} >= 16")


@dataclass
class RunResult:
    """What :func:`run_python` gives back."""

    status: str
    """``ok``, ``error`` (an exception or a non-zero exit), ``syntax_error``, ``timeout``,
    ``memory``, ``forbidden`` or ``crash`` (the process died)."""
    stdout: str
    stderr: str
    seconds: float
    network: str
    """The mechanism that kept the network out: ``namespace``, ``user+namespace`` or
    ``audit_hook`` (``unknown`` when the child died before reporting)."""
    error: str = ""


@dataclass
class SandboxResult:
    """What :func:`run_tests` gives back for one answer."""

    passed: int
    total: int
    outcomes: list[str]
    """One per test: ``passed`` or a cause of :data:`CAUSES`."""
    errors: list[str]
    """One per test: what went wrong (empty when passed)."""
    seconds: float
    network: str
    causes: dict[str, int] = field(default_factory=dict)
    """How many tests failed of each cause."""

    @property
    def fraction(self) -> float:
        """The fraction of tests passed (0 with no tests)."""
        return self.passed / self.total if self.total else 0.0


def _env(work: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": work,
        "TMPDIR": work,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _read(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4 * limit).decode("utf-8", "replace")[:limit]
    except OSError:
        return ""


def _run_child(job: dict, limits: SandboxLimits, stdin: str = "") -> tuple[list[dict], str, str, str, float]:
    """Run one job; (its result lines, stdout, stderr, how the process ended, seconds).
    How it ended: ``exit`` (by itself), ``killed`` (the wall clock), ``cpu`` (SIGXCPU) or
    ``signal <n>``."""
    root = Path(tempfile.mkdtemp(prefix="xiulian-sandbox-"))
    try:
        work = root / "work"
        work.mkdir()
        os.chmod(root, 0o700)
        cpu = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
        job = {**job, "cpu_s": cpu, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb, "open_files": limits.open_files}
        (root / "job.marshal").write_bytes(marshal.dumps(job))  # marshal: the child reads it without importing json
        (root / "stdin").write_text(stdin, encoding="utf-8")
        t0 = time.perf_counter()
        with open(root / "stdin", "rb") as fin, open(root / "stdout", "wb") as fout, open(root / "stderr", "wb") as ferr:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(CHILD), str(root)],
                stdin=fin,
                stdout=fout,
                stderr=ferr,
                cwd=work,
                env=_env(str(work)),
                close_fds=True,
                start_new_session=True,
            )
            try:
                rc = _wait(proc, limits.timeout_s)
                # a SIGXCPU or SIGKILL we did not send: RLIMIT_CPU (soft, then hard) or the kernel's OOM killer
                ended = "exit" if rc >= 0 else ("cpu" if -rc in (signal.SIGXCPU, signal.SIGKILL) else f"signal {-rc}")
            except subprocess.TimeoutExpired:
                ended = "killed"
            finally:
                try:  # the whole group: anything it started (it should not be able to) goes too
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        seconds = time.perf_counter() - t0
        lines = []
        for line in _read(root / "results.jsonl", 10_000_000).splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                lines.append(rec)
        out, err = _read(root / "stdout", limits.max_output_chars), _read(root / "stderr", limits.max_output_chars)
        return lines, out, err, ended, seconds
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """``proc.wait(timeout)`` without its polling (sleeps of up to 50 ms, most of a short run's
    time): a pidfd is readable when the process ends."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(1, int(timeout * 1000))):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


def _process_cause(ended: str, stderr: str) -> str:
    if ended in ("killed", "cpu"):
        return "timeout"
    if "MemoryError" in stderr:
        return "memory"
    return "crash"


def run_python(code: str, stdin: str = "", limits: SandboxLimits | None = None) -> RunResult:
    """Run ``code`` as a program (``__name__ == "__main__"``) with ``stdin``; its stdout, stderr
    and how it ended. Only the wall-clock, CPU, memory and file limits apply (no per-test timer).
    For a Python-interpreter tool."""
    limits = limits or SandboxLimits()
    lines, out, err, ended, seconds = _run_child({"mode": "run", "code": code, "test_timeout_s": limits.timeout_s}, limits, stdin)
    network = next((r.get("network", "unknown") for r in lines if r.get("kind") == "start"), "unknown")
    ans = next((r for r in lines if r.get("kind") == "answer"), None)
    if ans is None:
        status = _process_cause(ended, err)
        return RunResult(status, out, err, seconds, network, f"the process ended ({ended})")
    status = {"ok": "ok", "wrong_answer": "error", "crash": "error"}.get(ans["outcome"], ans["outcome"])
    return RunResult(status, out, err, seconds, network, ans.get("error", ""))


def run_tests(code: str, tests: Sequence[str] | str, limits: SandboxLimits | None = None, entry_point: str | None = None) -> SandboxResult:
    """Run ``code`` (an answer) then each test (an ``assert`` statement, or a test program) in
    one child, each test in its own copy of the answer's namespace, under its own timer. With
    ``entry_point`` the answer must define that function, and the tests may call it as
    ``candidate``. A test passes when it runs to its end without an exception."""
    limits = limits or SandboxLimits()
    tests = [tests] if isinstance(tests, str) else list(tests)
    job = {"mode": "tests", "code": code, "tests": tests, "test_timeout_s": limits.test_timeout_s, "entry_point": entry_point}
    lines, _, err, ended, seconds = _run_child(job, limits)
    network = next((r.get("network", "unknown") for r in lines if r.get("kind") == "start"), "unknown")
    outcomes = ["" for _ in tests]
    errors = ["" for _ in tests]
    ans = next((r for r in lines if r.get("kind") == "answer"), None)
    if ans is not None and ans.get("outcome") != "ok":  # the answer itself failed: every test with it
        outcomes = [str(ans["outcome"])] * len(tests)
        errors = [str(ans.get("error", ""))] * len(tests)
    else:
        for r in lines:
            i = r.get("i")
            if r.get("kind") == "test" and isinstance(i, int) and 0 <= i < len(tests):
                outcomes[i], errors[i] = str(r.get("outcome")), str(r.get("error", ""))
        cause = _process_cause(ended, err)
        for i, o in enumerate(outcomes):
            if not o:  # not reported: the process ended before (or while) it ran
                outcomes[i], errors[i] = cause, f"the process ended ({ended})"
    outcomes = [o if o == "passed" or o in CAUSES else "crash" for o in outcomes]
    causes = Counter(o for o in outcomes if o != "passed")
    return SandboxResult(outcomes.count("passed"), len(tests), outcomes, errors, seconds, network, dict(causes))


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def run_tests_batch(
    codes: Sequence[str],
    tests: Sequence[Sequence[str] | str],
    limits: SandboxLimits | None = None,
    entry_points: Sequence[str | None] | None = None,
    workers: int | None = None,
) -> list[SandboxResult]:
    """:func:`run_tests` for many answers, ``workers`` children at a time (default
    ``min(4, cpu count)``); results in the order given."""
    if len(codes) != len(tests):
        raise ValueError(f"{len(codes)} answers but {len(tests)} test lists")
    eps = list(entry_points) if entry_points is not None else [None] * len(codes)
    if len(eps) != len(codes):
        raise ValueError(f"{len(codes)} answers but {len(eps)} entry points")
    n = workers or default_workers()
    if n == 1 or len(codes) <= 1:
        return [run_tests(c, t, limits, e) for c, t, e in zip(codes, tests, eps, strict=True)]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda a: run_tests(a[0], a[1], limits, a[2]), zip(codes, tests, eps, strict=True)))
