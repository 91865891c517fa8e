"""Rollout tokens/s of ``stage=grpo`` under DeepSpeed ZeRO-3 against DDP, on the same model,
prompts and answer lengths:
``python -m llm.bench.rollout_zero [--model tiny] [--nproc 2] [--repeats 2] [--markdown BENCHMARKS.md]``.

Three sides, each a real GRPO run under ``torchrun`` (``--nproc`` CPU processes, gloo, one torch
thread each): ``ddp``; ``zero3``, generation with the policy's weights gathered once per rollout
(``stage.rollout.zero3_gather=true``, the default); ``zero3_per_token``, the engine's hooks
gathering each layer at every generated token (``zero3_gather=false``, ranks in step with
``synced_gpus``). Every answer is exactly ``--max-new-tokens`` long (``min_new_tokens`` set to it,
as in ``llm.bench.grpo``), so every side generates the same number of tokens. The figure is
rank 0's ``time/generate_tokens_per_s`` (its answer tokens over its generation time), the median
over the iterations after the first; the sides run interleaved (ABBA) ``--repeats`` times and
the medians over repeats are compared with DDP's.

On CPU processes the ranks share the machine's cores and other jobs may run meanwhile: the ratio
measures the cost of ZeRO-3's collectives and hooks during generation, not a cluster's network.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llm.bench.common import (
    ROOT,
    append_section,
    argument_parser,
    child_env,
    command_line,
    cpu_name,
    interleaved,
    loadavg,
    md_table,
    median,
    read_metrics,
    torchrun,
    utc_stamp,
    workspace,
)

SIDES = {
    "ddp": ["strategy=ddp"],
    "zero3": ["strategy=deepspeed_zero3", "stage.rollout.zero3_gather=true"],
    "zero3_per_token": ["strategy=deepspeed_zero3", "stage.rollout.zero3_gather=false"],
}


def overrides(args: argparse.Namespace, model_dir: Path, run: Path) -> list[str]:
    """The Hydra overrides of one side's run (before the side's own)."""
    return [
        "stage=grpo",
        "model=hf",
        f"model.pretrained='{model_dir}'",
        "data=tasks_demo",
        f"data.micro_batch_size={args.batch_size}",
        f"data.tasks_size={args.batch_size * args.iterations * args.nproc}",
        "data.tasks_val_size=4",
        "data.num_workers=0",
        f"stage.grpo.group_size={args.group_size}",
        f"stage.grpo.max_new_tokens={args.max_new_tokens}",
        "stage.grpo.dynamic_sampling=off",
        "stage.grpo.log_samples_every=0",
        f"trainer.max_steps={args.iterations}",
        "trainer.val_every_n_steps=100000",
        "trainer.val_before_train=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.ckpt_every_n_steps=0",
        "export=false",
        "eval=none",
        "stage.sample_prompts=[]",
        "logger=csv",
        f"hydra.run.dir='{run}'",
    ]


def run_side(side: str, repeat: int, args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    run = work / f"{side}-{repeat}"
    cmd = [
        *torchrun(args.nproc),
        "-m",
        "llm.bench.rollout_zero",
        "--train",
        *overrides(args, model_dir, run),
        *SIDES[side],
        *args.set,
    ]
    env = child_env(threads=args.threads)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    load0, t0 = loadavg(), time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-30:])
        raise RuntimeError(f"{side} (repeat {repeat}) failed (rc {r.returncode}); log tail:\n{tail}")
    rows = [row for row in read_metrics(run) if row.get("time/generate_tokens_per_s")]
    tps = [float(row["time/generate_tokens_per_s"]) for row in rows]
    lengths = [float(row["grpo/response_length"]) for row in rows if row.get("grpo/response_length")]
    return {
        "side": side,
        "repeat": repeat,
        "tokens_per_s": statistics.median(tps[1:] or tps),
        "per_iteration": tps,
        "response_length": lengths,
        "wall_s": time.time() - t0,
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        if mine:
            out[side] = {"tokens_per_s": [r["tokens_per_s"] for r in mine], "median": median(r["tokens_per_s"] for r in mine)}
    base = out.get("ddp", {}).get("median")
    for s in out.values():
        s["vs_ddp"] = s["median"] / base if base and s["median"] else None
    return out


def table(summary: dict[str, Any], nproc: int) -> str:
    cells = []
    for side, s in summary.items():
        reps = ", ".join(f"{x:.0f}" for x in s["tokens_per_s"])
        ratio = f"{s['vs_ddp']:.2f}" if s["vs_ddp"] is not None else "-"
        cells.append([side, nproc, f"{s['median']:.0f}", f"{s['median'] * nproc:.0f}", reps, ratio])
    header = ["side", "N", "rollout tokens/s per rank", "all ranks", "per repeat", "vs DDP"]
    return "\n".join(md_table(header, cells, "llrrlr"))


def train_main(rest: list[str]) -> None:
    """A torchrun child: ``python -m llm.train REST`` with every answer ``max_new_tokens`` long."""
    from llm.bench.grpo import force_fixed_length

    force_fixed_length()
    sys.argv = ["llm.train", *rest]
    runpy.run_module("llm.train", run_name="__main__")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--train"]:
        train_main(argv[1:])
        return
    ap = argument_parser("llm.bench.rollout_zero", __doc__)
    ap.add_argument("--model", default="tiny", help="tiny (a tiny stage-1 export), smollm2 or a Hugging Face directory")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4, help="prompts per rank and iteration")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="ABBA repeats of every side")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--set", action="append", default=[], help="extra Hydra override for every run (repeatable)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--quick", action="store_true", help="2 iterations of 16 tokens, one repeat (the CI check)")
    ap.add_argument("--markdown", default=None, help="append the table to this Markdown file")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.iterations, args.max_new_tokens, args.repeats, args.batch_size = 2, 16, 1, 2
    from llm.bench.sft import resolve_model

    sides = [s for s in args.sides.split(",") if s]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise SystemExit(f"--sides: unknown {', '.join(unknown)} (choose from {', '.join(SIDES)})")
    with workspace(args.workdir, args.keep, "bench_rollout_zero-") as work:
        model_dir = resolve_model(args.model, work, print)
        runs = []
        for rep, side in interleaved(sides, args.repeats):
            print(f"[bench] {side} (repeat {rep + 1}/{args.repeats}) ...", flush=True)
            runs.append(run_side(side, rep, args, model_dir, work))
            r = runs[-1]
            print(f"[bench]   {r['tokens_per_s']:.0f} rollout tokens/s per rank ({r['wall_s']:.0f} s)", flush=True)
    summary = summarize(runs)
    md = table(summary, args.nproc)
    head = (
        f"model {args.model}, {args.nproc} CPU processes x {args.threads} thread, {args.batch_size} prompts x {args.group_size} "
        f"answers x {args.max_new_tokens} tokens per rank and iteration, {args.iterations} iterations (the first left out), "
        f"{args.repeats} ABBA repeats, fp32; {cpu_name()} ({os.cpu_count()} cores), shared with other jobs "
        f"(load average {min(r['loadavg_before'] for r in runs):.1f}-{max(r['loadavg_after'] for r in runs):.1f})"
    )
    print()
    print(head)
    print(md)
    for side in ("zero3", "zero3_per_token"):
        if side in summary and summary[side]["vs_ddp"] is not None:
            print(f"{side} / ddp rollout tokens/s: {summary[side]['vs_ddp']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "runs": runs, "summary": summary}, indent=1))
    if args.markdown:
        cmd = command_line("llm.bench.rollout_zero", argv)
        append_section(args.markdown, f"{utc_stamp()}: GRPO rollout tokens/s, ZeRO-3 vs DDP", [f"`{cmd}`; {head}.", "", md])
        print(f"appended to {args.markdown}")


if __name__ == "__main__":
    main()
