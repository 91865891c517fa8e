"""What the benchmarks share: the machine's description and load, the child-process runner and
its result line, interleaved (ABBA) repeats and their medians, the per-step recorder of the SFT
and PPO children, the framework's pretraining run (the training and litgpt benchmarks), and the
Markdown sections appended to BENCHMARKS.md.

Nothing here imports torch, transformers or Lightning at module level: the parents of the SFT
and PPO benchmarks import neither (only their children do).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from llm.procstat import proc_status  # noqa: F401  (the benchmarks import it from here)

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def cache_root() -> Path:
    """``$XIULIAN_CACHE``, default ``~/.cache/xiulian``: litgpt, TRL and the benchmarks' models."""
    return Path(os.environ.get("XIULIAN_CACHE", Path.home() / ".cache" / "xiulian"))


def torchrun(nproc: int) -> list[str]:
    """The command prefix that starts ``nproc`` local ranks under torchrun (``--standalone``),
    with this interpreter; the benchmarks append ``-m module ...``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


# ================================================================================= machine
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int | None:
    """The cores this process may run on (its affinity), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info(runtime: bool = False) -> dict[str, Any]:
    """cpu, cores, python; ``runtime``: also the usable cores, torch's version and threads, the
    CUDA device and the lightning and transformers versions (imports torch)."""
    info: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count()}
    if not runtime:
        return {**info, "python": platform.python_version()}
    import torch

    info.update(
        cores_usable=usable_cores(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )
    try:
        import lightning
        import transformers

        info["lightning"] = lightning.__version__
        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


# ==================================================================================== load
def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


def cpu_busy_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far (``/proc/stat``); nan if unknown.

    busy = user + nice + system + irq + softirq (guest time is inside user); steal = time the
    hypervisor gave this machine's CPUs to someone else."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]] + [0] * 10
    except OSError:  # pragma: no cover
        return float("nan"), float("nan")
    hz = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / hz, v[7] / hz


def own_cpu_s() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """From :meth:`start` to :meth:`stop` (or over a ``with`` block): the average number of cores
    other processes kept busy (``cores``), and the cores' worth of time the hypervisor stole
    (``steal``); both slow a CPU benchmark down."""

    def start(self, now: float | None = None) -> ForeignLoad:
        self.t0 = time.perf_counter() if now is None else now
        self.own0 = own_cpu_s()
        self.busy0, self.steal0 = cpu_busy_s()
        return self

    def stop(self, now: float | None = None) -> ForeignLoad:
        wall = (time.perf_counter() if now is None else now) - self.t0
        busy, steal = cpu_busy_s()
        other = (busy - self.busy0) - (own_cpu_s() - self.own0)
        self.cores = max(0.0, other / wall) if wall > 0 else float("nan")
        self.steal = (steal - self.steal0) / wall if wall > 0 else float("nan")
        return self

    def __enter__(self) -> ForeignLoad:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ======================================================================== child processes
#: a child's result: the last stdout line that starts with this tag, then JSON
RESULT_TAG = "BENCH_RESULT "


class ChildFailed(RuntimeError):
    """A benchmark's child process timed out, failed or left no result; the first line says why."""


def print_result(result: Any) -> None:
    """A child's result line (read back by :func:`run_module`)."""
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)


def run_or_child(args: argparse.Namespace, children: dict[str, Callable[[dict], dict]], run: Callable[[argparse.Namespace], Any]) -> None:
    """The ``main`` of a benchmark whose runs are children (:func:`add_run_arguments`): with
    ``--child KIND --spec FILE`` this process is that child -- quiet logging, the child run on
    its spec, its result line printed -- else it runs the benchmark."""
    if not args.child:
        run(args)
        return
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    print_result(children[args.child](json.loads(Path(args.spec).read_text())))


