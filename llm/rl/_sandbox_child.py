"""The child side of :mod:`llm.rl.sandbox`: run as ``python -I -S _sandbox_child.py ROOT``.

Standard library only, nothing of ``llm`` is imported. In order, before any untrusted code runs:
read the job (``ROOT/job.marshal``, written by the parent), set the resource limits, try a network namespace, open the
results file, install the audit hook; then run the answer and its tests in ``ROOT/work`` (the
working directory) and append one JSON line per outcome to ``ROOT/results.jsonl``.
"""

import ctypes
import marshal
import os
import resource
import signal
import sys
import sysconfig
import time

ROOT = os.path.realpath(sys.argv[1])
WORK = os.path.join(ROOT, "work")
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000


class _Timeout(BaseException):  # not an Exception: a bare ``except Exception`` in the answer does not swallow it
    pass


class Forbidden(PermissionError):
    """Raised by the audit hook for an operation outside the sandbox's rules."""


def _limits(job):
    mb = 1024 * 1024
    cpu = int(job["cpu_s"])
    for res, soft in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, int(job["memory_mb"]) * mb),
        (resource.RLIMIT_DATA, int(job["memory_mb"]) * mb),
        (resource.RLIMIT_FSIZE, int(job["file_mb"]) * mb),
        (resource.RLIMIT_NOFILE, int(job["open_files"])),
        (resource.RLIMIT_NPROC, 0),
        (resource.RLIMIT_CORE, 0),
    ):
        hard = soft + 1 if res == resource.RLIMIT_CPU else soft  # SIGXCPU at the soft limit, SIGKILL one second later
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            cur = resource.getrlimit(res)
            resource.setrlimit(res, (min(soft, cur[1]) if cur[1] != resource.RLIM_INFINITY else soft, cur[1]))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file (or the output) over the limit: an OSError, not a kill


