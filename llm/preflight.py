"""The preflight every job starts with: where each rank runs, what it sees, and whether the world
is the one the config and the scheduler asked for.

Two parts:

* :func:`check_world` (a pure function of the config's placement, the launcher's environment and
  the CUDA device count) returns the reasons the job cannot run as asked: a GPU asked for and
  none visible, more ranks on a node than GPUs, a world size other than nodes x ranks per node,
  ``strategy.devices`` / ``strategy.num_nodes`` against torchrun's, torchrun's nodes against the
  Slurm step's. ``llm.train`` calls :func:`require_world` on every rank before it builds data or
  a model, so such a job fails at once and names the reason.
* :class:`Preflight`, a Lightning callback: once the process group exists (its ``setup`` hook)
  every rank's facts are gathered to rank 0, which logs the report (:func:`format_report`) and
  writes it to ``<run_dir>/preflight.json``.

``python -m llm.preflight`` prints this process's part (versions, devices, environment) and
applies the checks that need no config; ``slurm/stage.sh`` runs it on the first node before
torchrun.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

#: environment variables reported when set: NCCL's and torch's NCCL switches, device masks, threads
ENV_PREFIXES = ("NCCL_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_", "CUDA_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GLOO_SOCKET_IFNAME")
#: the launcher's variables that describe the world (torchrun, then Slurm)
LAUNCH_VARS = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "XIULIAN_RDZV_ENDPOINT",
    "SLURM_JOB_ID",
    "SLURM_JOB_NUM_NODES",
    "SLURM_STEP_NUM_NODES",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
    "SLURM_NODEID",
    "SLURM_PROCID",
    "SLURM_RESTART_COUNT",
)


class PreflightError(RuntimeError):
    """The job cannot run as asked; the message names every reason."""


def _int(env: Mapping[str, str], name: str) -> int | None:
    v = env.get(name, "")
    return int(v) if v.strip().isdigit() else None


def torchrun_world(env: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(nodes, ranks per node, world size) as torchrun set them, or None outside torchrun.
    Nodes: ``GROUP_WORLD_SIZE`` (torchrun's number of agents), else world // ranks per node."""
    world, local = _int(env, "WORLD_SIZE"), _int(env, "LOCAL_WORLD_SIZE")
    if world is None or local is None or not local:
        return None
    nodes = _int(env, "GROUP_WORLD_SIZE") or max(1, world // local)
    return nodes, local, world


def check_world(accelerator: str, devices: Any, num_nodes: int, env: Mapping[str, str], cuda_count: int) -> list[str]:
    """The reasons the job cannot run as asked (empty: it can). ``accelerator``/``devices``/
    ``num_nodes`` are the config's ``strategy.*``; ``env`` the process environment; ``cuda_count``
    ``torch.cuda.device_count()``.

    * ``accelerator=gpu`` and no CUDA device, or more ranks on a node than CUDA devices;
    * under torchrun: WORLD_SIZE != nodes x ranks per node; ``strategy.devices`` (an integer)
      != ranks per node; ``strategy.num_nodes`` (when > 1) != nodes;
    * under torchrun in a Slurm step (``srun``, one torchrun per node as ``slurm/stage.sh``
      starts it): torchrun's nodes != the step's nodes (``SLURM_STEP_NUM_NODES``, else
      ``SLURM_JOB_NUM_NODES``) or != its tasks (``SLURM_STEP_NUM_TASKS``, else ``SLURM_NTASKS``).
    """
    accelerator = str(getattr(accelerator, "value", accelerator))
    problems: list[str] = []
    visible = env.get("CUDA_VISIBLE_DEVICES")
    mask = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    if accelerator in ("gpu", "cuda") and cuda_count == 0:
        problems.append(f"strategy.accelerator={accelerator} but no CUDA device is visible on {socket.gethostname()}{mask}")
    tr = torchrun_world(env)
    if tr is not None:
        nodes, local, world = tr
        if world != nodes * local:
            problems.append(
                f"WORLD_SIZE={world} is not nodes x ranks per node = {nodes} x {local}: the nodes run different numbers of ranks"
            )
        if accelerator in ("gpu", "cuda") and 0 < cuda_count < local:
            problems.append(f"{local} ranks per node (torchrun --nproc_per_node) but only {cuda_count} CUDA devices visible{mask}")
        if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
            if int(devices) != local:
                problems.append(f"strategy.devices={devices} but torchrun starts {local} ranks per node (--nproc_per_node {local})")
        if num_nodes > 1 and num_nodes != nodes:
            problems.append(f"strategy.num_nodes={num_nodes} but torchrun has {nodes} nodes (--nnodes)")
        if env.get("SLURM_JOB_ID"):
            sl_nodes = _int(env, "SLURM_STEP_NUM_NODES") or _int(env, "SLURM_JOB_NUM_NODES") or _int(env, "SLURM_NNODES")
            sl_tasks = _int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")
            if sl_nodes is not None and sl_nodes != nodes:
                problems.append(f"Slurm allocated {sl_nodes} nodes to the job step but torchrun has {nodes} (--nnodes)")
            if sl_tasks is not None and sl_tasks != nodes:
                problems.append(
                    f"Slurm started {sl_tasks} tasks (torchrun launchers) but torchrun has {nodes} nodes: one task per node expected"
                )
    elif isinstance(devices, int) and accelerator in ("gpu", "cuda") and 0 < cuda_count < devices:
        problems.append(f"strategy.devices={devices} but only {cuda_count} CUDA devices are visible{mask}")
    return problems


def require_world(accelerator: str, devices: Any, num_nodes: int, env: Mapping[str, str] | None = None) -> None:
    """:func:`check_world` on this process; raises :class:`PreflightError` naming every reason."""
    import torch

    env = os.environ if env is None else env
    problems = check_world(accelerator, devices, num_nodes, env, torch.cuda.device_count())
    if problems:
        raise PreflightError("preflight: " + "; ".join(problems))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """torch, CUDA and NCCL (as torch was built / loaded), DeepSpeed, Lightning, transformers, Python;
    the packages are read from their metadata, not imported."""
    import torch

    nccl = None
    if torch.cuda.is_available():
        try:
            v = torch.cuda.nccl.version()
            nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001 - a build without NCCL reports why
            nccl = f"unavailable ({e})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": nccl,
        "deepspeed": _version("deepspeed"),
        "lightning": L.__version__,
        "transformers": _version("transformers"),
    }


