"""One run per directory: a lock for the run's life, refusals that name the way out, the config
record on resume, metrics.csv with each step once, ckpt_keep across resumes, and a fallback from
an unreadable newest checkpoint (never by unpickling it)."""

from __future__ import annotations

import csv
import logging
import os
import pickle
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import yaml

from llm.rundir import RunDirBusy
from llm.train import train

from conftest import FAST, ROOT, compose

BASE = ["trainer.val_every_n_steps=1000", "eval=none", "export=false", "trainer.ckpt_every_n_steps=2"]


def _steps(run_dir) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _ckpts(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_fresh_run_into_a_finished_run_refuses_and_changes_nothing(tmp_path, demo_data):
    train(compose([*BASE, "trainer.max_steps=4"], run_dir=tmp_path))
    config, metrics = (tmp_path / "config.yaml").read_text(), (tmp_path / "metrics.csv").read_text()
    with pytest.raises(
        ValueError, match=r"holds the checkpoints of another run \(newest: step0000004.ckpt\); resume it with ckpt_path=last"
    ):
        train(compose([*BASE, "trainer.max_steps=6", "stage.optim.lr=0.5"], run_dir=tmp_path))
    assert (tmp_path / "config.yaml").read_text() == config and (tmp_path / "metrics.csv").read_text() == metrics
    assert _ckpts(tmp_path) == ["step0000002.ckpt", "step0000004.ckpt"]


def test_resume_refuses_what_cannot_apply_and_records_the_rest(tmp_path, demo_data):
    train(compose([*BASE, "trainer.max_steps=4"], run_dir=tmp_path))
    original = (tmp_path / "config.yaml").read_text()
    for change, key in (("model.n_layer=2", "model.n_layer: 4 -> 2"), ("stage.optim.lr=0.5", "stage.optim.lr: 0.003 -> 0.5")):
        with pytest.raises(ValueError, match="cannot apply to its checkpoint") as e:
            train(compose([*BASE, "trainer.max_steps=6", "ckpt_path=last", change], run_dir=tmp_path))
        assert key in str(e.value)
        assert (tmp_path / "config.yaml").read_text() == original and not list(tmp_path.glob("config.resume-*"))
    res = train(compose([*BASE, "trainer.max_steps=6", "ckpt_path=last"], run_dir=tmp_path))
    assert res["global_step"] == 6
    assert (tmp_path / "config.yaml").read_text() == original  # the run's record is not rewritten
    resumed = yaml.safe_load((tmp_path / "config.resume-1.yaml").read_text())
    assert resumed["trainer"]["max_steps"] == 6 and resumed["ckpt_path"] == "last"
    assert _steps(tmp_path) == sorted(set(_steps(tmp_path)))  # each step once


def test_a_run_dead_before_its_first_checkpoint_restarts_with_clean_metrics(tmp_path, demo_data):
    """NaN at step 4 with no checkpoint yet (every 10 steps): the restart begins at step 0, and the
    dead attempt's metrics are kept aside, not appended to."""
    cfg = ["trainer.val_every_n_steps=1000", "eval=none", "export=false", "trainer.ckpt_every_n_steps=10", "trainer.max_steps=6"]
    with pytest.raises(FloatingPointError):
        train(compose([*cfg, "trainer.nan_at_step=3"], run_dir=tmp_path))
    dead = _steps(tmp_path)
    assert dead and max(dead) < 4
    res = train(compose([*cfg, "ckpt_path=last"], run_dir=tmp_path))
    assert res["global_step"] == 6
    steps = _steps(tmp_path)
    assert steps == sorted(set(steps)) and steps[0] == 0  # each step once
    assert (tmp_path / "metrics.csv.1").is_file() and (tmp_path / "config.yaml.1").is_file()


def test_ckpt_keep_holds_across_resumes(tmp_path, demo_data):
    train(compose([*BASE, "trainer.max_steps=6", "trainer.ckpt_keep=2"], run_dir=tmp_path))
    assert _ckpts(tmp_path) == ["step0000004.ckpt", "step0000006.ckpt"]
    train(compose([*BASE, "trainer.max_steps=10", "trainer.ckpt_keep=2", "ckpt_path=last"], run_dir=tmp_path))
    assert _ckpts(tmp_path) == ["step0000008.ckpt", "step0000010.ckpt"]  # the resumed-from one pruned too


class _Rank:
    """One rank of a two-rank job as the checkpoint callback sees its strategy: rank 0's broadcast
    is what every rank receives, and only rank 0 removes files (as Lightning's strategies do)."""

    def __init__(self, rank: int, sent: list) -> None:
        self.global_rank, self.sent = rank, sent

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def barrier(self, name: str | None = None) -> None:
        pass

    def broadcast(self, obj, src: int = 0):
        if self.is_global_zero:
            self.sent.append(obj)
        return self.sent[-1]

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            os.remove(filepath)


def test_ckpt_keep_forgets_the_same_checkpoints_on_every_rank(tmp_path):
    """Resumed from a preemption checkpoint (step 64, unknown to the checkpoint callback, which
    restored {step 40}), the save of step 80 prunes step 40. Rank 1 lists the folder after rank 0
    removed it (the order that hung tests/test_slurm.py's preemption test): both ranks must still
    forget it, or at step 120 one rank takes Lightning's top-k collective and the other does not."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from llm.callbacks import _keep_newest

    for step in (40, 64, 80):
        (tmp_path / f"step{step:07d}.ckpt").write_bytes(b"x")
    sent: list = []
    ranks = []
    for rank in (0, 1):  # one after the other: rank 1 after rank 0 has removed step 40
        cb = _keep_newest(ModelCheckpoint)(dirpath=tmp_path, filename="step{step:07d}", save_top_k=2, monitor="step", mode="max")
        cb.best_k_models = {str(tmp_path / f"step{s:07d}.ckpt"): torch.tensor(float(s)) for s in (40, 80)}
        cb.prune(SimpleNamespace(strategy=_Rank(rank, sent)))
        ranks.append(cb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step0000064.ckpt", "step0000080.ckpt"]
    assert [sorted(cb.best_k_models) for cb in ranks] == [[str(tmp_path / "step0000080.ckpt")]] * 2


class _Payload:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unreadable_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, demo_data, caplog):
    train(compose([*BASE, "trainer.max_steps=4"], run_dir=tmp_path))
    marker = tmp_path / "payload-ran"
    newest = tmp_path / "checkpoints" / "step0000004.ckpt"
    newest.write_bytes(pickle.dumps({"state_dict": _Payload(str(marker))}))  # a planted payload, not a checkpoint
    with caplog.at_level(logging.WARNING, logger="llm.rundir"):
        res = train(compose([*BASE, "trainer.max_steps=6", "ckpt_path=last"], run_dir=tmp_path))
    assert "step0000004.ckpt cannot be resumed from" in caplog.text and "trying the one before it" in caplog.text
    assert res["global_step"] == 6 and not marker.exists()  # resumed from step 2; nothing was unpickled
    steps = _steps(tmp_path)
    assert steps == sorted(set(steps))


@pytest.mark.tier("integration")
def test_two_runs_in_one_directory_at_once(tmp_path, demo_data):
    """A second run started while the first holds the directory stops at once, naming the holder."""
    args = [*FAST, *BASE, "stage=pretrain", "model=tiny", "data=demo", "trainer.max_steps=100000", f"run_dir={tmp_path}"]
    first = subprocess.Popen(
        [sys.executable, "-m", "llm.train", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        t0 = time.time()
        while not ((tmp_path / ".lock").is_file() and (tmp_path / ".lock").read_text().strip()):
            assert first.poll() is None and time.time() - t0 < 120, first.stderr.read() if first.poll() is not None else "no lock"
            time.sleep(0.2)
        with pytest.raises(RunDirBusy, match=rf"run directory {tmp_path} is in use by another run \(pid {first.pid} on "):
            train(compose([*BASE, "trainer.max_steps=4"], run_dir=tmp_path))
    finally:
        first.kill()
        first.wait()
    assert os.path.exists(tmp_path / ".lock")
