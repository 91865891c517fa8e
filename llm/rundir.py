"""The run directory: where a run writes, which checkpoint resumes it, the metrics rows a resumed
run redoes, and one run per directory (a lock, refusals, the config record)."""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from llm.config import Config

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"step(\d+)\.ckpt$")
"""A checkpoint's name: ``step<global step, 7 digits>.ckpt`` (a file, or a directory of shards)."""


def resolve_run_dir(cfg: Config) -> Path:
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir = run_dir.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the finished checkpoints in ``folder`` (a run's ``checkpoints/``), newest first; a
    checkpoint is a file (single, ddp) or a directory of shards (DeepSpeed, FSDP); ``.tmp`` ones
    are unfinished writes and never counted."""
    found = []
    for p in folder.glob("step*.ckpt"):
        m = CKPT_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def readable(path: Path, weights_only: bool = True) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from, or ``None``. A file must load with
    ``weights_only=True``; every file of a directory of shards must load the way resume will read
    it (:func:`llm.safeload.check_directory`): nothing in either runs. ``weights_only=False``
    (the user trusts the checkpoint) checks only that there is something to load."""
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        return "an empty directory"
    if not weights_only:
        return None
    try:
        if path.is_dir():
            from llm.safeload import check_directory

            check_directory(path)
        else:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure to read it is the answer
        return f"{type(e).__name__}: {str(e).splitlines()[0][:400] if str(e) else ''}"
    return None


def find_checkpoint(ckpt_path: str | None, run_dir: Path, weights_only: bool = True) -> str | None:
    """``last``: the newest readable checkpoint in run_dir/checkpoints (none: start fresh). An
    unreadable newest one is reported and the previous one used; never ``weights_only=False``
    unless the run asks for it."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).exists():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such file or directory")
        why = readable(Path(ckpt_path), weights_only)
        if why:
            raise ValueError(f"ckpt_path={ckpt_path}: cannot be resumed from ({why})")
        return ckpt_path
    found = checkpoints(run_dir / "checkpoints")
    if not found:
        log.info("ckpt_path=last: no checkpoint in %s, starting from scratch", run_dir / "checkpoints")
        return None
    reasons = []
    for _, path in found:
        why = readable(path, weights_only)
        if why is None:
            return str(path)
        reasons.append(f"{path.name}: {why}")
        log.warning("ckpt_path=last: %s cannot be resumed from (%s); trying the one before it", path, why)
    raise ValueError(
        f"ckpt_path=last: none of the {len(found)} checkpoints in {run_dir / 'checkpoints'} can be resumed from ("
        + "; ".join(reasons)
        + "); move them away to start this run again, or give another run_dir"
    )


def trim_metrics(run_dir: Path, ckpt: str) -> None:
    """On resume, drop metrics.csv rows of steps the checkpoint does not contain (they were
    logged after it, before the crash, and are about to be redone)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return
    m = CKPT_RE.search(Path(ckpt).name)
    if m:  # the file name holds the step (also for directory checkpoints)
        step = int(m.group(1))
    elif Path(ckpt).is_file():
        step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0)
    else:
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], [r for r in reader if r.get("step") and int(r["step"]) < step]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- one run per directory
#: config keys a resumed run may change: they apply from the resumed step on (steps, intervals,
#: logging, evaluation, samples, fault injection). Any other change (the model, the data, the
#: stage and its optimizer, the strategy, the seed) cannot apply to a checkpoint and is refused.
CHANGEABLE_ON_RESUME = (
    "trainer.",
    "eval.",
    "logger.",
    "export",
    "weights_only",
    "ckpt_path",
    "run_dir",
    "data.val_batches",
    "stage.sample_",
    "strategy.timeout_minutes",
)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_changes(stored: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """key -> (stored value, new value) for every leaf that differs."""
    a, b = _flat(stored), _flat(new)
    return {k: (a.get(k, "<unset>"), b.get(k, "<unset>")) for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")}


def _aside(path: Path) -> Path:
    """Rename ``path`` to the first free ``<name>.<n>`` beside it; return the new path."""
    n = 1
    while path.with_name(f"{path.name}.{n}").exists():
        n += 1
    dest = path.with_name(f"{path.name}.{n}")
    os.replace(path, dest)
    return dest


def is_first_process() -> bool:
    """Global rank 0 (or a single process), known from the launcher's environment before any
    process group exists: torchrun and Slurm's srun set ``RANK``, Lightning's own launcher
    ``LOCAL_RANK`` in the processes it starts."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var) not in (None, ""):
            return int(os.environ[var]) == 0
    return True


class RunDirBusy(RuntimeError):
    """Another process holds the run directory."""


class RunLock:
    """An exclusive lock on ``run_dir/.lock`` for the life of a run (released at the end, or by
    the system when the process dies): a second run into the same directory stops at once."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if not isinstance(e, BlockingIOError):  # a filesystem without flock (some network mounts)
                log.warning("%s: cannot lock (%s); two runs started into this directory would not be stopped", self.path, e)
                os.close(fd)
                return self
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirBusy(
                f"run directory {self.path.parent} is in use by another run ({holder}); wait for it to end, or give another "
                "run_dir (hydra.run.dir=...)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def prepare_run_dir(cfg: Any, run_dir: Path, ckpt: str | None) -> None:
    """Rank 0, before anything is written: keep one run per directory and an honest record.

    - A fresh run (no checkpoint to resume) into a directory holding another run's checkpoints
      is refused, naming ``ckpt_path=last`` and a new directory; a dead run's ``metrics.csv`` and
      ``config.yaml`` with no checkpoint to resume are moved aside (``metrics.csv.1``), not lost.
    - A resumed run compares its config with the stored one: changes that cannot apply to a
      checkpoint are refused before anything is written; the others are listed and recorded in
      ``config.resume-<n>.yaml`` beside the untouched ``config.yaml``; metrics.csv rows after the
      checkpoint are trimmed (they are about to be redone)."""
    new = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    stored_path = run_dir / "config.yaml"
    if ckpt is None:
        found = checkpoints(run_dir / "checkpoints")
        if found:
            raise ValueError(
                f"run directory {run_dir} holds the checkpoints of another run (newest: {found[0][1].name}); resume it with "
                "ckpt_path=last, or start this run in a new directory (run_dir=... or hydra.run.dir=...)"
            )
        for name in ("metrics.csv", "config.yaml"):
            if (run_dir / name).exists():
                log.warning("%s: left by a run with no checkpoint to resume; moved to %s", run_dir / name, _aside(run_dir / name).name)
        OmegaConf.save(new, stored_path)
        return
    if not stored_path.is_file():  # resuming another directory's checkpoint: its run's config, if any
        stored_path = Path(ckpt).parent.parent / "config.yaml"
    if stored_path.is_file():
        changes = config_changes(OmegaConf.to_container(OmegaConf.load(stored_path), resolve=True), new)
        refused = {k: v for k, v in changes.items() if not k.startswith(CHANGEABLE_ON_RESUME)}
        if refused:
            lines = "\n  ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise ValueError(
                f"ckpt_path={cfg.ckpt_path}: these settings differ from the run being resumed ({stored_path}) and cannot apply "
                f"to its checkpoint (the model, data, stage, optimizer, strategy and seed resume as they were):\n  {lines}\n"
                "start a new run in another directory to change them"
            )
        if changes:
            n = 1
            while (run_dir / f"config.resume-{n}.yaml").exists():
                n += 1
            OmegaConf.save(new, run_dir / f"config.resume-{n}.yaml")
            log.info(
                "resumed with changed settings (recorded in config.resume-%d.yaml): %s",
                n,
                ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()),
            )
    if not (run_dir / "config.yaml").is_file():
        OmegaConf.save(new, run_dir / "config.yaml")
    trim_metrics(run_dir, ckpt)
