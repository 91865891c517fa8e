"""stage=grpo end to end on the tiny model (the stage 1 -> SFT fixture that tests/test_rlhf.py's PPO
starts from): a run on verifiable built-in tasks logs every reward component, accuracy, dropped
groups, clip fractions and the KL; each estimator runs with the loss options it is paired with;
a LoRA policy is its own reference (no second copy) and kl=off keeps none; a resumed run matches
an uninterrupted one; a rule reward rises; refusals happen at start."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from llm.train import train

from conftest import compose

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
    "export=false",
]

SHORT = ["stage.reward.function=short", "+stage.reward.kwargs={max_chars: 20}"]  # rule reward: answers of at most 20 characters


@pytest.fixture(scope="session")
def sft_export(sft_run):
    return sft_run[1]["export"]


def _cfg(run_dir, args):
    return compose([*FAST, *GRPO, *args], run_dir=run_dir)


def _train(run_dir, start, args):
    return train(_cfg(run_dir, [f"model.pretrained={start}", *args]))


def _rows(run_dir, key=None):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    rows = [r for r in rows if "grpo/reward" in r]
    return [r[key] for r in rows] if key else rows


def _changed(module, start):
    from safetensors.torch import load_file

    base = load_file(os.path.join(start, "model.safetensors"))
    own = {n.removeprefix("model."): p for n, p in module.model.named_parameters()}
    return any(not torch.equal(own[k].detach().cpu(), base[k]) for k in base if k in own)


@pytest.mark.tier("integration")
def test_grpo_on_tasks_logs_each_reward_component_accuracy_and_kl(tmp_path, sft_export):
    res = _train(
        tmp_path,
        sft_export,
        [
            "stage.grpo.format_weight=0.5",
            "stage.reward.function=short",
            "stage.reward.function_weight=2.0",
            "stage.grpo.dynamic_sampling=off",
            "trainer.max_steps=3",
            "trainer.val_every_n_steps=3",
            "stage.optim.lr=1e-3",
            "stage.grpo.log_samples_every=1",
        ],
    )
    assert res["global_step"] == 3
    rows = _rows(tmp_path)
    assert len(rows) == 3
    for r in rows:
        for k in ("grpo/accuracy", "grpo/dropped_groups", "grpo/response_length", "grpo/clip_frac", "grpo/kl", "grpo/entropy"):
            assert k in r, (k, sorted(r))
        # the reward is the weighted sum of its components, each logged on its own
        total = r["grpo/reward/correct"] + 0.5 * r["grpo/reward/format"] + 2.0 * r["grpo/reward/function"]
        assert r["grpo/reward"] == pytest.approx(total, abs=1e-5)
        assert r["grpo/accuracy"] == r["grpo/reward/correct"] and 0 <= r["grpo/accuracy"] <= 1
        assert r["grpo/dropped_groups"] == 0.0  # dynamic_sampling=off
    assert rows[0]["grpo/kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout is the reference's
    assert rows[-1]["grpo/kl"] > 0  # the policy moved away from it
    for m in (res["before"], res["metrics"]):  # held-out tasks, greedy: accuracy and reward
        assert 0 <= m["val/accuracy"] <= 1 and "val/reward" in m
    assert "ref" in res["module"]._frozen  # a full model: the reference is a frozen copy
    samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert len(samples) == 3 * 4 and samples[0]["prompt"].startswith("What is ")


@pytest.mark.tier("integration")
@pytest.mark.parametrize(
    "options",
    [
        ["stage.grpo.estimator=dr_grpo", "stage.grpo.loss_agg=dr_grpo", "stage.grpo.kl=reward", "stage.grpo.eps_high=0.28"],
        ["stage.grpo.estimator=rloo", "stage.grpo.gspo=true", "stage.grpo.loss_agg=sequence", "stage.grpo.minibatches=2"],
        ["stage.grpo.estimator=reinforce_pp", "stage.grpo.kl=off", "stage.grpo.overlong_cache=4", "stage.grpo.overlong_filter=true"],
    ],
    ids=["dr_grpo", "rloo-gspo", "reinforce_pp-dapo"],
)
def test_grpo_estimators_and_loss_options_train(tmp_path, sft_export, options):
    res = _train(
        tmp_path,
        sft_export,
        [
            *SHORT,
            "stage.grpo.dynamic_sampling=drop",
            "trainer.max_steps=2",
            "trainer.val_every_n_steps=100",
            "trainer.val_before_train=false",
            "stage.optim.lr=1e-3",
            *options,
        ],
    )
    rows = _rows(tmp_path)
    assert len(rows) == 2
    for r in rows:
        assert all(torch.isfinite(torch.tensor(v)) for v in r.values())
        most = 2 if "stage.grpo.minibatches=2" in options else 1  # a minibatch of dropped groups only makes no update
        assert (r["grpo/updates"] == 0) if r["grpo/dropped_groups"] == 1 else (1 <= r["grpo/updates"] <= most)
    assert ("grpo/kl" in rows[0]) == ("stage.grpo.kl=off" not in options)
    assert ("grpo/reward/overlong" in rows[0]) == ("stage.grpo.overlong_cache=4" in options)
    if "stage.grpo.kl=off" in options:
        assert res["module"]._frozen == {} and not res["module"].has_reference  # no reference, no copy
    if any(r["grpo/updates"] for r in rows):
        assert _changed(res["module"], sft_export)


@pytest.mark.tier("integration")
def test_grpo_resample_refills_uninformative_groups_with_new_prompts(tmp_path, sft_export):
    """dynamic_sampling=resample (DAPO): the same first batch as ``drop`` (same samples before the
    refill), but groups whose answers all scored alike are replaced by informative groups of new
    prompts, so fewer groups leave the loss; the rounds stay within max_resample_rounds."""
    args = [
        "data=prompts_demo",
        "data.micro_batch_size=4",
        *SHORT,
        "stage.grpo.max_new_tokens=24",
        "trainer.max_steps=3",
        "trainer.val_every_n_steps=100",
        "trainer.val_before_train=false",
    ]
    _train(tmp_path / "drop", sft_export, [*args, "stage.grpo.dynamic_sampling=drop"])
    _train(tmp_path / "refill", sft_export, [*args, "stage.grpo.dynamic_sampling=resample", "stage.grpo.max_resample_rounds=3"])
    drop, refill = _rows(tmp_path / "drop"), _rows(tmp_path / "refill")
    assert len(drop) == len(refill) == 3
    assert refill[0]["grpo/informative_before_refill"] == drop[0]["grpo/informative_before_refill"]
    for r in drop:
        assert r["grpo/dropped_groups"] == pytest.approx(1 - r["grpo/informative_before_refill"])
    for r in refill:
        assert 0 <= r["grpo/resample_rounds"] <= 3
        assert r["grpo/dropped_groups"] <= 1 - r["grpo/informative_before_refill"] + 1e-6
        assert (r["grpo/resample_rounds"] == 0) == (r["grpo/informative_before_refill"] == 1.0)
    assert any(r["grpo/dropped_groups"] < 1 - r["grpo/informative_before_refill"] - 1e-6 for r in refill), refill


@pytest.mark.tier("integration")
def test_grpo_lora_policy_is_its_own_reference(tmp_path, sft_export):
    res = _train(
        tmp_path,
        sft_export,
        [
            "stage.lora.enabled=true",
            *SHORT,
            "stage.grpo.dynamic_sampling=off",
            "trainer.max_steps=3",
            "trainer.val_every_n_steps=100",
            "trainer.val_before_train=false",
            "stage.optim.lr=1e-2",
        ],
    )
    module = res["module"]
    assert module.has_reference and "ref" not in module._frozen  # the adapters disabled: no second model
    kls = _rows(tmp_path, "grpo/kl")
    assert kls[0] == pytest.approx(0.0, abs=1e-5) and kls[-1] > 0


@pytest.mark.tier("integration")
def test_grpo_resume_matches_uninterrupted(tmp_path, sft_export):
    args = [
        f"model.pretrained={sft_export}",
        *SHORT,
        "trainer.val_every_n_steps=100",
        "trainer.val_before_train=false",
        "trainer.max_steps=4",
        "stage.optim.lr=1e-3",
        "trainer.ckpt_every_n_steps=2",
    ]
    full = train(_cfg(tmp_path / "full", args))
    ckpt = tmp_path / "full" / "checkpoints" / "step0000002.ckpt"
    assert ckpt.exists()
    resumed = train(_cfg(tmp_path / "resumed", [*args, f"ckpt_path={ckpt}"]))
    assert resumed["global_step"] == 4
    for (n, p), (_, q) in zip(full["module"].model.named_parameters(), resumed["module"].model.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)


@pytest.mark.tier("integration")
def test_grpo_raises_a_rule_reward(tmp_path, sft_export):
    """Plain prompts (PPO's), the rule "short answers": the mean sampled reward rises (measured on
    this configuration with seeds 1234, 7 and 99: +0.65, +0.58, +0.49 from the first 4 iterations
    to the last 4)."""
    res = _train(
        tmp_path,
        sft_export,
        [
            "data=prompts_demo",
            "data.micro_batch_size=4",
            *SHORT,
            "stage.grpo.max_new_tokens=24",
            "stage.grpo.kl_coef=0.0",
            "trainer.max_steps=16",
            "trainer.val_every_n_steps=16",
            "stage.optim.lr=3e-4",
        ],
    )
    rewards = _rows(tmp_path, "grpo/reward")
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    before, after = res["before"]["val/reward"], res["metrics"]["val/reward"]
    print(f"GRPO, rule reward `short`: sampled {first:.3f} -> {last:.3f}; greedy held-out {before:.3f} -> {after:.3f}")
    assert len(rewards) == 16
    assert last > first + 0.2, (first, last)


@pytest.mark.tier("integration")
def test_grpo_single_update_takes_the_sampling_logprobs_from_the_update(tmp_path, sft_export, monkeypatch):
    """One on-policy update per iteration (epochs = minibatches = 1, KL not in the reward): the
    sampling policy's log-probs are the update's own, detached, so an iteration runs two forward
    passes over its answers (reference, update) instead of three; the ratio is exactly 1. With
    two epochs they are taken first, as before (reference, sampling policy, two updates)."""
    from llm.stages.grpo import GRPOStage

    calls: list[int] = []
    original = GRPOStage.response_logprobs

    def counted(self, *a, **k):
        calls.append(self.global_step)
        return original(self, *a, **k)

    monkeypatch.setattr(GRPOStage, "response_logprobs", counted)
    args = [
        *SHORT,
        "stage.grpo.dynamic_sampling=off",
        "trainer.max_steps=2",
        "trainer.val_every_n_steps=100",
        "trainer.val_before_train=false",
        "stage.optim.lr=1e-3",
    ]
    _train(tmp_path / "one", sft_export, args)
    assert calls == [0, 0, 1, 1]
    rows = _rows(tmp_path / "one")
    assert [r["grpo/ratio_max"] for r in rows] == [1.0, 1.0] and [r["grpo/clip_frac"] for r in rows] == [0.0, 0.0]
    assert all(r["grpo/entropy"] > 0 and r["grpo/kl"] >= 0 for r in rows)  # from the update's forward pass
    calls.clear()
    _train(tmp_path / "two", sft_export, [*args, "stage.grpo.epochs=2"])
    assert calls == [0] * 4 + [1] * 4


def test_grpo_refuses_at_start_without_reward_or_with_impossible_settings(tmp_path):
    """Refused before any model or data is read (the model path does not exist). DeepSpeed is no
    longer refused: GRPO runs under ZeRO-1/2/3 (tests/test_strategies.py)."""
    base = ["model.pretrained=/nonexistent", "data=prompts_demo"]
    with pytest.raises(ValueError, match="stage=grpo needs a reward"):
        train(_cfg(tmp_path, base))
    with pytest.raises(ValueError, match="stage.grpo.minibatches=64: more than the 16 answers"):
        train(_cfg(tmp_path, [*base, "stage.reward.function=short", "stage.grpo.minibatches=64"]))
    with pytest.raises(ValueError, match="group_size=1: at least 2"):
        train(_cfg(tmp_path, [*base, "stage.reward.function=short", "stage.grpo.group_size=1"]))


def test_task_splits_from_a_builtin_generator_and_from_a_file(tmp_path):
    from llm.data.task_prompts import read_task_splits
    from llm.rl.tasks import Task, write_tasks

    cfg = compose(["data=tasks_demo", "data.tasks_size=30", "data.tasks_val_size=10"])
    train_tasks, val, report = read_task_splits(cfg)
    assert (len(train_tasks), len(val)) == (30, 10) and report["params"] == {"digits": 1}
    assert not {t.prompt for t in train_tasks} & {t.prompt for t in val}  # the generator's splits share no problem
    assert all(t.verifier == "number" and "\\boxed{}" in t.prompt for t in train_tasks)
    again, _, _ = read_task_splits(cfg)
    assert [t.prompt for t in again] == [t.prompt for t in train_tasks]  # from data.seed

    path = tmp_path / "tasks.jsonl"
    write_tasks(path, [Task(f"What is {i} + 1? Answer: <n>", "number", str(i + 1)) for i in range(20)])
    file_cfg = compose(["data=tasks_demo", f"data.tasks={path}", "data.val_fraction=0.25"])
    tr, va, _ = read_task_splits(file_cfg)
    assert (len(tr), len(va)) == (15, 5) and not {t.prompt for t in tr} & {t.prompt for t in va}
    write_tasks(tmp_path / "held.jsonl", [Task("What is 2 + 2?", "number", "4")])
    tr, va, _ = read_task_splits(compose(["data=tasks_demo", f"data.tasks={path}", f"data.val_tasks={tmp_path / 'held.jsonl'}"]))
    assert (len(tr), [t.answer for t in va]) == (20, ["4"])
    with pytest.raises(ValueError, match="data.tasks='nope.jsonl': no such file"):
        read_task_splits(compose(["data=tasks_demo", "data.tasks=nope.jsonl"]))


@pytest.mark.tier("integration")
def test_task_prompts_keep_their_task_when_long_prompts_are_left_out(sft_export):
    from transformers import AutoTokenizer

    from llm.data.chat import ensure_chat_template, render_text
    from llm.data.task_prompts import TaskDataModule
    from llm.rl.tasks import Task

    tok = AutoTokenizer.from_pretrained(sft_export)
    ensure_chat_template(tok)
    tasks = [Task(f"What is {i} + 1?", "number", str(i + 1)) for i in range(6)]
    tasks.insert(2, Task("What is " + " + ".join(["1"] * 200) + "?", "number", "200"))  # too long
    dm = TaskDataModule(tasks, tasks[:2], tok, max_prompt_tokens=64, batch_size=2)
    assert dm.counts["train"]["prompt_too_long"] == 1 and len(dm.tasks["train"]) == 6
    for i in range(6):
        assert dm.prompt_messages("train", i) == [{"role": "user", "content": dm.task("train", i).prompt}]
    batch = dm.collate_step("train", [3, 4])  # left-padded, rendered with the chat template and its generation prompt
    rendered = render_text(tok, [{"role": "user", "content": dm.task("train", 3).prompt}], add_generation_prompt=True)
    assert batch["prompt_ids"][0][batch["prompt_mask"][0] == 1].tolist() == tok(rendered, add_special_tokens=False).input_ids
    assert batch["prompt_mask"][:, -1].tolist() == [1, 1]


@pytest.mark.slow
def test_grpo_under_ddp_and_fsdp_raises_a_rule_reward_alike(tmp_path, sft_export):
    """Two processes, the rule "short answers" on plain prompts (2 prompts x 4 answers per rank and
    iteration). Under DDP the mean sampled reward rises and the ranks end with the same weights (the
    stage checks it at the end, :meth:`RolloutStage.on_train_end`: its gradient averaging keeps them
    in sync); FSDP (each decoder layer sharded, generation with synced ranks) gives the same rewards,
    policy losses and KL at every iteration and the same exported weights as DDP."""
    from test_strategies import same_run, same_weights, torchrun

    from conftest import FAST as COMMON

    args = [
        *COMMON,
        *FAST,
        *GRPO,
        f"model.pretrained={sft_export}",
        "data=prompts_demo",
        "data.micro_batch_size=2",
        *SHORT,
        "stage.grpo.max_new_tokens=24",
        "stage.grpo.kl_coef=0.0",
        "trainer.max_steps=16",
        "trainer.val_every_n_steps=16",
        "trainer.val_before_train=false",
        "stage.optim.lr=3e-4",
        "export=true",
    ]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(ddp, [*args, "strategy=ddp"])
    rewards = _rows(ddp, "grpo/reward")
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    print(f"GRPO under DDP (2 ranks), rule reward `short`: sampled {first:.3f} -> {last:.3f}")
    assert len(rewards) == 16 and last > first + 0.2, rewards
    torchrun(fsdp, [*args, "strategy=fsdp"])
    for key in ("grpo/reward", "grpo/pg_loss", "grpo/kl", "grpo/response_length"):
        same_run(ddp, fsdp, key, tol=1e-5)
    same_weights(ddp, fsdp)


@pytest.mark.slow
def test_grpo_resample_runs_in_step_on_two_ranks_and_fsdp_matches_ddp(tmp_path, sft_export):
    """dynamic_sampling=resample on 2 processes: a rank whose batch is full keeps sampling while the
    other is short (sharded generation is collective, so the rounds must match or FSDP would hang),
    and FSDP gives DDP's rewards, rounds and losses at every iteration."""
    from test_strategies import same_run, torchrun

    from conftest import FAST as COMMON

    args = [
        *COMMON,
        *FAST,
        *GRPO,
        f"model.pretrained={sft_export}",
        "data=prompts_demo",
        "data.micro_batch_size=2",
        *SHORT,
        "stage.grpo.max_new_tokens=24",
        "stage.grpo.dynamic_sampling=resample",
        "stage.grpo.max_resample_rounds=2",
        "trainer.max_steps=3",
        "trainer.val_every_n_steps=100",
        "trainer.val_before_train=false",
    ]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    torchrun(ddp, [*args, "strategy=ddp"], check=True)
    torchrun(fsdp, [*args, "strategy=fsdp"], check=True)
    rounds = _rows(ddp, "grpo/resample_rounds")
    assert len(rounds) == 3 and all(0 <= r <= 2 for r in rounds)
    for key in ("grpo/reward", "grpo/resample_rounds", "grpo/dropped_groups", "grpo/pg_loss"):
        same_run(ddp, fsdp, key, tol=1e-5)


