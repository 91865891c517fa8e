"""Faults: a NaN/inf loss stops the run before the update (checkpoint intact, resumable) or skips
that update, per ``trainer.on_nonfinite``."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from conftest import compose

from llm.train import train

BASE = ["trainer.max_steps=8", "trainer.val_every_n_steps=1000", "eval=none", "export=false", "trainer.nan_at_step=3"]


def test_nan_skip_drops_one_update_and_goes_on(tmp_path, demo_data):
    res = train(compose([*BASE, "trainer.on_nonfinite=skip", "trainer.ckpt_every_n_steps=0"], run_dir=tmp_path))
    m = res["module"]
    assert res["global_step"] == 8 and m.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in m.model.parameters())
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [float(r["train/skipped_steps"]) for r in rows if r.get("train/skipped_steps")] == [1.0]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(x) for x in losses)  # the NaN never reached the logged training loss
    # tokens_seen counts the 8 real updates only
    assert m.tokens_seen == 8 * 8 * 64


def test_nan_stop_names_step_and_batch_and_resumes(tmp_path, demo_data):
    with pytest.raises(FloatingPointError, match=r"optimizer step 4 \(epoch 0, batch 3 of the epoch, rank 0 of 1\).*last checkpoint is intact"):
        train(compose([*BASE, "trainer.ckpt_every_n_steps=2"], run_dir=tmp_path))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["step0000002.ckpt"]
    state = torch.load(tmp_path / "checkpoints" / "step0000002.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    res = train(compose([*BASE[:-1], "trainer.ckpt_every_n_steps=2", "ckpt_path=last"], run_dir=tmp_path))
    assert res["global_step"] == 8 and math.isfinite(res["metrics"]["train/loss"])


def test_max_skipped_steps_then_stops(tmp_path, demo_data):
    with pytest.raises(FloatingPointError, match=r"0 updates were skipped already \(trainer.max_skipped_steps=0\)"):
        train(compose([*BASE, "trainer.on_nonfinite=skip", "trainer.max_skipped_steps=0", "trainer.ckpt_every_n_steps=0"], run_dir=tmp_path))
    with pytest.raises(ValueError, match="on_nonfinite=ignore: choose stop or skip"):
        train(compose([*BASE, "trainer.on_nonfinite=ignore"], run_dir=tmp_path))
