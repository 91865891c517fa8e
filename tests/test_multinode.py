"""Two nodes without Slurm: ``launch/torchrun.sh`` started twice on this host with ``NNODES=2`` and
one ``RDZV_ENDPOINT`` (what ``slurm/stage.sh`` runs on each node under srun), meeting in torchrun's
c10d rendezvous. The preflight reports 2 nodes x 1 rank; both nodes killed mid-run (as a requeue
or a lost allocation does) and started again with ``ckpt_path=last`` end at the uninterrupted
run's loss and token count. Needs no root (tests/test_slurm.py runs the same on two slurmd
daemons)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FAST, ROOT

pytestmark = pytest.mark.slow

ARGS = [*FAST, "eval=none", "trainer.val_every_n_steps=1000", "trainer.max_steps=12", "trainer.ckpt_every_n_steps=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(run_dir: Path, rdzv_id: str, *extra: str) -> list[subprocess.Popen]:
    """Two launchers, one per simulated node, each its own process group."""
    env = {**os.environ, "NNODES": "2", "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}", "RDZV_ID": rdzv_id, "OMP_NUM_THREADS": "1"}
    cmd = [
        "bash",
        str(ROOT / "launch" / "torchrun.sh"),
        "1",
        *ARGS,
        f"run_dir={run_dir}",
        f"hydra.run.dir={run_dir.parent}/hydra-{rdzv_id}",
        *extra,
    ]
    procs = []
    for i in range(2):  # output to files: a pipe nobody reads while the test polls could fill and stall the run
        log = run_dir.parent / f"{rdzv_id}-node{i}.log"
        with open(log, "w") as f:
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        p.log_path = log  # type: ignore[attr-defined]
        procs.append(p)
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    for p in procs:
        p.wait(timeout=timeout)
    outs = [p.log_path.read_text(errors="replace") for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def tree(pid: int) -> list[int]:
    """pid and its descendants (torchrun starts its workers in sessions of their own)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def last_step(run_dir: Path) -> int:
    try:
        rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    except (OSError, csv.Error):
        return -1
    return max((int(r["step"]) for r in rows if r.get("step") and r.get("train/loss")), default=-1)


def test_two_torchrun_nodes_preflight_kill_and_resume(tmp_path, demo_data):
    base_dir, run = tmp_path / "base", tmp_path / "killed"
    outs = wait_all(launch_nodes(base_dir, "base"))
    text = "\n".join(outs)
    assert "preflight: 2 nodes x 1 ranks per node = world size 2" in text, text[-3000:]
    pf = json.loads((base_dir / "preflight.json").read_text())
    assert (pf["nodes"], pf["ranks_per_node"], pf["world_size"]) == (2, 1, 2)
    assert [(r["rank"], r["node_rank"], r["local_rank"]) for r in pf["ranks"]] == [(0, 0, 0), (1, 1, 0)]
    assert pf["rendezvous"]["rdzv_endpoint"].startswith("127.0.0.1:") and pf["rendezvous"]["rdzv_id"] == "base"
    base = json.loads((base_dir / "export" / "xiulian.json").read_text())

    procs = launch_nodes(run, "killed")
    try:
        t0 = time.time()
        while not ((run / "checkpoints" / "step0000004.ckpt").is_file() and last_step(run) >= 5):
            assert all(p.poll() is None for p in procs) and time.time() - t0 < 300, "the run did not reach step 5"
            time.sleep(0.5)
        for p in procs:  # both nodes, launcher and workers: what a requeue does
            for pid in tree(p.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert not (run / "export").exists()
    outs = wait_all(launch_nodes(run, "killed-2", "ckpt_path=last"))
    text = "\n".join(outs)
    assert re.search(r"resuming from .*step00000(04|08)\.ckpt", text), text[-3000:]
    meta = json.loads((run / "export" / "xiulian.json").read_text())
    assert meta["global_step"] == 12 and meta["tokens_seen"] == base["tokens_seen"]
    assert meta["metrics"]["train/loss"] == pytest.approx(base["metrics"]["train/loss"], rel=1e-5)
