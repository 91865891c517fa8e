"""Stage 1 end to end on real text (CPython's documentation): learning, export, resume."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm.train import train

from conftest import FAST, ROOT, compose


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def series(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def test_overfit_one_batch(tmp_path, demo_data):
    cfg = compose(["debug=overfit", "data.micro_batch_size=4", "trainer.max_steps=150"], run_dir=tmp_path)
    result = train(cfg)
    loss = series(read_metrics(tmp_path), "train/loss")
    assert loss[min(loss)] > 5.0  # starts near ln(vocab)
    assert result["metrics"]["train/loss"] < 0.1, result["metrics"]


def test_validation_loss_falls_and_export_matches(tmp_path, demo_data):
    cfg = compose(
        [
            "trainer.max_steps=120",
            "trainer.val_every_n_steps=10",
            "trainer.ckpt_every_n_steps=60",
            "stage.optim.warmup_steps=10",
            "data.micro_batch_size=16",
        ],
        run_dir=tmp_path,
    )
    result = train(cfg)
    val = series(read_metrics(tmp_path), "val/loss")
    steps = sorted(val)
    assert len(steps) >= 3, val
    assert val[steps[-1]] < val[steps[0]] - 0.2, val
    assert val[steps[-1]] < math.log(1024) - 0.7, val
    ppl = series(read_metrics(tmp_path), "val/ppl")
    assert abs(ppl[steps[-1]] - math.exp(val[steps[-1]])) / ppl[steps[-1]] < 1e-4

    # the export is a plain Hugging Face directory that gives the module's logits
    export = Path(result["export"])
    assert export == tmp_path / "export"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (export / name).is_file(), name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    module_model = result["module"].model.eval()
    ids = tok("A list is a mutable sequence of items.", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = hf(ids).logits, module_model(ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # checkpoints were written at the interval
    assert (tmp_path / "checkpoints" / "step0000060.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "step0000120.ckpt").is_file()

    # the generate CLI continues a prompt from the export (greedy = deterministic)
    out = [
        subprocess.run(
            [sys.executable, "-m", "llm.generate", str(export), "The ", "--max-new-tokens", "12"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        for _ in range(2)
    ]
    assert out[0].returncode == 0, out[0].stderr
    assert out[0].stdout.startswith("The ") and len(out[0].stdout.strip()) > len("The")
    assert out[0].stdout == out[1].stdout


def _train_cmd(run_dir: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "llm.train", *FAST, f"hydra.run.dir={run_dir}", *extra]


RESUME_ARGS = [
    "trainer.max_steps=24",
    "trainer.ckpt_every_n_steps=8",
    "trainer.val_every_n_steps=1000",
    "data.num_workers=2",
    "data.shuffle_block=2",
    "stage.optim.warmup_steps=4",
    "model.dropout=0.1",  # RNG state matters: dropout draws from it
    "export=false",
]


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(tmp_path, demo_data):
    """Kill -9 after step 11 (checkpoint at step 8, steps 9-11 are lost and redone), resume with
    ckpt_path=last, and reach the same loss at step 24 as a run that was never interrupted.
    Tolerance: 1e-6 relative (CPU, same threads: in practice bit-identical)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.run(_train_cmd(ref_dir, RESUME_ARGS), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed = subprocess.run(
        _train_cmd(run_dir, [*RESUME_ARGS, "trainer.crash_at_step=11"]), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["step0000008.ckpt"], ckpts

    resumed = subprocess.run(
        _train_cmd(run_dir, [*RESUME_ARGS, "ckpt_path=last"]), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = series(read_metrics(ref_dir), "train/loss")
    rows = read_metrics(run_dir)
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == sorted(set(steps)) == list(range(24)), steps  # rows of redone steps were replaced
    b = series(rows, "train/loss")
    for step in (12, 16, 20, 23):
        assert abs(a[step] - b[step]) <= 1e-6 * abs(a[step]), (step, a[step], b[step])
    # and the weights agree
    sa = torch.load(ref_dir / "checkpoints" / "step0000024.ckpt", weights_only=True)["state_dict"]
    sb = torch.load(run_dir / "checkpoints" / "step0000024.ckpt", weights_only=True)["state_dict"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_ckpt_path_last_without_checkpoint_starts_fresh(tmp_path):
    from llm.rundir import find_checkpoint

    assert find_checkpoint("last", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        find_checkpoint(str(tmp_path / "nope.ckpt"), tmp_path)


@pytest.mark.slow
def test_ddp_two_processes_lightning_launcher(tmp_path, demo_data):
    run_dir = tmp_path / "ddp"
    r = subprocess.run(
        _train_cmd(
            run_dir,
            ["strategy=ddp", "strategy.devices=2", "trainer.max_steps=30", "trainer.val_every_n_steps=15", "trainer.ckpt_every_n_steps=15"],
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"export: {run_dir / 'export'}" in r.stdout.strip().splitlines()[-1]
    val = series(read_metrics(run_dir), "val/loss")
    assert val[max(val)] < val[min(val)], val
    loss = series(read_metrics(run_dir), "train/loss")
    assert max(loss) == 29


@pytest.mark.slow
def test_ddp_two_processes_torchrun(tmp_path, demo_data):
    run_dir = tmp_path / "torchrun"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "llm.train",
        *FAST,
        "strategy=ddp",
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=20",
        "trainer.val_every_n_steps=10",
        "stage.grad_accum=2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.strip().splitlines()[-1] == f"export: {run_dir / 'export'}"
    loss = series(read_metrics(run_dir), "train/loss")
    assert loss[max(loss)] < loss[min(loss)] - 0.5, loss


def test_grad_accumulation_equals_larger_batch(tmp_path, demo_data):
    """2 micro-batches of 4 per step give the same training run as 1 batch of 8: the loss is
    normalised by the real tokens of the whole step, not averaged per micro-batch."""
    common = ["trainer.max_steps=8", "trainer.val_every_n_steps=1000", "trainer.ckpt_every_n_steps=0", "export=false"]
    train(compose([*common, "data.micro_batch_size=8", "stage.grad_accum=1"], run_dir=tmp_path / "a"))
    train(compose([*common, "data.micro_batch_size=4", "stage.grad_accum=2"], run_dir=tmp_path / "b"))
    a = series(read_metrics(tmp_path / "a"), "train/loss")
    b = series(read_metrics(tmp_path / "b"), "train/loss")
    assert sorted(a) == sorted(b) and len(a) == 8
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4 * abs(a[step]), (step, a[step], b[step])
    assert a[max(a)] < a[min(a)]


def test_wandb_offline_without_key(tmp_path, demo_data, monkeypatch):
    """logger=wandb with no API key: a full offline run directory, no connection, no hang."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose(
        [
            "logger=wandb",
            "trainer.max_steps=3",
            "trainer.val_every_n_steps=1000",
            "trainer.ckpt_every_n_steps=0",
            "export=false",
            "stage.sample_every_n_steps=2",
            "stage.sample_prompts=[The ,def ]",
            "stage.sample_max_new_tokens=5",
        ],
        run_dir=tmp_path,
    )
    t0 = time.time()
    train(cfg)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    assert any(runs[0].glob("run-*.wandb"))
    assert (tmp_path / "metrics.csv").is_file()  # CSV is always written
    samples = (tmp_path / "samples.txt").read_text().splitlines()  # continuations sampled at step 2
    assert [line.split("]")[0] for line in samples] == ["[step 2", "[step 2"], samples
    assert "mfu" in (tmp_path / "metrics.csv").read_text()
    assert time.time() - t0 < 120


def test_corrupt_shard_stops_training_with_its_name(tmp_path, demo_data):
    from llm.data.prepare import prepare_data
    from llm.data.shards import PackedTokenStream, ShardError, load_manifest

    tok, shards = demo_data
    out = prepare_data(
        ["builtin:python-docs"],
        tmp_path / "prep",
        tokenizer=str(shards.parent / "tokenizer"),
        shard_max_tokens=40000,
        val_fraction=0.03,
        seed=1234,
    )
    bad = out / "shards"
    names = [s["name"] for s in load_manifest(bad)["splits"]["train"]]
    assert len(names) >= 4, names
    # the second shard the first epoch reads (data.seed=1234, as in the config)
    victim = bad / PackedTokenStream(bad, "train", 64, 8, seed=1234).shard_order[1]
    data = bytearray(victim.read_bytes())
    data[512 * 3 : 512 * 4] = b"\xff" * 512  # a tar header past the first sample: same size, broken
    victim.write_bytes(bytes(data))
    common = [
        "data=shards",
        f"data.shards={bad}",
        "trainer.max_steps=30",
        "trainer.val_every_n_steps=1000",
        "trainer.ckpt_every_n_steps=0",
        "export=false",
        *FAST,
        "data.shuffle_block=1",
    ]
    with pytest.raises(ShardError, match=victim.name):
        train(compose([*common, "trainer.max_steps=200"], run_dir=tmp_path / "strict"))
    # with skip_corrupt the bad shard is excluded, training completes, the skip is reported
    result = train(compose([*common, "data.skip_corrupt=true"], run_dir=tmp_path / "skip"))
    assert result["global_step"] == 30
    skipped = series(read_metrics(tmp_path / "skip"), "data/skipped_shards")
    assert list(skipped.values()) == [1.0]
