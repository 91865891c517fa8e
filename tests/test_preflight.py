"""The preflight (llm/preflight.py): the world checks every job makes before it builds anything,
and the report rank 0 prints and writes to preflight.json. The multi-node runs that show it on two
nodes are in tests/test_slurm.py (two slurmd daemons) and tests/test_multinode.py (two torchruns)."""

from __future__ import annotations

import json

import pytest
import torch

from llm.preflight import PreflightError, build_report, check_world, env_report, format_report, rank_facts, torchrun_world


def torchrun_env(nodes: int, per_node: int, **extra: str) -> dict[str, str]:
    """What torchrun sets in each worker (plus ``extra``)."""
    env = {
        "WORLD_SIZE": str(nodes * per_node),
        "LOCAL_WORLD_SIZE": str(per_node),
        "GROUP_WORLD_SIZE": str(nodes),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "TORCHELASTIC_RUN_ID": "7",
    }
    return {**env, **extra}


def test_torchrun_world_reads_nodes_ranks_and_world():
    assert torchrun_world(torchrun_env(2, 4)) == (2, 4, 8)
    assert torchrun_world({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}) == (2, 4, 8)  # no GROUP_WORLD_SIZE: world / per node
    assert torchrun_world({}) is None


def test_a_consistent_world_passes():
    assert check_world("cpu", "auto", 1, torchrun_env(2, 1), cuda_count=0) == []
    assert check_world("gpu", 8, 2, torchrun_env(2, 8), cuda_count=8) == []
    slurm = {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2"}
    assert check_world("auto", "auto", 1, torchrun_env(2, 1, **slurm), cuda_count=0) == []
    assert check_world("auto", "auto", 1, {}, cuda_count=0) == []  # one plain process


def test_gpu_asked_and_none_visible_names_the_mask():
    (msg,) = check_world("gpu", "auto", 1, {"CUDA_VISIBLE_DEVICES": ""}, cuda_count=0)
    assert "strategy.accelerator=gpu" in msg and "no CUDA device" in msg and "CUDA_VISIBLE_DEVICES=''" in msg


def test_more_ranks_than_gpus_on_a_node():
    (msg,) = check_world("gpu", "auto", 1, torchrun_env(1, 8), cuda_count=4)
    assert "8 ranks per node" in msg and "only 4 CUDA devices" in msg
    (msg,) = check_world("gpu", 4, 1, {}, cuda_count=2)  # Lightning launches the processes itself
    assert "strategy.devices=4" in msg and "only 2 CUDA devices" in msg


def test_config_world_against_torchrun():
    (msg,) = check_world("cpu", 2, 1, torchrun_env(1, 4), cuda_count=0)
    assert "strategy.devices=2" in msg and "4 ranks per node" in msg
    (msg,) = check_world("cpu", "auto", 4, torchrun_env(2, 1), cuda_count=0)
    assert "strategy.num_nodes=4" in msg and "torchrun has 2 nodes" in msg
    (msg,) = check_world("cpu", "auto", 1, {"WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2"}, cuda_count=0)
    assert "WORLD_SIZE=3 is not nodes x ranks per node = 2 x 2" in msg


def test_slurm_allocation_against_torchrun():
    """A job step of 4 nodes whose torchrun meets only 2 (--nnodes 2), and 2 launchers per node."""
    env = torchrun_env(2, 1, SLURM_JOB_ID="9", SLURM_JOB_NUM_NODES="4", SLURM_STEP_NUM_NODES="4", SLURM_STEP_NUM_TASKS="4")
    msgs = check_world("cpu", "auto", 1, env, cuda_count=0)
    assert any("Slurm allocated 4 nodes" in m and "torchrun has 2" in m for m in msgs), msgs
    assert any("Slurm started 4 tasks" in m for m in msgs), msgs
    env = torchrun_env(2, 1, SLURM_JOB_ID="9", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="4")  # no step variables: the job's
    (msg,) = check_world("cpu", "auto", 1, env, cuda_count=0)
    assert "Slurm started 4 tasks" in msg and "one task per node" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_with_accelerator_gpu_fails_at_once_on_a_cpu_machine(tmp_path):
    """``strategy.accelerator=gpu`` without a GPU: train() refuses before it prepares data, builds a
    model or writes to the run directory, and says why."""
    from llm.train import train

    from conftest import compose

    cfg = compose(["strategy=ddp", "strategy.accelerator=gpu", "trainer.max_steps=1"], run_dir=tmp_path / "run")
    with pytest.raises(PreflightError, match=r"strategy.accelerator=gpu but no CUDA device is visible"):
        train(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_report_counts_nodes_and_maps_ranks():
    ranks = [rank_facts(g, g % 2, g // 2, "cpu") for g in (3, 0, 2, 1)]
    env = torchrun_env(2, 2, MASTER_ADDR="n1", MASTER_PORT="29500", XIULIAN_RDZV_ENDPOINT="n1:20001", NCCL_DEBUG="INFO", PATH="/bin")
    rep = build_report(ranks, env)
    assert (rep["nodes"], rep["ranks_per_node"], rep["world_size"]) == (2, 2, 4)
    assert [r["rank"] for r in rep["ranks"]] == [0, 1, 2, 3] and [r["node_rank"] for r in rep["ranks"]] == [0, 0, 1, 1]
    assert rep["rendezvous"] == {"master": "n1:29500", "rdzv_endpoint": "n1:20001", "rdzv_id": "7"}
    assert rep["env"] == {"NCCL_DEBUG": "INFO"}  # only the variables that govern NCCL, devices and threads
    assert rep["versions"]["torch"] == torch.__version__ and rep["versions"]["lightning"]
    text = format_report(rep)
    assert text.splitlines()[0] == "preflight: 2 nodes x 2 ranks per node = world size 4"
    assert "master n1:29500, rdzv n1:20001, id 7" in text and "node 1 " in text and "rank 3 (local 1)" in text
    assert "NCCL_DEBUG=INFO" in text and "torch " + torch.__version__ in text
    json.dumps(rep)  # preflight.json


def test_env_report_keeps_nccl_cuda_and_threads_only():
    env = {"NCCL_IB_DISABLE": "1", "TORCH_NCCL_BLOCKING_WAIT": "1", "CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "4", "HOME": "/root"}
    assert env_report(env) == {k: v for k, v in env.items() if k != "HOME"}
