"""Faults: a NaN/inf loss stops the run before the update (checkpoint intact, resumable) or skips
that update, per ``trainer.on_nonfinite``."""

from __future__ import annotations

import csv
import math
import os
import re

import pytest
import torch

from llm.train import train

from conftest import compose

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
    with pytest.raises(
        FloatingPointError, match=r"optimizer step 4 \(epoch 0, batch 3 of the epoch, rank 0 of 1\).*last checkpoint is intact"
    ):
        train(compose([*BASE, "trainer.ckpt_every_n_steps=2"], run_dir=tmp_path))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["step0000002.ckpt"]
    state = torch.load(tmp_path / "checkpoints" / "step0000002.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    res = train(compose([*BASE[:-1], "trainer.ckpt_every_n_steps=2", "ckpt_path=last"], run_dir=tmp_path))
    assert res["global_step"] == 8 and math.isfinite(res["metrics"]["train/loss"])


def test_max_skipped_steps_then_stops(tmp_path, demo_data):
    with pytest.raises(FloatingPointError, match=r"0 updates were skipped already \(trainer.max_skipped_steps=0\)"):
        train(
            compose([*BASE, "trainer.on_nonfinite=skip", "trainer.max_skipped_steps=0", "trainer.ckpt_every_n_steps=0"], run_dir=tmp_path)
        )


def test_write_error_during_checkpoint_keeps_previous(tmp_path, demo_data, monkeypatch):
    """After the first checkpoint the process may write files of at most 64 KiB (RLIMIT_FSIZE, as
    a full disk would stop it): the second checkpoint's write fails part-way. The first stays
    loadable, no partial file is left under a checkpoint's name, and ``ckpt_path=last`` resumes."""
    import resource
    import signal

    from llm.stages.base import BaseStage

    limit = 64 * 1024
    real_after = BaseStage.after_step
    old = resource.getrlimit(resource.RLIMIT_FSIZE)

    def after_step(self):
        real_after(self)
        if self.global_step == 3:  # between the checkpoints of steps 2 and 4
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))

    monkeypatch.setattr(BaseStage, "after_step", after_step)
    prev = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    cfg = ["trainer.max_steps=6", "trainer.val_every_n_steps=1000", "eval=none", "export=false", "trainer.ckpt_every_n_steps=2"]
    try:
        with pytest.raises(OSError) as err:  # torch's zip writer says "unexpected pos": the error names the cause
            train(compose(cfg, run_dir=tmp_path))
        assert str(err.value).startswith("[Errno 27] file size limit: could not write the checkpoint ")
        assert str(tmp_path / "checkpoints" / "step0000004.ckpt") in str(err.value)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, prev)
    monkeypatch.setattr(BaseStage, "after_step", real_after)
    first = tmp_path / "checkpoints" / "step0000002.ckpt"
    assert first.stat().st_size > limit  # so the second one could not be written whole
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["step0000002.ckpt"]  # no truncated step0000004.ckpt, no .tmp left behind
    state = torch.load(first, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    res = train(compose([*cfg, "ckpt_path=last"], run_dir=tmp_path))
    assert res["global_step"] == 6


def test_full_disk_is_named_and_keeps_previous(tmp_path, demo_data):
    """A real full disk: the checkpoints folder is a tmpfs with room for one checkpoint and a bit.
    The second write fails with ENOSPC named as "disk full" and the file; the first stays whole."""
    import errno
    import subprocess

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=36m", "tmpfs", str(ckpts)], capture_output=True).returncode != 0
    ):
        pytest.skip("needs root and tmpfs (mount -t tmpfs) to make a small full disk")
    cfg = ["trainer.max_steps=6", "trainer.val_every_n_steps=1000", "eval=none", "export=false", "trainer.ckpt_every_n_steps=2"]
    try:
        with pytest.raises(OSError) as err:
            train(compose(cfg, run_dir=tmp_path))
        assert err.value.errno == errno.ENOSPC and "disk full: could not write the checkpoint " in str(err.value)
        assert "step0000004.ckpt" in str(err.value) or "step0000006.ckpt" in str(err.value)
        kept = sorted(p.name for p in ckpts.iterdir())
        assert kept and not any(n.endswith(".tmp") for n in kept)  # whole checkpoints only
        state = torch.load(ckpts / kept[-1], map_location="cpu", weights_only=True)
        assert state["global_step"] == int(kept[-1][4:11])
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], capture_output=True)


def _children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _env(pid: int) -> dict:
    try:
        raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return {}
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


@pytest.mark.slow
def test_kill_9_of_one_rank_fails_fast_names_it_and_resumes(tmp_path, demo_data):
    """Under torchrun (launch/torchrun.sh, slurm/stage.sh) SIGKILL of rank 1 ends the whole job in
    seconds, not after a collective timeout, and the error names the rank; the run resumes."""
    import signal
    import subprocess
    import time

    from conftest import FAST, ROOT

    args = [*FAST, "eval=none", "trainer.val_every_n_steps=1000", "trainer.ckpt_every_n_steps=10", f"run_dir={tmp_path}"]
    cmd = ["bash", str(ROOT / "launch" / "torchrun.sh"), "2", "trainer.max_steps=100000", *args]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        t0 = time.time()
        while not (tmp_path / "checkpoints" / "step0000020.ckpt").is_file():
            assert p.poll() is None and time.time() - t0 < 300, "the run did not reach step 20"
            time.sleep(0.5)
        workers = _children(p.pid) + [g for c in _children(p.pid) for g in _children(c)]  # torchrun's children (and theirs)
        rank1 = [w for w in workers if _env(w).get("RANK") == "1" and _env(w).get("LOCAL_RANK") == "1"]
        assert rank1, "rank 1 not found"
        killed = time.time()
        os.kill(rank1[0], signal.SIGKILL)
        out, _ = p.communicate(timeout=120)
        took = time.time() - killed
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0
    assert took < 60, f"the job took {took:.0f} s to fail"
    root = out[out.find("Root Cause") :]  # torchrun's summary: the first failure, with its rank
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)", root) and re.search(r"exitcode\s*: -9", root), out[-3000:]
    r = subprocess.run(
        ["bash", str(ROOT / "launch" / "torchrun.sh"), "2", "trainer.max_steps=30", "ckpt_path=last", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr + r.stdout