def devices_here() -> dict[str, Any]:
    """The devices this process sees: CUDA count and names, else the CPU and its core count."""
    import torch

    n = torch.cuda.device_count()
    if n:
        return {"kind": "cuda", "count": n, "names": [torch.cuda.get_device_name(i) for i in range(n)]}
    return {"kind": "cpu", "count": 0, "names": [_cpu_name()], "cpus": os.cpu_count()}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_report(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The set variables that govern NCCL, the device mask and threads (:data:`ENV_PREFIXES`)."""
    env = os.environ if env is None else env
    return {k: env[k] for k in sorted(env) if k.startswith(ENV_PREFIXES)}


def rendezvous(env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Where the ranks meet: MASTER_ADDR:PORT as the workers see them (torchrun sets them to its
    store), the c10d rendezvous endpoint given to torchrun (``XIULIAN_RDZV_ENDPOINT``, set by
    ``launch/torchrun.sh`` and ``slurm/stage.sh``) and torchrun's run id."""
    env = os.environ if env is None else env
    master = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '?')}" if env.get("MASTER_ADDR") else None
    return {"master": master, "rdzv_endpoint": env.get("XIULIAN_RDZV_ENDPOINT"), "rdzv_id": env.get("TORCHELASTIC_RUN_ID")}


def rank_facts(global_rank: int, local_rank: int, node_rank: int, device: str) -> dict[str, Any]:
    """One rank's line of the report."""
    return {
        "rank": global_rank,
        "local_rank": local_rank,
        "node_rank": node_rank,
        "host": socket.gethostname(),
        "slurm_node": os.environ.get("SLURMD_NODENAME"),
        "pid": os.getpid(),
        "device": device,
    }


