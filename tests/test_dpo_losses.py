"""stage=dpo with each preference loss (stage.dpo.loss) on the tiny SFT fixture and the pairs of
the rule "short answers are better": the held-out loss falls and the held-out preference
(accuracy and margin of the implicit rewards; KTO: desirable minus undesirable reward) rises.
cDPO and IPO start where their formulas say at the reference; SimPO builds no reference; KTO trains
on unpaired thumbs-up/down records (with precomputed reference log-probs)."""

from __future__ import annotations

import json
import math

import pytest

from llm.train import train

from conftest import compose

pytestmark = pytest.mark.tier("integration")

RUN = [
    "trainer.progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.ckpt_every_n_steps=0",
    "stage=dpo",
    "model=hf",
    "data=pref_demo",
    "data.datasets=[]",
    "data.seq_len=96",
    "data.val_fraction=0.15",
    "data.val_batches=null",
    "trainer.max_steps=12",
    "trainer.val_every_n_steps=12",
    "stage.optim.warmup_steps=0",
    "stage.sample_prompts=[]",
    "export=false",
]


@pytest.fixture(scope="module")
def short_pairs(tmp_path_factory):
    return write_short_pairs(tmp_path_factory.mktemp("pairs") / "short.jsonl")


def write_short_pairs(path):
    """Pairs from the rule "short answers are better": the first sentence of the real answer
    (chosen) against the whole answer (rejected)."""
    from llm.data.chat import builtin_python_qa

    rows = []
    for r in builtin_python_qa():
        first = r["output"].split(". ")[0].rstrip(".") + "."
        if len(r["output"]) > 2 * len(first) and len(first) < 60 and len(r["output"]) < 200:
            rows.append({"prompt": r["instruction"], "chosen": first, "rejected": r["output"]})
    rows = rows[:160]
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return str(path), rows


def _run(tmp_path, sft_run, source, *args, lr=1e-3):
    export = sft_run[1]["export"]
    over = [*RUN, f"model.pretrained={export}", f"data.sources=[{source}]", f"stage.optim.lr={lr}", *args]
    return train(compose(over, run_dir=tmp_path / "run"))


def _learned_pairs(res):
    before, after = res["before"], res["metrics"]
    print({k: (round(before.get(k, float("nan")), 4), round(v, 4)) for k, v in after.items() if k.startswith("val/")})
    assert after["val/loss"] < before["val/loss"] - 0.02, (before, after)
    assert after["val/reward_accuracy"] > before["val/reward_accuracy"] and after["val/reward_accuracy"] >= 0.9, (before, after)
    assert after["val/reward_margin"] > before["val/reward_margin"], (before, after)


def test_cdpo_label_smoothing(tmp_path, sft_run, short_pairs):
    res = _run(tmp_path, sft_run, short_pairs[0], "stage.dpo.label_smoothing=0.1")
    assert res["before"]["val/loss"] == pytest.approx(math.log(2), abs=1e-5)  # (1 - eps) ln 2 + eps ln 2
    assert len(res["module"]._ref) == 1  # the frozen reference
    _learned_pairs(res)


def test_ipo(tmp_path, sft_run, short_pairs):
    res = _run(tmp_path, sft_run, short_pairs[0], "stage.dpo.loss=ipo", "stage.dpo.beta=0.5", "stage.dpo.length_norm=true")
    assert res["before"]["val/loss"] == pytest.approx(1.0, abs=1e-4)  # (0 - 1 / (2 beta))^2 at the reference
    _learned_pairs(res)


def test_simpo_has_no_reference(tmp_path, sft_run, short_pairs):
    res = _run(tmp_path, sft_run, short_pairs[0], "stage.dpo.loss=simpo")
    module = res["module"]
    assert module._ref == [] and module.ref_logps == {}  # no frozen copy, no reference numbers
    assert module.pref["beta"] == 2.0 and module.pref["length_norm"] is True
    _learned_pairs(res)


def test_kto_on_unpaired_records(tmp_path, sft_run, short_pairs):
    rows = [
        {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"} for r in short_pairs[1] for side in ("chosen", "rejected")
    ]
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    # the reference's log-probs (of each answer and of each mismatched one) precomputed: no second model
    res = _run(tmp_path, sft_run, str(path), "stage.dpo.loss=kto", "stage.dpo.precompute_ref=true", lr=2e-4)
    before, after = res["before"], res["metrics"]
    print({k: (round(before.get(k, float("nan")), 4), round(v, 4)) for k, v in after.items() if k.startswith("val/")})
    assert before["val/loss"] == pytest.approx(0.5, abs=1e-5)  # 1 - sigmoid(0) for every example at the reference
    assert before["val/reward_margin"] == pytest.approx(0.0, abs=1e-6) and before["val/reference_point"] == pytest.approx(0.0, abs=1e-6)
    assert after["val/loss"] < before["val/loss"] - 0.02
    assert after["val/reward_margin"] > 0.1  # held-out: thumbs-up answers gained on thumbs-down ones
    assert after["val/desirable_reward"] > after["val/undesirable_reward"]
    module = res["module"]
    assert module._ref == [] and module.ref_logps["train"].shape[1] == 2  # each example: its answer, a mismatched one
    assert module.ref_logps["train"].shape[0] >= 2 * 30  # two examples per training pair
