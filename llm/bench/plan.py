"""The memory planner (``xiulian plan``, llm/plan.py) against real runs:
``python -m llm.bench.plan [--models tiny,gpt1_117m] [--nproc 1,2] [--markdown BENCHMARKS.md]``.

Each (model, strategy, N) is the real pretraining stage under torchrun (the runner of
``python -m llm.bench.strategies``) with ``trainer.memory_report=true``, glibc's mmap threshold
pinned at 64 KiB (blocks that size and larger go back to the kernel when freed, so RSS follows live
tensors rather than malloc's cache; at 1 MiB, the runs before 2026-12-06 16:00, tensor parallelism's
sequence shards of the tiny model, 512 KiB, reused freed heap memory and the step peak read low). Two comparisons per rank, both printed as predicted / measured:

* **state**: the bytes of parameters, gradients, optimizer state and the strategy's buffers that
  torch's tensors hold at the optimizer step (``llm.strategy.state_bytes``: every live storage
  counted once; no allocator in between) against the planner's params + grads + optimizer + buffers.
* **step peak**: the peak RSS over the second training step (``VmHWM`` after
  ``/proc/self/clear_refs``) against the planner's total less its fixed overhead, measured two
  ways: less the process's own non-tensor RSS at the step's start (its RSS then minus the bytes of
  all its live tensors), and less the RSS of an idle process that has imported everything and
  started a process group (measured here first). The second also holds what a training process
  has beside its tensors (the data loader, Lightning's and DeepSpeed's objects, malloc's arenas
  for small blocks), which the planner does not model and RSS cannot split further.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from llm.bench.common import ROOT, append_section, argument_parser, child_env, command_line, cpu_name, md_table, utc_stamp

MIB = 2**20
QUICK = ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]
#: glibc's mmap threshold in the runs: below the smallest activation tensor that matters
MMAP_THRESHOLD = 64 << 10


def spec(strategy: str) -> tuple[str, list[str], str, int]:
    """A strategy of ``--strategies``: (conf/strategy name, its Hydra overrides, the planner's
    strategy, tensor-parallel degree). ``fsdp_tp`` is ``strategy=fsdp_tp`` at its default
    ``tensor_parallel=2``; ``fsdp_tpK`` sets ``strategy.tensor_parallel=K``; the planner models
    both as ``fsdp`` with that degree."""
    if strategy.startswith("fsdp_tp"):
        k = strategy[len("fsdp_tp") :] or "2"
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"--strategies {strategy}: fsdp_tp or fsdp_tpK with K the tensor-parallel degree (e.g. fsdp_tp4)")
        return "fsdp_tp", [f"strategy.tensor_parallel={k}"], "fsdp", int(k)
    return strategy, [], strategy, 1


def malloc_env() -> dict[str, str]:
    """The children's environment: this checkout first, glibc's mmap and trim thresholds at 64 KiB."""
    env = child_env()
    env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    env["MALLOC_TRIM_THRESHOLD_"] = str(MMAP_THRESHOLD)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    return env


def idle_baseline(timeout: float = 300) -> int:
    """RSS (bytes) of a fresh process that has imported the training entry point, Lightning,
    transformers and DeepSpeed and started a one-rank gloo process group: what every rank holds
    before it builds anything."""
    code = (
        "import os, torch, torch.distributed as dist, lightning, transformers, deepspeed, llm.train\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(29000 + os.getpid() % 1000))\n"
        "dist.init_process_group('gloo', rank=0, world_size=1)\n"
        "import gc; gc.collect()\n"
        "from llm.bench.common import proc_status; print('RSS', proc_status()['VmRSS'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=malloc_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RSS ")]
    if r.returncode or not lines:
        raise RuntimeError(f"idle baseline failed (rc {r.returncode}): {r.stderr[-2000:]}")
    return int(lines[-1].split()[1])


def predict(model: str, strategy: str, nproc: int, seq_len: int, micro_batch: int, vocab: int, overrides: list[str] = ()) -> Any:
    """The planner's estimate (CPU processes, fp32) of a run of this benchmark (``strategy`` as
    :func:`spec` reads it)."""
    from llm import plan
    from llm.bench.common import compose_config

    _, _, name, tp = spec(strategy)
    cfg = compose_config([f"model={model}", f"model.max_seq_len={seq_len}", *overrides])
    s = plan.shape_of(cfg.model, vocab)
    st = plan.Setting(
        strategy=name,
        tensor_parallel=tp,
        precision="32-true",
        nodes=1,
        gpus_per_node=nproc,
        micro_batch=micro_batch,
        seq_len=seq_len,
        checkpointing=any(o == "strategy.activation_checkpointing=true" for o in overrides),
        device="cpu",
    )
    return plan.estimate(s, st, overhead=0)


def measure(model: str, strategy: str, nproc: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One real run under torchrun (``llm.bench.strategies.run_one``) and its per-rank figures."""
    from llm.bench.strategies import run_one

    conf, extra, _, _ = spec(strategy)
    ns = argparse.Namespace(
        model=model,
        seq_len=args.seq_len[model],
        micro_batch=args.micro_batch[model],
        vocab=args.vocab,
        steps=3,
        set=[*extra, *args.set],
        timeout=args.timeout,
    )
    old = dict(os.environ)
    os.environ.update(malloc_env())
    try:
        r = run_one(conf, nproc, ns, out / model / strategy)  # fsdp_tp and fsdp_tp4 in their own folders
    finally:
        os.environ.clear()
        os.environ.update(old)
    return {**r, "strategy": strategy}