def build_report(ranks: list[dict[str, Any]], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole report from every rank's facts (gathered to rank 0)."""
    env = os.environ if env is None else env
    ranks = sorted(ranks, key=lambda r: r["rank"])
    nodes = sorted({r["node_rank"] for r in ranks})
    per_node = {n: sum(r["node_rank"] == n for r in ranks) for n in nodes}
    return {
        "nodes": len(nodes),
        "ranks_per_node": sorted(set(per_node.values())) if len(set(per_node.values())) > 1 else next(iter(per_node.values())),
        "world_size": len(ranks),
        "ranks": ranks,
        "devices": devices_here(),
        "versions": versions(),
        "rendezvous": rendezvous(env),
        "env": env_report(env),
        "launcher": {k: env[k] for k in LAUNCH_VARS if k in env and k not in ("RANK", "LOCAL_RANK", "GROUP_RANK")},
        "argv": sys.argv,
    }


def format_report(rep: dict[str, Any]) -> str:
    """The report as the job log shows it (one ``preflight:`` line per item)."""
    dev = rep["devices"]
    devs = (
        f"CUDA x{dev['count']}: {', '.join(dev['names'])}"
        if dev["kind"] == "cuda"
        else f"CPU {dev['names'][0]} ({dev.get('cpus')} cores, no CUDA device)"
    )
    rdzv = rep["rendezvous"]
    where = ", ".join(f"{k} {v}" for k, v in (("master", rdzv["master"]), ("rdzv", rdzv["rdzv_endpoint"]), ("id", rdzv["rdzv_id"])) if v)
    lines = [
        f"{rep['nodes']} nodes x {rep['ranks_per_node']} ranks per node = world size {rep['world_size']}",
        f"rendezvous: {where or 'none (one process)'}",
        *(
            f"  node {r['node_rank']} {r['host']}{' (Slurm node ' + r['slurm_node'] + ')' if r.get('slurm_node') else ''}: rank {r['rank']} (local {r['local_rank']}) on {r['device']}, pid {r['pid']}"
            for r in rep["ranks"]
        ),
        f"devices (rank 0): {devs}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if v),
        "env: " + (" ".join(f"{k}={v}" for k, v in rep["env"].items()) or "no NCCL_*/TORCH_NCCL_*/CUDA_*/OMP_NUM_THREADS set"),
    ]
    return "\n".join("preflight: " + line for line in lines)


class Preflight(L.Callback):
    """Once the process group exists: every rank's facts gathered to rank 0, which logs the report
    and writes ``<run_dir>/preflight.json``. Runs once per process (fit after validate)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.report: dict[str, Any] | None = None
        self._done = False

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        if self._done:
            return
        self._done = True
        import torch.distributed as dist

        root = trainer.strategy.root_device
        mine = rank_facts(trainer.global_rank, trainer.local_rank, trainer.node_rank, str(root))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        if trainer.is_global_zero:
            self.report = build_report(ranks)
            log.info("%s", format_report(self.report))
            (self.run_dir / "preflight.json").write_text(json.dumps(self.report, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m llm.preflight [--ranks-per-node N] [--accelerator gpu|cpu|auto]``: this node's
    part of the report, before any process starts (``slurm/stage.sh``), and the checks that hold
    without a config: the Slurm job's GPUs per node against the CUDA devices here."""
    import argparse

    import torch

    p = argparse.ArgumentParser(prog="python -m llm.preflight", description=main.__doc__)
    p.add_argument("--ranks-per-node", type=int, default=None, help="the ranks torchrun will start on each node")
    p.add_argument("--accelerator", default="auto", help="gpu: fail when no CUDA device is visible")
    a = p.parse_args(argv)
    env = os.environ
    rep = {
        "nodes": _int(env, "SLURM_JOB_NUM_NODES") or _int(env, "SLURM_NNODES") or 1,
        "ranks_per_node": a.ranks_per_node or "?",
        "world_size": (_int(env, "SLURM_JOB_NUM_NODES") or _int(env, "SLURM_NNODES") or 1) * a.ranks_per_node if a.ranks_per_node else "?",
        "ranks": [],
        "devices": devices_here(),
        "versions": versions(),
        "rendezvous": rendezvous(env),
        "env": env_report(env),
    }
    print(format_report(rep), flush=True)
    n = torch.cuda.device_count()
    problems = []
    gpus_asked = _int(env, "SLURM_GPUS_ON_NODE")
    if gpus_asked and n == 0:
        problems.append(f"Slurm gave this job {gpus_asked} GPUs per node (SLURM_GPUS_ON_NODE) but no CUDA device is visible")
    if str(a.accelerator) in ("gpu", "cuda") and n == 0:
        problems.append(f"--accelerator {a.accelerator} but no CUDA device is visible on {socket.gethostname()}")
    if a.ranks_per_node and n and a.ranks_per_node > n:
        problems.append(f"{a.ranks_per_node} ranks per node asked for but only {n} CUDA devices are visible")
    for msg in problems:
        print(f"preflight: FAILED: {msg}", file=sys.stderr, flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
