"""stage=grpo end to end on the tiny model (stage 1 -> SFT fixture of tests/test_rlhf.py): a run of
a few iterations on verifiable built-in tasks logs every reward component, accuracy, dropped
groups, clip fractions and the KL; the estimators and loss options run; a LoRA policy is its own
reference (no second copy); a resumed run matches an uninterrupted one; a rule reward rises."""

from __future__ import annotations

import csv
import os

import pytest

from llm.train import train

from conftest import compose

pytestmark = pytest.mark.tier("integration")

FAST = ["trainer.progress_bar=false", "trainer.log_every_n_steps=1", "trainer.ckpt_every_n_steps=0"]
GRPO = [
    "stage=grpo",
    "model=hf",
    "data=tasks_demo",
    "data.micro_batch_size=4",
    "data.tasks_size=64",
    "data.tasks_val_size=8",
    "data.val_batches=2",
    "stage.grpo.group_size=4",
    "stage.grpo.max_new_tokens=12",
    "stage.sample_prompts=[]",
    "eval=none",
]


@pytest.fixture(scope="session")
def sft_export(sft_run):
    return sft_run[1]["export"]


def _run(run_dir, args):
    return train(compose([*FAST, *GRPO, *args], run_dir=run_dir))


def _rows(run_dir, key):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_grpo_on_tasks_logs_components_accuracy_and_kl(tmp_path, sft_export):
    res = _run(
        tmp_path,
        [
            f"model.pretrained={sft_export}",
            "stage.grpo.format_weight=0.5",
            "stage.reward.function=short",
            "stage.grpo.dynamic_sampling=off",
            "trainer.max_steps=3",
            "trainer.val_every_n_steps=3",
            "stage.optim.lr=1e-3",
        ],
    )
    print(res["metrics"])
