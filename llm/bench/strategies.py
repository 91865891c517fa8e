"""Per-rank memory and throughput of every strategy on the same model:
``python -m llm.bench.strategies [--model gpt1_117m] [--nproc 2,4] [--markdown BENCHMARKS.md]``.

Each (strategy, N) runs the real pretraining stage under ``torchrun`` in a fresh process group
with ``trainer.memory_report=true``: at the second optimizer step every rank counts the bytes it
holds in parameters, gradients, optimizer state and other tensors (``llm.strategy.state_bytes``).
Throughput is the median of the logged tokens/s over the steps after the first. The table shows
rank 0's bytes (all ranks are listed in each run's ``memory_per_rank.json``), the ratio of the
state total to DDP's at the same N, and tokens/s relative to DDP.

On CPU processes the ranks share the machine's cores, so throughput ratios measure the cost of
each strategy's extra collectives and copies rather than a cluster's network; memory is exact.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from llm.bench.common import ROOT, append_section, argument_parser, command_line, cpu_name, md_table, read_metrics, torchrun

ALL = ["ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload", "fsdp"]
MIB = 2**20


def run_one(strategy: str, nproc: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run = out / f"{strategy}-n{nproc}"
    cmd = [
        *torchrun(nproc),
        "-m",
        "llm.train",
        f"model={args.model}",
        f"strategy={strategy}",
        f"hydra.run.dir={run}",
        f"data.seq_len={args.seq_len}",
        f"model.max_seq_len={args.seq_len}",
        f"data.micro_batch_size={args.micro_batch}",
        "data.num_workers=0",
        f"data.vocab_size={args.vocab}",
        f"trainer.max_steps={args.steps}",
        "trainer.ckpt_every_n_steps=0",
        "trainer.val_every_n_steps=100000",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.memory_report=true",
        "eval=none",
        "export=false",
        "stage.sample_prompts=[]",
        *args.set,
    ]
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.time() - t0
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-25:])
        raise RuntimeError(f"{strategy} with {nproc} processes failed (rc {r.returncode}); log tail:\n{tail}")
    mem = json.loads((run / "memory_per_rank.json").read_text())
    tps = [float(row["train/tokens_per_s"]) for row in read_metrics(run) if row.get("train/tokens_per_s")]
    return {"strategy": strategy, "nproc": nproc, "ranks": mem["ranks"], "tokens_per_s": statistics.median(tps[1:] or tps), "wall_s": wall}


def table(rows: list[dict[str, Any]]) -> str:
    ddp = {r["nproc"]: r for r in rows if r["strategy"] == "ddp"}
    cells = []
    for r in rows:
        m = r["ranks"][0]
        top = max(x["total"] for x in r["ranks"])
        base = ddp.get(r["nproc"])
        mem_ratio = f"{m['total'] / base['ranks'][0]['total']:.2f}" if base else "-"
        tps_ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        cells.append(
            [
                r["strategy"],
                r["nproc"],
                *(f"{m[k] / MIB:.0f} MiB" for k in ("params", "grads", "optimizer", "other", "total")),
                mem_ratio,
                f"{top / MIB:.0f} MiB",
                f"{r['tokens_per_s']:.0f}",
                tps_ratio,
            ]
        )
    header = [
        "strategy",
        "N",
        "params",
        "grads",
        "optimizer",
        "other",
        "state total / rank",
        "vs DDP",
        "max over ranks",
        "tokens/s",
        "vs DDP",
    ]
    return "\n".join(md_table(header, cells))


def main(argv: list[str] | None = None) -> None:
    ap = argument_parser("llm.bench.strategies", __doc__)
    ap.add_argument("--model", default="gpt1_117m", help="model preset (conf/model)")
    ap.add_argument("--strategies", default=",".join(ALL))
    ap.add_argument("--nproc", default="2", help="comma-separated process counts, e.g. 2,4")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024, help="data.vocab_size (the demo tokenizer)")
    ap.add_argument("--set", action="append", default=[], help="extra Hydra override for every run (repeatable)")
    ap.add_argument("--out", default=None, help="run directories (default: a temporary directory)")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--quick", action="store_true", help="tiny model, ddp/zero2/zero3/fsdp, N=2, 3 steps (the CI check)")
    ap.add_argument("--markdown", default=None, help="append the table to this Markdown file")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.strategies, args.nproc, args.steps = "tiny", "ddp,deepspeed_zero2,deepspeed_zero3,fsdp", "2", 3
        args.seq_len, args.micro_batch = 64, 8
    import tempfile

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_strategies-"))
    rows = []
    for n in [int(x) for x in args.nproc.split(",")]:
        for s in args.strategies.split(","):
            print(f"[bench] {s} with {n} processes ...", flush=True)
            rows.append(run_one(s, n, args, out))
            r = rows[-1]
            print(
                f"[bench]   rank 0 state {r['ranks'][0]['total'] / MIB:.1f} MiB, {r['tokens_per_s']:.0f} tokens/s ({r['wall_s']:.0f} s)",
                flush=True,
            )
    md = table(rows)
    cmd = command_line("llm.bench.strategies", argv)
    head = (
        f"model {args.model}, seq {args.seq_len} x micro-batch {args.micro_batch} per rank, fp32, "
        f"{cpu_name()} ({os.cpu_count()} cores); measured at the optimizer step of step 2"
    )
    print()
    print(head)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "rows": rows}, indent=1))
    if args.markdown:
        append_section(args.markdown, "Strategies: memory per rank and throughput", [f"`{cmd}`; {head}.", "", md])
        print(f"appended to {args.markdown}")


if __name__ == "__main__":
    main()