def _unshare_network():
    """'namespace' (a new network namespace, only a down loopback), 'user+namespace' (the same
    inside a new user namespace, for non-root users) or 'audit_hook' (no namespace: only the hook
    refuses sockets)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return "audit_hook"
    if libc.unshare(CLONE_NEWNET) == 0:
        return "namespace"
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        try:  # map our own ids, so files in the work directory stay ours
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError:
            pass
        return "user+namespace"
    return "audit_hook"


def _read_roots():
    roots = {WORK, "/dev/null", "/dev/urandom"}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            roots.add(os.path.realpath(paths[key]))
    for p in sys.path:
        if p and p.endswith(("site-packages", "dist-packages", ".zip")) or p.startswith(sys.base_prefix):
            roots.add(os.path.realpath(p))
    return tuple(sorted(roots))


def _install_hook(violations):
    read_roots = _read_roots()
    write_roots = (WORK, "/dev/null")
    path_events = {
        "os.listdir": 0,
        "os.scandir": 0,
        "os.remove": 0,
        "os.rmdir": 0,
        "os.mkdir": 0,
        "os.rename": (0, 1),
        "os.link": (0, 1),
        "os.symlink": (0, 1),
        "os.chmod": 0,
        "os.chown": 0,
        "os.truncate": 0,
        "os.utime": 0,
        "os.chdir": 0,
        "os.chroot": 0,
        "shutil.rmtree": 0,
        "os.chflags": 0,
        "os.setxattr": 0,
        "os.removexattr": 0,
        "os.listxattr": 0,
        "os.getxattr": 0,
    }
    reading = {"os.listdir", "os.scandir", "os.listxattr", "os.getxattr", "os.chdir"}
    refused = (
        "socket.",
        "subprocess.",
        "os.system",
        "os.exec",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "pty.",
        "ctypes.",
        "sys.remote_exec",
        "webbrowser.",
        "urllib.",
        "http.",
        "ftplib.",
        "smtplib.",
        "poplib.",
        "imaplib.",
        "nntplib.",
        "telnetlib.",
    )
    busy = [False]

    def inside(path, roots):
        if isinstance(path, int):  # an open file descriptor of the child's own
            return True
        try:
            p = os.path.realpath(os.path.join(os.getcwd(), os.fsdecode(path)))
        except (TypeError, ValueError, OSError):
            return False
        return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)

    def refuse(event, detail):
        violations.append(f"{event} {detail}"[:200])
        raise Forbidden(f"sandbox: {event} refused ({detail})"[:300])

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            if event == "open":
                path, mode, flags = args
                if path is None:
                    return
                writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
                )
                if not inside(path, write_roots if writes else read_roots):
                    refuse(event, f"{'write' if writes else 'read'} {path!r}")
            elif event in path_events:
                idx = path_events[event]
                roots = read_roots if event in reading else write_roots
                for i in idx if isinstance(idx, tuple) else (idx,):
                    if i < len(args) and args[i] is not None and not inside(args[i], roots):
                        refuse(event, repr(args[i]))
            elif event.startswith(refused) or event in ("import",) and args and args[0] in ("_posixsubprocess", "_ctypes"):
                refuse(event, "not allowed in the sandbox")
        finally:
            busy[0] = False

    sys.addaudithook(hook)


def _json(rec):
    """A flat dict of str, int, float as one JSON line (the json module costs 15 ms to import)."""

    def value(v):
        if isinstance(v, str):
            return '"' + "".join(c if c >= " " and c not in '"\\' else f"\\u{ord(c):04x}" for c in v) + '"'
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") else "null"

    return "{" + ", ".join(f"{value(k)}: {value(v)}" for k, v in rec.items()) + "}"


def _alarm(signum, frame):
    raise _Timeout()


def _outcome(exc, violations_before, violations):
    if len(violations) > violations_before or isinstance(exc, Forbidden):
        return "forbidden"
    if isinstance(exc, _Timeout):
        return "timeout"
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, AssertionError):
        return "wrong_answer"
    if isinstance(exc, SyntaxError):
        return "syntax_error"
    return "crash"


def _describe(exc):
    if isinstance(exc, _Timeout):
        return "time limit"
    return f"{type(exc).__name__}: {exc}"[:300]


def main():
    with open(os.path.join(ROOT, "job.marshal"), "rb") as f:
        job = marshal.load(f)
    os.remove(os.path.join(ROOT, "job.marshal"))
    network = _unshare_network()
    out = open(os.path.join(ROOT, "results.jsonl"), "a", encoding="utf-8", errors="backslashreplace", buffering=1)
    os.chdir(WORK)
    # started with -S (no site: 40 ms less, no .pth files run): site-packages by hand, no current directory
    paths = sysconfig.get_paths()
    sys.path[:] = [p for p in sys.path if p] + [p for p in dict.fromkeys((paths["purelib"], paths["platlib"])) if p not in sys.path]
    _limits(job)
    violations = []
    _install_hook(violations)

    def emit(**rec):
        out.write(_json(rec) + "\n")
        out.flush()

    emit(kind="start", network=network)
    signal.signal(signal.SIGALRM, _alarm)
    budget = float(job["test_timeout_s"])
    code = job["code"]
    try:
        compiled = compile(code, "<answer>", "exec")
    except (SyntaxError, ValueError) as e:
        emit(kind="answer", outcome="syntax_error", error=_describe(e))
        return
    import linecache

    linecache.cache["<answer>"] = (len(code), None, code.splitlines(True), "<answer>")
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    if job["mode"] == "run":
        v0 = len(violations)
        try:
            exec(compiled, env)
            emit(kind="answer", outcome="ok")
        except SystemExit as e:
            emit(kind="answer", outcome="ok" if e.code in (None, 0) else "crash", error=f"SystemExit: {e.code}")
        except BaseException as e:  # noqa: BLE001 - the answer's own failure, reported
            outcome = _outcome(e, v0, violations)  # before the traceback, whose source look-ups the hook may refuse
            import traceback

            traceback.print_exception(e, file=sys.stderr)
            emit(kind="answer", outcome=outcome, error=_describe(e))
        return

    # mode "tests": the answer once (its own time budget), then each test in a copy of its namespace
    v0 = len(violations)
    try:
        signal.setitimer(signal.ITIMER_REAL, budget)
        try:
            exec(compiled, env)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as e:  # noqa: BLE001
        emit(kind="answer", outcome=_outcome(e, v0, violations), error=_describe(e))
        return
    entry = job.get("entry_point")
    if entry:
        if not callable(env.get(entry)):
            emit(kind="answer", outcome="crash", error=f"the answer defines no function {entry!r}")
            return
        env["candidate"] = env[entry]
    emit(kind="answer", outcome="ok")
    for i, test in enumerate(job["tests"]):
        v0 = len(violations)
        t0 = time.perf_counter()
        try:
            c = compile(test, f"<test {i}>", "exec")
            signal.setitimer(signal.ITIMER_REAL, budget)
            try:
                exec(c, dict(env))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            rec = {"outcome": "passed"}
        except BaseException as e:  # noqa: BLE001
            rec = {"outcome": _outcome(e, v0, violations), "error": _describe(e)}
        emit(kind="test", i=i, seconds=round(time.perf_counter() - t0, 4), **rec)


if __name__ == "__main__":
    main()
