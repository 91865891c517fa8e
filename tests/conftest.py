"""Shared fixtures: a composed config (Hydra compose API, the same files the CLI uses) and a
prepared copy of the demo data (real CPython documentation text), cached across tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("XIULIAN_CACHE", str(ROOT / ".cache" / "xiulian"))
# DeepSpeed's CPU ops are compiled once per folder (about a minute): one folder for the whole suite,
# in-process runs, torchrun children and Slurm jobs alike (slurm/stage.sh would use ~/.cache)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))

# fast settings for CPU tests: a small vocabulary, short sequences
FAST = [
    "data.vocab_size=1024",
    "data.seq_len=64",
    "data.micro_batch_size=8",
    "data.num_workers=0",
    "data.val_batches=4",
    "model.max_seq_len=64",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "stage.sample_prompts=[]",
]


def compose(overrides: list[str] | None = None, run_dir: Path | None = None):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from llm.config import register_configs

    register_configs()
    extra = [f"run_dir={run_dir}"] if run_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hcompose(config_name="config", overrides=[*FAST, *(overrides or []), *extra])


@pytest.fixture(scope="session")
def demo_data():
    """(tokenizer, shards dir) of the demo text at the test vocabulary size."""
    from llm.data.builders import resolve_data

    cfg = compose()
    return resolve_data(cfg.data)


def python_cmd() -> list[str]:
    return [sys.executable]


SFT = [
    "stage=sft",
    "model=hf",
    "data=sft_demo",
    "data.seq_len=128",
    "data.micro_batch_size=8",
    "data.val_batches=4",
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "stage.sample_prompts=[]",
]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, demo_data):
    """A stage-1 export: the tiny model pretrained briefly on the demo text."""
    from llm.train import train

    run = tmp_path_factory.mktemp("pretrain")
    cfg = compose(
        ["trainer.max_steps=150", "trainer.val_every_n_steps=1000", "model.max_seq_len=256", "trainer.ckpt_every_n_steps=0"], run_dir=run
    )
    return train(cfg)["export"]


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory, tiny_base):
    """(run dir, result) of stage 2 on the tiny base: the starting point of the RLHF tests."""
    from llm.train import train

    run = tmp_path_factory.mktemp("sft")
    extra = ["trainer.max_steps=120", "trainer.val_every_n_steps=120", "stage.optim.lr=2e-3"]
    return run, train(compose([*SFT, f"model.pretrained={tiny_base}", *extra], run_dir=run))


@pytest.fixture(scope="session")
def cluster():
    """A real Slurm cluster of two simulated nodes on this host (slurm/local-cluster.sh, as root); skips where it cannot start."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (slurm/local-cluster.sh)")
    was_up = shutil.which("sinfo") is not None and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    if not was_up:
        r = subprocess.run(
            ["bash", str(ROOT / "slurm" / "local-cluster.sh"), "up"],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "XIULIAN_SLURM_FAST": "1", "SLURM_UP_NODES": "2"},  # two simulated nodes (tests/test_slurm.py)
        )
        if r.returncode != 0:
            pytest.skip(f"could not start the local Slurm cluster: {(r.stdout + r.stderr).strip().splitlines()[-1:]}")
    yield
    if not was_up:
        subprocess.run(["bash", str(ROOT / "slurm" / "local-cluster.sh"), "down"], capture_output=True, timeout=300)


# ------------------------------------------------------------------------------------- tiers
#: unit: no training, no subprocess (the inner loop, under a minute);
#: integration: in-process runs of the tiny model, CLIs as subprocesses;
#: system: torchrun, DeepSpeed, Slurm, the real SmolLM2 checkpoint, the browser, Docker (``slow``).
TIERS = ("unit", "integration", "system")
#: fixtures that train or start something: a test using one is not a unit test
INTEGRATION_FIXTURES = {"demo_data", "tiny_base", "sft_run"}
SYSTEM_FIXTURES = {"cluster"}


def tier_of(item: pytest.Item) -> str:
    """The closest ``tier("...")`` declaration (function, then class, then module); ``slow``
    counts as system. Undeclared: system with a system fixture, integration with a training
    fixture, else unit. The result is added as the marker ``unit``, ``integration`` or ``system``."""
    for mark in item.iter_markers():
        if mark.name == "tier":
            if not mark.args or mark.args[0] not in TIERS:
                raise pytest.UsageError(f"{item.nodeid}: tier({', '.join(map(repr, mark.args))}): choose one of {', '.join(TIERS)}")
            return mark.args[0]
        if mark.name == "slow":
            return "system"
    names = set(getattr(item, "fixturenames", ()))
    if names & SYSTEM_FIXTURES:
        return "system"
    return "integration" if names & INTEGRATION_FIXTURES else "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    bad = []
    for item in items:
        tier = tier_of(item)
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "system":
            item.add_marker(pytest.mark.slow)  # `-m "not slow"` keeps meaning: no system tests
        uses = set(getattr(item, "fixturenames", ())) & (INTEGRATION_FIXTURES | SYSTEM_FIXTURES)
        if tier == "unit" and uses:
            bad.append(f"{item.nodeid}: marked unit but uses {', '.join(sorted(uses))}")
    if bad:
        raise pytest.UsageError("tests in the wrong tier:\n  " + "\n  ".join(bad))