def compare(model: str, r: dict[str, Any], baseline: int, args: argparse.Namespace) -> dict[str, Any]:
    e = predict(model, r["strategy"], r["nproc"], args.seq_len[model], args.micro_batch[model], args.vocab, list(args.set))
    rows = []
    for rank in r["ranks"]:
        state = rank["params"] + rank["grads"] + rank["optimizer"] + rank["other"]
        peak = own = None
        if rank.get("rss_step_peak"):
            peak = rank["rss_step_peak"] - baseline
            # the process's own non-tensor RSS at the step's start (Python, libraries, loader, malloc's arenas)
            own = rank["rss_step_peak"] - (rank["rss_before_step"] - rank["tensors_before_step"])
        rows.append({"state": state, "peak": peak, "own": own})
    state = max(x["state"] for x in rows)
    peak = max((x["peak"] for x in rows if x["peak"] is not None), default=None)
    own = max((x["own"] for x in rows if x["own"] is not None), default=None)
    pred_state = e.params + e.grads + e.optimizer + (e.buffers - _working(model, r, args))
    pred_peak = e.total - e.overhead
    return {
        "model": model,
        "strategy": r["strategy"],
        "nproc": r["nproc"],
        "pred_state": pred_state,
        "state": state,
        "state_ratio": pred_state / state if state else float("nan"),
        "pred_peak": pred_peak,
        "peak": peak,
        "peak_ratio": pred_peak / peak if peak else float("nan"),
        "own": own,
        "own_ratio": pred_peak / own if own else float("nan"),
        "activations": e.activations,
        "ranks": r["ranks"],
    }


def _working(model: str, r: dict[str, Any], args: argparse.Namespace) -> int:
    """The planner's transient gather buffers (not alive at the optimizer step, where the state is counted)."""
    from llm import plan
    from llm.bench.common import compose_config

    _, _, name, tp = spec(r["strategy"])
    cfg = compose_config([f"model={model}", f"model.max_seq_len={args.seq_len[model]}"])
    st = plan.Setting(strategy=name, tensor_parallel=tp, precision="32-true", nodes=1, gpus_per_node=r["nproc"], device="cpu")
    return plan.working_bytes(plan.shape_of(cfg.model, args.vocab), st)