def argument_parser(module: str, doc: str, whole_doc: bool = False) -> argparse.ArgumentParser:
    """The parser of ``python -m MODULE``: the first paragraph of its docstring (``whole_doc``: all
    of it) as the description, laid out as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc if whole_doc else doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_run_arguments(p: argparse.ArgumentParser, children: dict[str, Callable[[dict], dict]]) -> None:
    """The options of a benchmark whose runs are children (SFT, PPO): the model, where the runs
    write, the JSON output, and the hidden ``--child KIND --spec FILE`` of the children themselves."""
    p.add_argument("--model", default="tiny", help="tiny (a tiny stage-1 export), smollm2 (SmolLM2-135M-Instruct) or an HF directory")
    p.add_argument("--workdir", default=None, help="where runs write (default: a temporary directory, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", default=None, metavar="PATH", help="write all figures as one JSON document to PATH")
    p.add_argument("--child", choices=sorted(children), help=argparse.SUPPRESS)
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)


@contextlib.contextmanager
def workspace(path: str | None, keep: bool, prefix: str) -> Iterator[Path]:
    """``path`` (``--workdir``), or a temporary directory removed at the end unless ``keep``."""
    d = Path(path or tempfile.mkdtemp(prefix=prefix)).absolute()
    d.mkdir(parents=True, exist_ok=True)
    try:
        yield d
    finally:
        if not path and not keep:
            shutil.rmtree(d, ignore_errors=True)


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment of a benchmark's child: ``threads`` torch threads, offline, this checkout's
    ``llm`` first on the path."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("XIULIAN_CACHE", str(cache_root()))
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def run_module(
    module: str,
    args: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    out: Path | None = None,
    name: str | None = None,
) -> Any:
    """``python -m MODULE ARGS`` in a fresh process, its output captured, and its result: the JSON
    it wrote to ``out``, else its last result line (:func:`print_result`). Raises
    :class:`ChildFailed` when it times out, exits non-zero or leaves no result."""
    cmd = [sys.executable, "-m", module, *args]
    name = name or module
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise ChildFailed(f"{name}: timed out after {timeout:.0f} s") from e
    if out is not None:
        found = [out.read_text()] if out.is_file() else []
    else:
        found = [ln[len(RESULT_TAG) :] for ln in p.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if p.returncode or not found:
        tail = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
        raise ChildFailed(
            f"{name} failed (rc {p.returncode}): {tail[-1] if tail else '(no stderr)'}\ncommand: {' '.join(cmd)}\n"
            f"--- stdout (end)\n{p.stdout[-2000:]}\n--- stderr (end)\n{p.stderr[-4000:]}"
        )
    return json.loads(found[-1])


def run_child(
    module: str, kind: str, spec: dict, workdir: Path, *, threads: int | None = None, pythonpath: str | None = None, timeout: float = 1800
) -> dict[str, Any]:
    """``python -m MODULE --child KIND --spec FILE`` (:func:`run_or_child`) in a fresh process with
    :func:`child_env` (``pythonpath`` in front); its result, with the process's wall time and the
    load average before and after."""
    fd, name = tempfile.mkstemp(prefix=f"{kind}-", suffix=".json", dir=workdir)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    env = child_env(threads)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env["PYTHONPATH"]
    load0, t0 = loadavg(), time.perf_counter()
    res = run_module(module, ["--child", kind, "--spec", name], timeout=timeout, env=env, cwd=ROOT, name=f"{kind} child")
    res.update(child_wall_s=time.perf_counter() - t0, loadavg_before=load0, loadavg_after=loadavg())
    return res


def pip_install_into(target: Path, packages: list[str], check: Callable[[Path], bool] | None = None) -> tuple[bool, str]:
    """``pip install --no-deps --target`` of ``packages`` into a fresh directory beside ``target``,
    renamed to ``target`` once it installed (and ``check(dir)`` holds): (done, pip's last error line)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-compile",
        "--retries",
        "1",
        "--timeout",
        "30",
        "--target",
        str(tmp),
        *packages,
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        ok, err = p.returncode == 0 and (check is None or check(tmp)), (p.stderr.strip().splitlines() or [""])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, err = False, str(e)
    if not ok:
        shutil.rmtree(tmp, ignore_errors=True)
        return False, err
    try:
        os.replace(tmp, target)
    except OSError:  # another benchmark installed it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return True, ""


# ====================================================================== repeats and medians
def interleaved(sides: Sequence[T], repeats: int) -> list[tuple[int, T]]:
    """(repeat, side) in ABBA order -- ``sides`` in order on even repeats, reversed on odd ones --
    so that a slow drift of the machine (other jobs, thermals) hits every side alike."""
    return [(r, s) for r in range(repeats) for s in (sides if r % 2 == 0 else sides[::-1])]


def median(xs: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None if there are none."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rel_diff(a: float | None, b: float | None) -> float | None:
    """|a - b| / |b|; None if either is missing."""
    if a is None or b is None:
        return None
    return abs(a - b) / max(1e-12, abs(b))


# =========================================================== per-step recorder (children)
class StepRecorder:
    """Per optimizer step (or PPO iteration) of a child: end time, tokens, loss and a fingerprint
    of the batch; the machine's foreign load over the timed window (steps ``warmup + 1`` .. last)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.rss_after_imports = proc_status().get("VmRSS")
        self.t_end: list[float] = []
        self.tokens: list[int] = []
        self.loss_tokens: list[int] = []
        self.padded: list[int] = []
        self.losses: list[float] = []
        self.fingerprints: list[str] = []
        self.rss_before_first_step: int | None = None
        self.t_first_start: float | None = None
        self._window: tuple[ForeignLoad, float] | None = None
        self.window_load: dict[str, float] = {}

    def step_start(self) -> None:
        if self.t_first_start is None:
            self.t_first_start = time.perf_counter()
            self.rss_before_first_step = proc_status().get("VmRSS")

    def step_end(self, loss: float, attention_mask: Any, loss_rows: list[list[int]], padded: int) -> None:
        now = time.perf_counter()
        self.t_end.append(now)
        self.losses.append(loss)
        self.tokens.append(int(attention_mask.sum()))
        self.loss_tokens.append(sum(len(r) for r in loss_rows))
        self.padded.append(int(padded))
        self.fingerprints.append(batch_fingerprint(loss_rows))
        n = len(self.t_end)
        if n == self.warmup:
            self._window = (ForeignLoad().start(now), loadavg())
        elif n == self.steps and self._window is not None:
            fl, load0 = self._window
            fl.stop(now)
            self.window_load = {"foreign_cores": fl.cores, "steal_cores": fl.steal, "loadavg_start": load0, "loadavg_end": loadavg()}

    def summary(self) -> dict[str, Any]:
        w = self.warmup
        n = len(self.t_end)
        res: dict[str, Any] = {
            "steps_done": n,
            "losses": self.losses,
            "tokens_per_step": self.tokens,
            "loss_tokens_per_step": self.loss_tokens,
            "padded_tokens_per_step": self.padded,
            "fingerprints": self.fingerprints,
            "rss_after_imports": self.rss_after_imports,
            "rss_before_first_step": self.rss_before_first_step,
            **self.window_load,
        }
        if n > w >= 1:
            secs = self.t_end[-1] - self.t_end[w - 1]
            durations = [b - a for a, b in zip(self.t_end[w - 1 : -1], self.t_end[w:])]
            tok, lt, pt = sum(self.tokens[w:]), sum(self.loss_tokens[w:]), sum(self.padded[w:])
            res.update(
                window_steps=n - w,
                window_s=secs,
                tokens_per_s=tok / secs,
                loss_tokens_per_s=lt / secs,
                padded_tokens_per_s=pt / secs,
                median_step_s=statistics.median(durations),
                step_s=durations,
            )
        return res

    def result(self, t_start: float) -> dict[str, Any]:
        """The child's figures at its end: peak and final RSS, torch threads, the time from
        ``t_start`` to the first step, and :meth:`summary`."""
        import torch

        st = proc_status()
        return {
            "peak_rss": st.get("VmHWM"),
            "rss_end": st.get("VmRSS"),
            "torch_threads": torch.get_num_threads(),
            "setup_s": (self.t_first_start - t_start) if self.t_first_start else None,
            **self.summary(),
        }


def batch_fingerprint(rows: list[list[int]]) -> str:
    """A short hash of the loss tokens of each row of a batch, in order."""
    h = hashlib.sha1()
    for r in rows:
        h.update(json.dumps(r).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def memory_summary(runs: list[dict]) -> dict[str, Any]:
    """Peak RSS of child runs (:meth:`StepRecorder.result`): medians, and the peak above the RSS
    after the imports; trainable and total parameters of the first."""
    return {
        "peak_rss": median(r["peak_rss"] for r in runs),
        "peak_rss_runs": [r["peak_rss"] for r in runs],
        "rss_after_imports": median(r.get("rss_after_imports") for r in runs),
        "peak_above_imports": median(r["peak_rss"] - r["rss_after_imports"] for r in runs if r.get("rss_after_imports")),
        "rss_before_first_step": median(r.get("rss_before_first_step") for r in runs),
        "trainable_params": runs[0]["trainable_params"],
        "total_params": runs[0]["total_params"],
    }


# ============================================================ the framework's pretraining run
# settings that keep the measured window free of everything but training steps
QUIET = [
    "trainer.progress_bar=false",
    "trainer.val_every_n_steps=1000000",
    "trainer.ckpt_every_n_steps=0",
    "trainer.num_sanity_val_steps=0",
    "logger=csv",
    "export=false",
    "stage.sample_prompts=[]",
    "stage.sample_every_n_steps=0",
]


def compose_config(overrides: list[str]) -> Any:
    """The config the CLI would build from ``conf/`` with these overrides."""
    from hydra import compose, initialize_config_dir

    from llm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def bench_overrides(model: str, steps: int, log_every: int, extra: Sequence[str] = ()) -> list[str]:
    """A pretraining run of ``model`` on the demo data, ``steps`` steps, nothing but training."""
    return [f"model={model}", "data=demo", f"trainer.max_steps={steps}", f"trainer.log_every_n_steps={log_every}", *QUIET, *extra]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_framework(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """``llm.train.train(cfg)``; tokens/s from metrics.csv, first window left out."""
    import torch
    from omegaconf import OmegaConf

    from llm.train import train

    cfg = cfg.copy()
    OmegaConf.update(cfg, "run_dir", str(run_dir), force_add=True)
    threads = torch.get_num_threads()
    load0 = loadavg()
    t0 = time.perf_counter()
    with ForeignLoad() as fl:
        result = train(cfg)
    wall = time.perf_counter() - t0
    if torch.get_num_threads() != threads:
        raise RuntimeError(f"the framework changed torch threads: {threads} -> {torch.get_num_threads()}")
    rows = read_metrics(run_dir)
    windows = [(int(r["step"]), float(r["train/tokens_per_s"])) for r in rows if r.get("train/tokens_per_s")]
    mfus = [float(r["train/mfu"]) for r in rows if r.get("train/mfu")]
    losses = {int(r["step"]) + 1: float(r["train/loss"]) for r in rows if r.get("train/loss")}
    if len(windows) < 2:
        raise RuntimeError(f"{run_dir}: fewer than 2 tokens_per_s windows; raise the step count")
    measured = [tps for _, tps in windows[1:]]
    # every window holds the same number of steps (and tokens): total tokens / total time is
    # the harmonic mean of the window rates
    tps = len(measured) / sum(1.0 / x for x in measured)
    return {
        "tokens_per_s": tps,
        "windows": measured,
        "mfu": statistics.median(mfus[1:]) if len(mfus) > 1 else None,
        "losses": losses,
        "wall_s": wall,
        "global_step": result["global_step"],
        "threads": threads,
        "load": (load0, loadavg()),
        "foreign_cores": fl.cores,
        "steal_cores": fl.steal,
    }


# ================================================================================= reports
def num(x: float) -> str:
    """1,234 / 13.4 / 0.512."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f} MiB"


def span(xs: Iterable[float | None]) -> str:
    """``min..max`` of the values that are not None, 2 decimals; ``-`` if none."""
    xs = [x for x in xs if x is not None]
    return f"{min(xs):.2f}..{max(xs):.2f}" if xs else "-"


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that ran a benchmark, for its report: ``python -m MODULE ARGS`` (default: the
    arguments of this process)."""
    return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])


def utc_stamp(t: float | None = None) -> str:
    """``YYYY-MM-DD HH:MM UTC`` of ``t`` (default: now), the title of a BENCHMARKS.md section."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """The lines of a Markdown table; ``align``: one letter per column, ``r`` right-aligned (default
    ``l``, left)."""
    rule = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    return [f"| {' | '.join(header)} |", f"|{'|'.join(rule)}|", *(f"| {' | '.join(str(c) for c in r)} |" for r in rows)]


def append_section(path: Path, title: str, lines: Sequence[str], new_file_header: str | None = None) -> Path:
    """Append a section ``## title`` with ``lines`` to a Markdown file (BENCHMARKS.md); a new file
    starts with ``new_file_header``."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        if new and new_file_header:
            f.write(new_file_header)
        f.write("\n".join(["", f"## {title}", "", *lines]) + "\n")
    return path


def emit(result: dict, report: str, say: Callable[[str], None], json_path: str | None) -> dict:
    """Say the report, write ``result`` as JSON to ``json_path`` (``--json``) if given, return it."""
    say(report)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=str))
    return result