MIN_GAIN, MAX_KL = 0.15, 1.5  # the demo's held-out accuracy gain and largest mean KL per token (seed 1: +0.62, 0.56; seed 2: +0.53, 1.12)
# CI runs seed 1 (about 6 minutes on 2 cores); XIULIAN_GRPO_DEMO_SEEDS=1,2 runs more
DEMO_SEEDS = [int(s) for s in os.environ.get("XIULIAN_GRPO_DEMO_SEEDS", "1").split(",")]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", DEMO_SEEDS)
def test_grpo_raises_smollm2_arithmetic_accuracy_with_bounded_kl(tmp_path, seed):
    """The learning demo (``launch/demo-grpo.sh``: ``stage=grpo_demo data=arith_demo``) from
    SmolLM2-135M-Instruct: held-out greedy accuracy and sampled pass@1 and pass@4 on one-digit
    arithmetic rise by a clear margin in 16 iterations while the KL to the starting model stays
    bounded (measured: greedy 0.156 -> 0.781 and mean per-token KL at most 0.56 for seed 1;
    0.156 -> 0.688 and 1.12 for seed 2)."""
    from fixtures import smollm2_dir

    model = smollm2_dir()
    res = train(
        compose(
            [
                *FAST,
                "stage=grpo_demo",
                "data=arith_demo",
                "data.micro_batch_size=4",  # the preset's, over conftest's FAST
                "data.val_batches=null",
                "model=hf",
                f"model.pretrained={model}",
                "trainer.max_steps=16",
                "trainer.val_every_n_steps=16",
                "eval=none",
                "export=false",
                f"seed={seed}",
            ],
            run_dir=tmp_path,
        )
    )
    before, after = res["before"], res["metrics"]
    kls = _rows(tmp_path, "grpo/kl")
    print(
        f"SmolLM2 GRPO, seed {seed}: held-out greedy accuracy {before['val/accuracy']:.3f} -> {after['val/accuracy']:.3f}, "
        f"pass@1 {before['val/pass@1']:.3f} -> {after['val/pass@1']:.3f}, pass@4 {before['val/pass@4']:.3f} -> "
        f"{after['val/pass@4']:.3f}; KL max {max(kls):.4f}"
    )
    assert after["val/accuracy"] >= before["val/accuracy"] + MIN_GAIN, (before, after)
    for k in ("val/pass@1", "val/pass@4"):
        assert after[k] >= before[k] + 0.1, (k, before, after)
    assert max(kls) < MAX_KL, kls