def table(rows: list[dict[str, Any]]) -> str:
    cells = [
        [
            r["model"],
            r["strategy"],
            r["nproc"],
            f"{r['pred_state'] / MIB:.1f}",
            f"{r['state'] / MIB:.1f}",
            f"{r['state_ratio']:.3f}",
            f"{r['activations'] / MIB:.1f}",
            f"{r['pred_peak'] / MIB:.1f}",
            "-" if r["peak"] is None else f"{r['peak'] / MIB:.1f}",
            f"{r['peak_ratio']:.3f}",
            "-" if r["own"] is None else f"{r['own'] / MIB:.1f}",
            f"{r['own_ratio']:.3f}",
        ]
        for r in rows
    ]
    header = ["model", "strategy", "N", "state pred. MiB", "state meas. MiB", "ratio", "activations pred. MiB"]
    header += ["step peak pred. MiB", "peak RSS - idle MiB", "ratio", "peak RSS - own base MiB", "ratio"]
    return "\n".join(md_table(header, cells, "lllrrrrrrrrr"))


def main(argv: list[str] | None = None) -> None:
    ap = argument_parser("llm.bench.plan", __doc__)
    ap.add_argument("--models", default="tiny,gpt1_117m", help="model presets (conf/model), comma-separated")
    ap.add_argument(
        "--strategies",
        default=",".join(QUICK),
        help="conf/strategy names, comma-separated; fsdp_tp is tensor_parallel=2, fsdp_tpK tensor_parallel=K",
    )
    ap.add_argument("--nproc", default="1,2", help="comma-separated process counts")
    ap.add_argument("--seq-len", default="tiny=256,gpt1_117m=256,llama_1b=128", help="sequence length per model")
    ap.add_argument("--micro-batch", default="tiny=8,gpt1_117m=4,llama_1b=1", help="micro-batch per model")
    ap.add_argument("--vocab", type=int, default=1024, help="data.vocab_size (the demo tokenizer; presets with their own keep it)")
    ap.add_argument("--set", action="append", default=[], help="extra Hydra override for every run (repeatable)")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--quick", action="store_true", help="tiny only, N=1,2, ddp/zero2/zero3/fsdp (the CI check)")
    ap.add_argument(
        "--tabulate", nargs="+", default=None, metavar="JSON", help="no runs: the table again from the --json files of earlier runs"
    )
    ap.add_argument("--markdown", default=None, help="append the table to this Markdown file")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.models = "tiny"
    args.seq_len = {k: int(v) for k, v in (x.split("=") for x in args.seq_len.split(","))}
    args.micro_batch = {k: int(v) for k, v in (x.split("=") for x in args.micro_batch.split(","))}
    rows = []
    if args.tabulate:  # the predictions of today's planner against the measurements of earlier runs
        docs = [json.loads(Path(p).read_text()) for p in args.tabulate]
        baseline = statistics.median(d["baseline"] for d in docs)
        runs = {(r["model"], r["strategy"], r["nproc"]): r for d in docs for r in d["rows"]}  # a later file's run replaces an earlier one's
        rows = [compare(k[0], r, baseline, args) for k, r in runs.items()]
    else:
        baseline = statistics.median(idle_baseline() for _ in range(2))
        print(f"[bench] idle process (imports + process group): {baseline / MIB:.1f} MiB RSS", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_plan-") as tmp:
        for model in [] if args.tabulate else args.models.split(","):
            for n in [int(x) for x in args.nproc.split(",")]:
                for s in args.strategies.split(","):
                    print(f"[bench] {model} {s} N={n} ...", flush=True)
                    rows.append(compare(model, measure(model, s, n, args, Path(tmp)), baseline, args))
                    r = rows[-1]
                    print(
                        f"[bench]   state {r['state_ratio']:.3f}, step peak {r['peak_ratio']:.3f} (vs idle process), "
                        f"{r['own_ratio']:.3f} (vs own base) (predicted / measured)",
                        flush=True,
                    )
    md = table(rows)
    head = (
        f"fp32 on {cpu_name()} ({os.cpu_count()} cores); idle-process baseline {baseline / MIB:.0f} MiB; "
        f"seq x micro-batch {args.seq_len} x {args.micro_batch}; ratio = predicted / measured, max over ranks"
    )
    print()
    print(head)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline": baseline, "rows": rows}, indent=1, default=str))
    if args.markdown:
        cmd = command_line("llm.bench.plan", argv)
        append_section(args.markdown, f"{utc_stamp()} -- memory planner vs measured per-rank memory", [f"`{cmd}`; {head}.", "", md])
        print(f"appended to {args.markdown}")


if __name__ == "__main__":
    main()
