"""Math answers compared for equivalence with the ``math-verify`` package (the ``rl`` extra), in a
worker process that a time limit can kill.

``math_equal("\\frac{1}{2}", "0.5")`` is True; so are ``\\sqrt{4}`` / ``2``, ``x=3`` / ``3``,
``\\{1,2\\}`` / ``\\{2,1\\}``, ``(x+1)^2`` / ``x^2+2x+1`` and ``[1,2)`` / ``[1,2)`` (but not
``[1,2]``). Both texts are read as LaTeX (wrapped in ``$...$``, so plain expressions work too),
parsed to SymPy and compared by math-verify.

Why a process: math-verify's own timeouts use ``signal.alarm``, which only works in the main
thread, cancels any alarm already set (pytest-timeout's) and cannot interrupt a computation inside
C code: ``9^{9^{9^{9}}}`` runs for minutes through an alarm. So every comparison goes to one
long-lived worker process (a fresh interpreter, not a fork of a training process with threads), and a
comparison that has not answered within ``timeout`` seconds (rounded up to whole seconds, plus
half a second) gets the worker killed (a new one is
started for the next) and counts as wrong. This works from any thread; calls are serialised.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_MATH_CHARS = 1000  # longer answers are not parsed: wrong, not slow
INSTALL_HINT = "pip install 'xiulian[rl]'"
START_TIMEOUT = 120.0  # seconds for a new worker to import sympy and math-verify


class MathVerifyMissing(ImportError):
    """The ``math-verify`` package is not installed."""


def require_math_verify() -> None:
    """Raise :class:`MathVerifyMissing` naming the extra when ``math-verify`` cannot be imported."""
    try:
        found = importlib.util.find_spec("math_verify") is not None
    except (ImportError, ValueError):  # a None entry in sys.modules, a broken package
        found = False
    if not found:
        raise MathVerifyMissing(f"verifier 'math' needs the math-verify package: {INSTALL_HINT}")


# ----------------------------------------------------------------------- in the worker process
@functools.lru_cache(maxsize=4096)
def _parse(text: str, seconds: int) -> Any:
    from math_verify import parse

    return parse(f"${text}$", parsing_timeout=seconds)


def _equal_here(gold: str, answer: str, seconds: int) -> bool:
    """math-verify's verdict, computed in this process (its own alarms as a first limit)."""
    from math_verify import verify

    g, a = _parse(gold.strip(), seconds), _parse(answer.strip(), seconds)
    if not g or not a:
        return False
    return bool(verify(g, a, timeout_seconds=seconds))


def _serve() -> None:
    """The worker's loop: one JSON request a line on stdin (``[gold, answer, seconds]``), one JSON
    reply a line on stdout (true/false, or an error's text)."""
    import math_verify  # noqa: F401 - import once, before the first request

    out = sys.stdout
    sys.stdout = sys.stderr  # anything printed by the libraries stays off the reply channel
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        gold, answer, seconds = json.loads(line)
        try:
            reply: Any = _equal_here(gold, answer, seconds)
        except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
            reply = f"{type(e).__name__}: {e}"[:300]
        out.write(json.dumps(reply) + "\n")
        out.flush()


# --------------------------------------------------------------------------- the caller's side
class MathChecker:
    """One worker process answering ``equal(gold, answer)``; ``timeouts`` and ``errors`` count the
    comparisons that ran out of time (the worker was killed) or failed (both scored wrong)."""

    def __init__(self, timeout: float = 5.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout={timeout}: must be positive")
        self.timeout = float(timeout)
        self.timeouts = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._proc: Any = None

    def _start(self) -> None:
        require_math_verify()
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the llm package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from llm.rl.math_answer import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        if self._read(START_TIMEOUT) != "ready":
            code = self._proc.poll()
            self._stop()
            raise RuntimeError(f"the math-verify worker did not start within {START_TIMEOUT:.0f}s (exit code {code})")

    def _read(self, seconds: float) -> Any:
        """The worker's next reply, or None when none came within ``seconds`` or it died."""
        ready, _, _ = select.select([self._proc.stdout], [], [], seconds)
        if not ready:
            return None
        line = self._proc.stdout.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        """Stop the worker (a later comparison starts a new one)."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                f.close()
        self._proc = None

    def equal(self, gold: str, answer: str) -> bool:
        if len(answer) > MAX_MATH_CHARS or len(gold) > MAX_MATH_CHARS or not answer.strip():
            return False
        seconds = max(1, math.ceil(self.timeout))  # math-verify's alarms take whole seconds
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            try:
                self._proc.stdin.write(json.dumps([gold, answer, seconds]) + "\n")
                self._proc.stdin.flush()
                verdict = self._read(seconds + 0.5)
            except OSError:
                verdict = None
            if verdict is None and self._proc.poll() is not None:
                verdict = "the worker died"
            if verdict is None:
                self.timeouts += 1
                log.warning("math answer %r not compared within %ds: scored wrong (worker restarted)", answer[:80], seconds)
                self._stop()
                return False
            if not isinstance(verdict, bool):
                self.errors += 1
                log.warning("math answer %r: %s; scored wrong", answer[:80], verdict)
                if verdict == "the worker died":
                    self._stop()
                return False
            return verdict


_DEFAULT: MathChecker | None = None
_DEFAULT_LOCK = threading.Lock()


def default_checker() -> MathChecker:
    """The process-wide checker (5 s per comparison) that the ``math`` verifier uses."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MathChecker()
        return _DEFAULT


def math_equal(gold: str, answer: str, checker: MathChecker | None = None) -> bool:
    """Whether ``answer`` is mathematically equal to ``gold`` (both LaTeX or plain expressions)."""
    return (checker or default_checker()).equal(gold, answer)
