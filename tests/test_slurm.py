"""The sbatch scripts on a real Slurm cluster (slurm/local-cluster.sh: Debian's munge, slurmctld and
two slurmd daemons, two simulated nodes on this host, as root). Skipped where the cluster cannot be
started (not root, no apt).

* the tiny pretraining as 2 ranks (one torchrun under srun) ends with an export;
* preemption: USR1 to the batch shell (what ``#SBATCH --signal=B:USR1@N`` does) -> a checkpoint of
  the current step, the job requeues itself, resumes from it, and ends at the same loss and token
  count as an uninterrupted run;
* ``scontrol requeue`` of a running job (a hard stop): it resumes from its last periodic checkpoint
  and also ends at the uninterrupted run's loss;
  (a requeued job starts again after cred_expire, 10 s on the test cluster; forcing it earlier with
  ``scontrol update StartTime=now`` can get it killed with "Job credential revoked")
* ``scancel`` leaves the last checkpoint intact and loadable;
* two nodes (``sbatch -N 2``, one torchrun per node meeting in a c10d rendezvous): the preflight
  reports 2 nodes x 1 rank, and a job requeued mid-run ends at the uninterrupted job's loss.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slow

ARGS = [
    "data.vocab_size=1024",
    "data.seq_len=64",
    "model.max_seq_len=64",
    "data.micro_batch_size=8",
    "data.num_workers=0",
    "trainer.progress_bar=false",
    "eval=none",
    "trainer.val_every_n_steps=1000",
    "stage.sample_prompts=[]",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=240",
    "trainer.ckpt_every_n_steps=40",
]


def sh(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout)


def submit(tmp: Path, *extra: str, wait: bool = False, nodes: int = 1) -> tuple[str, Path]:
    """sbatch slurm/pretrain.sh as 2 CPU ranks (one node) or one rank on each of ``nodes`` nodes;
    returns (job id, log file)."""
    log = tmp / "job-%j.out"
    cmd = [
        "sbatch",
        "--parsable",
        "--gpus-per-node=0",
        f"--nodes={nodes}",
        f"--cpus-per-task={2 if nodes == 1 else 1}",
        f"--output={log}",
        "--open-mode=append",
        f"--chdir={ROOT}",
        f"--export=ALL,XIULIAN_GPUS_PER_NODE={2 if nodes == 1 else 1}",
        *(["--wait"] if wait else []),
        str(ROOT / "slurm" / "pretrain.sh"),
        *ARGS,
        *extra,
    ]
    r = sh(*cmd, check=False, timeout=900)
    job = r.stdout.strip().split(";")[0]
    assert job.isdigit(), r.stdout + r.stderr
    if wait:
        assert r.returncode == 0, Path(str(log).replace("%j", job)).read_text()[-3000:]
    return job, Path(str(log).replace("%j", job))


def run_dir(job: str) -> Path:
    return ROOT / "outputs" / "pretrain" / f"slurm-{job}"


def job_state(job: str) -> tuple[str, int]:
    r = sh("scontrol", "show", "job", job, check=False)
    if r.returncode != 0:
        return "GONE", -1
    st = re.search(r"JobState=(\w+)", r.stdout).group(1)
    return st, int(re.search(r"Restarts=(\d+)", r.stdout).group(1))


def wait_until(pred, timeout: float, what: str, every: float = 0.5):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def last_step(job: str) -> int:
    p = run_dir(job) / "metrics.csv"
    try:
        rows = list(csv.DictReader(open(p)))
    except (OSError, csv.Error):
        return -1
    steps = [int(r["step"]) for r in rows if r.get("step") and r.get("train/loss")]
    return max(steps, default=-1)


def batch_shell(job: str) -> int:
    """The batch shell's PID: where ``--signal=B:...`` delivers. ``scontrol listpids`` asks the
    slurmd of the node it names; without one, on simulated nodes, the first node of this host
    (it lists nothing for a job on the second)."""
    host = re.search(r"BatchHost=(\S+)", sh("scontrol", "show", "job", job).stdout).group(1)
    out = sh("scontrol", "listpids", job, host).stdout.splitlines()[1:]
    for line in out:
        pid, _, step, local, *_ = line.split() + ["", ""]
        if step == "batch" and local == "0":
            return int(pid)
    raise AssertionError(f"no batch shell in {out}")


def finished(job: str) -> dict:
    meta = run_dir(job) / "export" / "xiulian.json"
    return json.loads(meta.read_text())


def cleanup(*jobs: str) -> None:
    for j in jobs:
        shutil.rmtree(run_dir(j), ignore_errors=True)


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm")
    job, log = submit(tmp, wait=True)
    text = log.read_text()
    yield job, finished(job), text
    cleanup(job)


def test_sbatch_two_ranks(uninterrupted):
    job, meta, text = uninterrupted
    assert "Starting with 2 processes" in text and "distributed_backend=gloo" in text
    assert meta["global_step"] == 240 and math.isfinite(meta["metrics"]["train/loss"])
    assert "[slurm] stage=pretrain nodes=1 gpus/node=2" in text


def test_preemption_signal_checkpoints_requeues_and_resumes(uninterrupted, tmp_path):
    _, base, _ = uninterrupted
    job, log = submit(tmp_path)
    try:
        wait_until(lambda: last_step(job) >= 60, 300, "step 60")
        os.kill(batch_shell(job), 10)  # SIGUSR1 to the batch shell, as --signal=B:USR1@N does
        wait_until(lambda: job_state(job)[1] >= 1, 120, "the job to requeue itself")
        wait_until(
            lambda: (run_dir(job) / "export" / "xiulian.json").is_file() and job_state(job)[0] in ("COMPLETED", "GONE"),
            600,
            "the requeued job to finish",
        )
        text = log.read_text()
        m = re.search(r"checkpoint of step (\d+) written; requeueing job", text)
        assert m and int(m.group(1)) >= 60, text[-3000:]
        assert "restart count 1" in text and re.search(r"resum\w* .*step0*" + m.group(1), text), text[-3000:]
        kept = sorted(p.name for p in (run_dir(job) / "checkpoints").iterdir())
        assert len(kept) == 2 and kept[-1] == "step0000240.ckpt", kept  # trainer.ckpt_keep=2 held across the requeue
        meta = finished(job)
        # nothing trained twice or skipped: the same tokens and the same loss as the run never stopped
        assert meta["global_step"] == 240 and meta["tokens_seen"] == base["tokens_seen"]
        assert meta["metrics"]["train/loss"] == pytest.approx(base["metrics"]["train/loss"], rel=1e-5)
    finally:
        sh("scancel", job, check=False)
        cleanup(job)


def test_hard_requeue_resumes_from_last_checkpoint(uninterrupted, tmp_path):
    _, base, _ = uninterrupted
    job, log = submit(tmp_path)
    try:
        wait_until(lambda: (run_dir(job) / "checkpoints" / "step0000080.ckpt").is_file() and last_step(job) >= 90, 300, "step 90")
        sh("scontrol", "requeue", job)
        wait_until(lambda: job_state(job)[1] >= 1, 120, "the requeue")
        wait_until(
            lambda: (run_dir(job) / "export" / "xiulian.json").is_file() and job_state(job)[0] in ("COMPLETED", "GONE"),
            600,
            "the requeued job to finish",
        )
        meta = finished(job)
        assert meta["global_step"] == 240 and meta["tokens_seen"] == base["tokens_seen"]
        assert meta["metrics"]["train/loss"] == pytest.approx(base["metrics"]["train/loss"], rel=1e-5)
        assert "restart count 1" in log.read_text()
    finally:
        sh("scancel", job, check=False)
        cleanup(job)


def test_scancel_leaves_last_checkpoint_loadable(cluster, tmp_path):
    job, _ = submit(tmp_path, "trainer.ckpt_every_n_steps=10", "trainer.max_steps=100000")
    try:
        ck = run_dir(job) / "checkpoints"
        wait_until(lambda: len(list(ck.glob("step*.ckpt"))) >= 2, 300, "two checkpoints")
        sh("scancel", job)
        wait_until(lambda: job_state(job)[0] in ("CANCELLED", "GONE"), 120, "the cancel")
        time.sleep(2)
        for p in ck.glob("step*.ckpt"):  # every file under a checkpoint's name is whole
            torch.load(p, map_location="cpu", weights_only=True)
        newest = max(ck.glob("step*.ckpt"))
        state = torch.load(newest, map_location="cpu", weights_only=True)
        assert state["global_step"] == int(newest.stem[4:])
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    finally:
        cleanup(job)


def test_stage_chain_with_dependencies(cluster, tmp_path):
    """slurm/chain.sh: pretrain -> SFT -> reward model -> PPO as four jobs chained by afterok,
    each reading the export of the one before."""
    small = "trainer.progress_bar=false trainer.log_every_n_steps=1 trainer.val_every_n_steps=1000 trainer.ckpt_every_n_steps=0"
    env = {
        **os.environ,
        "SBATCH_ARGS": f"--gpus-per-node=0 --cpus-per-task=2 --output={tmp_path}/%x-%j.out --export=ALL,XIULIAN_GPUS_PER_NODE=1",
        "PRETRAIN_ARGS": f"{small} trainer.max_steps=30 data.vocab_size=1024 data.seq_len=64 model.max_seq_len=128 stage.sample_prompts=[]",
        "SFT_ARGS": f"{small} trainer.max_steps=8 data.seq_len=128 stage.sample_prompts=[]",
        "RM_ARGS": f"{small} trainer.max_steps=6",
        "PPO_ARGS": f"{small} trainer.max_steps=2 data.micro_batch_size=4 stage.ppo.max_new_tokens=8",
    }
    r = subprocess.run(["bash", str(ROOT / "slurm" / "chain.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    jobs = [line.split() for line in r.stdout.splitlines()]
    assert [j[0] for j in jobs] == ["pretrain", "sft", "rm", "ppo"]
    deps = sh("squeue", "-h", "-o", "%i %E", check=False).stdout
    try:
        assert f"afterok:{jobs[0][1]}" in deps or f"afterok:{jobs[1][1]}" in deps  # later stages wait on earlier ones
        for stage, job, export in jobs:
            wait_until(
                lambda e=export, j=job: Path(e, "xiulian.json").is_file() and job_state(j)[0] in ("COMPLETED", "GONE"),
                900,
                f"the {stage} job to finish",
            )
        meta = {stage: json.loads(Path(export, "xiulian.json").read_text()) for stage, _, export in jobs}
        exports = {stage: export for stage, _, export in jobs}
        assert meta["sft"]["base"] == exports["pretrain"]
        assert meta["rm"]["base"] == exports["sft"] and meta["ppo"]["base"] == exports["sft"]
        assert Path(exports["ppo"], "eval_results.json").is_file()  # the stage's suite ran after PPO
    finally:
        for _, job, _ in jobs:
            sh("scancel", job, check=False)
        for stage, job, _ in jobs:
            shutil.rmtree(ROOT / "outputs" / stage / f"slurm-{job}", ignore_errors=True)


@pytest.mark.parametrize("strategy", ["deepspeed_zero3", "fsdp"])
def test_sbatch_sharded_strategy(cluster, tmp_path, strategy):
    """`sbatch slurm/pretrain.sh strategy=...` unchanged: 2 ranks, sharded checkpoints, a
    consolidated export that transformers loads, and a falling loss."""
    job, log = submit(tmp_path, f"strategy={strategy}", "trainer.max_steps=30", "trainer.ckpt_every_n_steps=15", wait=True)
    try:
        meta = finished(job)
        assert meta["global_step"] == 30
        ckpts = sorted(p.name for p in (run_dir(job) / "checkpoints").iterdir())
        assert ckpts == ["step0000015.ckpt", "step0000030.ckpt"] and all((run_dir(job) / "checkpoints" / c).is_dir() for c in ckpts)
        rows = list(csv.DictReader(open(run_dir(job) / "metrics.csv")))
        loss = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
        assert loss[max(loss)] < loss[min(loss)] - 0.3, loss
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(run_dir(job) / "export")
    finally:
        cleanup(job)


#: the two-node runs: few steps of the tiny model (the CPU is shared)
TWO_NODES = ["trainer.max_steps=16", "trainer.ckpt_every_n_steps=4"]


@pytest.fixture(scope="module")
def two_nodes(cluster):
    out = sh("sinfo", "-h", "-o", "%D", check=False).stdout.split()
    if sum(int(n) for n in out if n.isdigit()) < 2:
        pytest.skip("the running Slurm cluster has one node: `SLURM_UP_NODES=2 bash slurm/local-cluster.sh up`")


def test_two_nodes_preflight_and_requeue_resumes(two_nodes, tmp_path):
    """``sbatch -N 2 slurm/pretrain.sh`` on two slurmd daemons: one torchrun per node, a c10d
    rendezvous on the first; the preflight (log and preflight.json) shows 2 nodes x 1 rank, each rank
    on its own Slurm node; a hard ``scontrol requeue`` after the checkpoint of step 8 resumes from it
    on both nodes and ends at the uninterrupted two-node job's loss and token count."""
    base_job, base_log = submit(tmp_path, *TWO_NODES, nodes=2, wait=True)
    job = None
    try:
        text = base_log.read_text()
        assert "[slurm] stage=pretrain nodes=2 gpus/node=1" in text, text[-3000:]
        assert "preflight: 2 nodes x 1 ranks per node = world size 2" in text, text[-3000:]
        pf = json.loads((run_dir(base_job) / "preflight.json").read_text())
        assert (pf["nodes"], pf["ranks_per_node"], pf["world_size"]) == (2, 1, 2)
        assert [(r["rank"], r["node_rank"], r["local_rank"]) for r in pf["ranks"]] == [(0, 0, 0), (1, 1, 0)]
        assert len({r["slurm_node"] for r in pf["ranks"]}) == 2, pf["ranks"]  # each rank on its own node
        assert pf["rendezvous"]["rdzv_endpoint"].endswith(f":{20000 + int(base_job) % 20000}")
        assert pf["rendezvous"]["rdzv_id"] == base_job and pf["launcher"]["SLURM_STEP_NUM_NODES"] == "2"
        base = finished(base_job)
        assert base["global_step"] == 16

        job, log = submit(tmp_path, *TWO_NODES, nodes=2)
        wait_until(lambda: (run_dir(job) / "checkpoints" / "step0000008.ckpt").is_file() and last_step(job) >= 9, 300, "step 9")
        sh("scontrol", "requeue", job)
        wait_until(lambda: job_state(job)[1] >= 1, 120, "the requeue")
        wait_until(
            lambda: (run_dir(job) / "export" / "xiulian.json").is_file() and job_state(job)[0] in ("COMPLETED", "GONE"),
            600,
            "the requeued job to finish",
        )
        text = log.read_text()
        assert "restart count 1" in text and re.search(r"resuming from .*step00000(08|12)", text), text[-3000:]
        assert text.count("[llm.preflight][INFO] - preflight: 2 nodes x 1 ranks per node = world size 2") == 2  # rank 0, each start
        meta = finished(job)
        assert meta["global_step"] == 16 and meta["tokens_seen"] == base["tokens_seen"]
        assert meta["metrics"]["train/loss"] == pytest.approx(base["metrics"]["train/loss"], rel=1e-5)
    finally:
        if job:
            sh("scancel", job, check=False)
            cleanup(job)
        cleanup(base_job)
