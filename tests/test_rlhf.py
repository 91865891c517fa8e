"""Stage 3 end to end on the tiny model (stage 1 -> SFT fixture): the reward model ranks held-out
pairs above chance and its export is transformers' sequence classifier; DPO starts at ln 2 and
moves the policy the way its pairs say; PPO raises a rule-based reward while the KL to the
reference stays bounded; LoRA-as-reference and a separate critic; bad configurations refuse."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from llm.train import train

from conftest import compose

pytestmark = pytest.mark.tier("integration")

FAST = ["trainer.progress_bar=false", "trainer.log_every_n_steps=1", "trainer.ckpt_every_n_steps=0"]


def _run(run_dir, args):
    return train(compose([*FAST, *args], run_dir=run_dir))


@pytest.fixture(scope="session")
def sft_export(sft_run):
    return sft_run[1]["export"]


# ------------------------------------------------------------------ reward model
@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, sft_export):
    run = tmp_path_factory.mktemp("rm")
    return _run(
        run,
        [
            "stage=rm",
            "model=hf",
            f"model.pretrained={sft_export}",
            "data=pref_demo",
            "data.seq_len=128",
            "data.val_batches=null",
            "trainer.max_steps=60",
            "trainer.val_every_n_steps=60",
            "stage.optim.lr=1e-3",
        ],
    )


def test_reward_model_ranks_held_out_pairs(rm_run):
    before, after = rm_run["before"], rm_run["metrics"]
    assert abs(before["val/accuracy"] - 0.5) < 0.2  # an untrained head: about chance
    assert after["val/accuracy"] >= 0.75, after  # held-out prompts: real answers over scrambled ones
    assert after["val/loss"] < before["val/loss"]
    report = json.loads(open(os.path.join(rm_run["run_dir"], "preference_data_report.json")).read())
    assert report["train"]["pairs"] > 700 and report["val"]["pairs"] > 50


def test_reward_export_is_a_sequence_classifier_reading_the_last_real_token(rm_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llm.data.preference import encode_answer, pad_batch
    from llm.stages.reward import reward_scores

    exp = rm_run["export"]
    model = AutoModelForSequenceClassification.from_pretrained(exp).eval()
    tok = AutoTokenizer.from_pretrained(exp)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    prompt = [{"role": "user", "content": "What is the Python module `json` for?"}]
    seqs = [
        encode_answer(tok, prompt, a, 256).ids
        for a in ("Encode and decode JSON.", "It is a module for reading and writing JSON documents in Python programs.", "No.")
    ]
    right, rmask = pad_batch(seqs, tok.pad_token_id, 64, "right")
    left, lmask = pad_batch(seqs, tok.pad_token_id, 64, "left")
    with torch.no_grad():
        ours_r = reward_scores(model, right, rmask)
        ours_l = reward_scores(model, left, lmask)
        hf = model(input_ids=right, attention_mask=rmask).logits.squeeze(-1)
        alone = torch.stack([model(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])
    torch.testing.assert_close(ours_r, alone, atol=1e-4, rtol=1e-4)  # padding changes nothing
    torch.testing.assert_close(ours_l, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hf, alone, atol=1e-4, rtol=1e-4)  # transformers' own forward agrees


def test_reward_model_refuses_lora_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="stage=rm trains the whole reward model"):
        _run(tmp_path, ["stage=rm", "model=hf", "model.pretrained=/nonexistent", "data=pref_demo", "stage.lora.enabled=true"])
    with pytest.raises(ValueError, match="stage=rm starts from a fine-tuned model"):
        _run(tmp_path, ["stage=rm", "data=pref_demo", "stage.random_init=true"])


# ----------------------------------------------------------------------------- DPO
def _short_pairs(path, n=400):
    """Pairs from the rule "short answers are better": the first sentence of the real answer
    (chosen) against the whole answer (rejected)."""
    from llm.data.chat import builtin_python_qa

    rows = []
    for r in builtin_python_qa():
        first = r["output"].split(". ")[0].rstrip(".") + "."
        if len(r["output"]) > 2 * len(first) and len(first) < 60:
            rows.append({"prompt": r["instruction"], "chosen": first, "rejected": r["output"]})
    path.write_text("".join(json.dumps(x) + "\n" for x in rows[:n]))
    return str(path)


def test_dpo_starts_at_ln2_and_prefers_short_answers(tmp_path, sft_export):
    pairs = _short_pairs(tmp_path / "short.jsonl")
    res = _run(
        tmp_path / "run",
        [
            "stage=dpo",
            "model=hf",
            f"model.pretrained={sft_export}",
            f"data.sources=[{pairs}]",
            "data.datasets=[]",
            "data.seq_len=128",
            "data.val_fraction=0.1",
            "data=pref_demo",
            "data.val_batches=null",
            "trainer.max_steps=40",
            "trainer.val_every_n_steps=40",
            "stage.optim.lr=2e-4",
            "stage.dpo.beta=0.1",
        ],
    )
    assert res["before"]["val/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert res["before"]["val/reward_accuracy"] == 0.5  # every reward is 0: ties count half, not as misses
    assert res["metrics"]["val/loss"] < 0.6 and res["metrics"]["val/reward_accuracy"] > 0.8
    # and the policy moves the way PPO's rule reward pushes it: shorter answers to held-out questions
    before, after = _mean_rule_reward(sft_export, 20), _mean_rule_reward(res["export"], 20)
    print(f"DPO: mean `short` reward of greedy answers {before:.3f} -> {after:.3f}")
    assert after > before + 0.1, (before, after)


def _mean_rule_reward(model_dir, max_chars, n=16):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.data.chat import builtin_python_qa
    from llm.model.engine import generate_text
    from llm.rl.rewards import short

    questions = [r["instruction"] for r in builtin_python_qa()[-n:]]
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = generate_text(AutoModelForCausalLM.from_pretrained(model_dir), tok, questions, 32, chat=True)
    return sum(short(questions, texts, max_chars=max_chars)) / n


def test_dpo_precomputed_reference_with_lora(tmp_path, sft_export):
    """No reference model in memory: its log-probs are computed once and kept in checkpoints."""
    pairs = _short_pairs(tmp_path / "short.jsonl", n=120)
    res = _run(
        tmp_path / "run",
        [
            "stage=dpo",
            "model=hf",
            f"model.pretrained={sft_export}",
            f"data.sources=[{pairs}]",
            "data.datasets=[]",
            "data=pref_demo",
            "data.seq_len=128",
            "data.val_batches=null",
            "stage.dpo.precompute_ref=true",
            "stage.lora.enabled=true",
            "stage.optim.lr=1e-3",
            "trainer.max_steps=6",
            "trainer.val_every_n_steps=6",
            "trainer.ckpt_every_n_steps=6",
            "logger.wandb=true",
        ],
    )
    module = res["module"]
    assert module._ref == [] and set(module.ref_logps) == {"train", "val"}
    assert res["before"]["val/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert res["metrics"]["val/loss"] < math.log(2)
    ckpt = torch.load(os.path.join(res["run_dir"], "checkpoints", "step0000006.ckpt"), weights_only=True)
    torch.testing.assert_close(ckpt["dpo_ref_logps"]["train"], module.ref_logps["train"])
    assert os.path.isdir(os.path.join(res["adapter"]))
    runs = [d for d in os.listdir(os.path.join(res["run_dir"], "wandb")) if d.startswith("offline-run")]
    assert runs  # W&B (offline here) got the run


# ----------------------------------------------------------------------------- PPO
PPO = [
    "stage=ppo",
    "model=hf",
    "data=prompts_demo",
    "data.micro_batch_size=16",
    "data.val_batches=2",
    "stage.ppo.max_new_tokens=24",
    "stage.sample_prompts=[]",
]


def _metric_rows(run_dir, key):
    import csv

    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_ppo_raises_a_rule_based_reward_with_bounded_kl(tmp_path, sft_export):
    res = _run(
        tmp_path,
        [
            *PPO,
            f"model.pretrained={sft_export}",
            "stage.reward.function=short",
            "+stage.reward.kwargs={max_chars: 20}",
            "trainer.max_steps=24",
            "trainer.val_every_n_steps=24",
            "stage.optim.lr=1e-4",
        ],
    )
    before, after = res["before"]["val/reward"], res["metrics"]["val/reward"]
    scores = _metric_rows(res["run_dir"], "ppo/score")
    kls = _metric_rows(res["run_dir"], "ppo/kl")
    assert len(scores) == 24
    first, last = sum(scores[:4]) / 4, sum(scores[-4:]) / 4
    assert last > first + 0.2, (first, last)  # sampled responses: reward rises
    assert after > before + 0.1, (before, after)  # held-out prompts, greedy: reward rises
    assert max(kls) < 10.0, kls  # the KL penalty holds the policy near the SFT model
    lengths = _metric_rows(res["run_dir"], "ppo/response_length")
    assert sum(lengths[-4:]) < sum(lengths[:4])
    samples = [json.loads(line) for line in open(os.path.join(res["run_dir"], "samples.jsonl"))]
    assert samples and {"iteration", "prompt", "response", "score"} <= set(samples[0])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(res["export"])  # the policy is a plain HF export


def test_ppo_with_reward_model_lora_reference_and_separate_critic(tmp_path, sft_export, rm_run):
    from safetensors.torch import load_file

    # LoRA policy: the reference is the same model with its adapters disabled; a separate critic
    # started from the reward model; the reward from that reward model
    res = _run(
        tmp_path,
        [
            *PPO,
            f"model.pretrained={sft_export}",
            f"stage.reward.model={rm_run['export']}",
            "stage.lora.enabled=true",
            "stage.ppo.critic=separate",
            "trainer.max_steps=3",
            "trainer.val_every_n_steps=100",
            "stage.optim.lr=1e-3",
            "stage.ppo.log_samples_every=1",
            "logger.wandb=true",
        ],
    )
    assert res["global_step"] == 3
    module = res["module"]
    assert "ref" not in module._frozen and module.critic is not None and module.value_head is None
    kls = _metric_rows(res["run_dir"], "ppo/kl")
    assert kls[0] == pytest.approx(0.0, abs=1e-4) and kls[-1] > 0  # the policy moves away from its reference
    merged = load_file(os.path.join(res["export"], "model.safetensors"))
    base = load_file(os.path.join(sft_export, "model.safetensors"))
    assert any(not torch.equal(merged[k], base[k]) for k in base if k in merged)
    assert len(module.iteration_samples) == 3 * 4  # a table row per sample, every iteration
    assert [d for d in os.listdir(os.path.join(res["run_dir"], "wandb")) if d.startswith("offline-run")]


def test_ppo_resume_matches_uninterrupted(tmp_path, sft_export):
    args = [
        *PPO,
        f"model.pretrained={sft_export}",
        "stage.reward.function=short",
        "trainer.val_every_n_steps=100",
        "trainer.max_steps=4",
        "stage.optim.lr=1e-4",
        "stage.ppo.adaptive_kl=true",
        "data.micro_batch_size=8",
    ]
    full = train(compose([*args, "trainer.ckpt_every_n_steps=2", "trainer.progress_bar=false"], run_dir=tmp_path / "full"))
    ckpt = tmp_path / "full" / "checkpoints" / "step0000002.ckpt"
    assert ckpt.exists()
    resumed = train(
        compose([*args, "trainer.ckpt_every_n_steps=2", "trainer.progress_bar=false", f"ckpt_path={ckpt}"], run_dir=tmp_path / "resumed")
    )
    a, b = full["module"], resumed["module"]
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)
    torch.testing.assert_close(a.value_head.summary.weight, b.value_head.summary.weight)
    assert a.kl_ctl.value == pytest.approx(b.kl_ctl.value)


def test_ppo_needs_a_reward(tmp_path, sft_export):
    with pytest.raises(ValueError, match="stage=ppo needs a reward"):
        _run(tmp_path, [*PPO, f"model.pretrained={sft_export}", "trainer.max_steps=1"])


# ------------------------------------------------------------------ the real checkpoint
def _faq_preferences(rows, path, lang, seed=0):
    """Known better answers from real data: each human FAQ answer (chosen) against the same
    answer scrambled (rejected): its words shuffled, or its characters for Chinese."""
    import random

    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            units = r["answer"].split() if lang == "en" else list(r["answer"].replace(" ", ""))
            random.Random(f"{seed}:{i}").shuffle(units)
            rejected = (" " if lang == "en" else "").join(units)
            if rejected != r["answer"]:
                f.write(json.dumps({"prompt": r["question"], "chosen": r["answer"], "rejected": rejected}, ensure_ascii=False) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_reward_model_on_smollm2_ranks_held_out_faq_answers(tmp_path):
    """SmolLM2-135M-Instruct as the backbone, the English and Chinese Debian FAQ as preference
    pairs (the human answer over the same answer scrambled), held-out questions."""
    from fixtures import debian_faq_pairs, faq_split, require_faq, require_smollm2

    gguf = require_smollm2()
    require_faq()
    train_files, held_files = [], []
    for lang in ("en", "zh"):
        tr, he = faq_split(debian_faq_pairs(lang), holdout=0.2, seed=0)
        train_files.append(_faq_preferences(tr, tmp_path / f"train-{lang}.jsonl", lang))
        held_files.append(_faq_preferences(he, tmp_path / f"held-{lang}.jsonl", lang))
    res = train(
        compose(
            [
                "stage=rm",
                "model=hf",
                f"model.pretrained={gguf}",
                "data=pref_demo",
                "data.datasets=[]",
                f"data.sources=[{','.join(map(str, train_files))}]",
                f"data.val_datasets=[{{path: {held_files[0]}}},{{path: {held_files[1]}}}]",
                "data.seq_len=128",
                "data.micro_batch_size=4",
                "data.val_batches=null",
                "data.on_truncated=skip",
                "trainer.max_steps=12",
                "trainer.val_every_n_steps=12",
                "stage.optim.lr=3e-5",
                "stage.optim.warmup_steps=2",
                *FAST,
            ],
            run_dir=tmp_path / "run",
        )
    )
    before, after = res["before"]["val/accuracy"], res["metrics"]["val/accuracy"]
    print(f"SmolLM2 reward model, held-out FAQ pairs: accuracy {before:.3f} -> {after:.3f}")
    assert after >= 0.85 and after > before + 0.05, (before, after)  # measured: 0.772 -> 0.895


@pytest.mark.slow
def test_ppo_under_ddp_keeps_ranks_in_sync(tmp_path, sft_export):
    """Two processes: PPO runs several backward passes per step, outside DDP's one sync per
    forward, and averages gradients itself; the stage checks at the end that every rank holds
    the same weights (without the averaging they diverge: measured, then fixed)."""
    import subprocess
    import sys

    from conftest import ROOT

    cmd = [
        sys.executable,
        "-m",
        "llm.train",
        *PPO,
        f"model.pretrained={sft_export}",
        "data.micro_batch_size=4",
        "stage.ppo.minibatch_size=2",
        "stage.reward.function=short",
        "trainer.max_steps=2",
        "trainer.val_every_n_steps=100",
        "strategy=ddp",
        "strategy.devices=2",
        *FAST,
        f"run_dir={tmp_path}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "export: " in out.stdout
    assert len(_metric_rows(tmp_path, "ppo/score")) == 2
