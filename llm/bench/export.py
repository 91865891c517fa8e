"""Peak memory of the Hugging Face export of an FSDP-sharded model, against the model's size:
``python -m llm.bench.export [--model gpt1_117m] [--nproc 2] [--markdown BENCHMARKS.md]``.

Each export runs in fresh ``torchrun`` processes (gloo, CPU; glibc's mmap and trim thresholds at
1 MiB so freed blocks leave the process): every rank builds the preset in fp32, shards it with
FSDP2 (``llm.strategy.parallelize``, a decoder layer per unit, as training does), frees what it
can, resets its kernel peak-RSS mark (``/proc/self/clear_refs`` = 5) and exports; then each rank
reports VmHWM less its RSS before the export. Two ways:

* ``consolidated`` (before): the whole state dict gathered on rank 0
  (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``), a plain model built there
  and loaded with it, ``save_pretrained`` -- what ``llm.train.finish`` did.
* ``streamed`` (now): ``llm.export.export_hf_streamed``, a tensor gathered at a time and written
  into its place in its weight file at once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
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
    md_table,
    proc_status,
    torchrun,
    utc_stamp,
)
from llm.procstat import release_memory

MIB = 2**20
WAYS = ("consolidated", "streamed")


class _Dist:
    """What the export asks of a Lightning strategy, from torch.distributed."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.is_global_zero = dist.get_rank() == 0

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self, name: str | None = None) -> None:
        self.dist.barrier()


def worker(args: argparse.Namespace) -> None:
    """One rank of one export (under torchrun); rank 0 writes the ranks' figures to ``--result``."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from llm.bench.common import compose_config
    from llm.export import export_hf, export_hf_streamed
    from llm.model.build import build_model, count_params
    from llm.strategy import parallelize

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = compose_config([f"model={args.model}", *args.override])
    vocab = None if cfg.model.vocab_size else args.vocab or 50304
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=vocab)
    n = count_params(model)
    parallelize(model, mesh=init_device_mesh("cpu", (world,)))
    release_memory()
    dist.barrier()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = proc_status()["VmRSS"]
    t0 = time.perf_counter()
    out = Path(args.out) / args.way
    if args.way == "streamed":
        export_hf_streamed(_Dist(), model, None, out, max_shard_size=args.max_shard_size)
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            plain = build_model(cfg.model, vocab_size=vocab)
            plain.load_state_dict(full)
            export_hf(plain, None, out, max_shard_size=args.max_shard_size)
            del plain
        del full
        dist.barrier()
    seconds = time.perf_counter() - t0
    st = proc_status()
    mine = {"rank": rank, "rss_before": before, "peak": st["VmHWM"], "increase": st["VmHWM"] - before}
    ranks: list[Any] = [None] * world
    dist.all_gather_object(ranks, mine)
    if rank == 0:
        files = sorted(p.name for p in out.glob("*.safetensors"))
        res = {"way": args.way, "params": n, "fp32_bytes": 4 * n, "seconds": seconds, "files": len(files), "ranks": ranks}
        Path(args.result).write_text(json.dumps(res))
    # every rank leaves together: a rank tearing gloo down while rank 0 still writes made rank 0
    # abort at exit now and then ("terminate called without an active exception", about 1 run in 6)
    dist.barrier()
    dist.destroy_process_group()


def run_one(way: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    env = child_env()
    env["MALLOC_MMAP_THRESHOLD_"] = env["MALLOC_TRIM_THRESHOLD_"] = str(1 << 20)
    result = tmp / f"{way}.json"
    cmd = [
        *torchrun(args.nproc),
        "-m",
        "llm.bench.export",
        "--worker",
        "--way",
        way,
        "--model",
        args.model,
        *(["--vocab", str(args.vocab)] if args.vocab else []),
        "--max-shard-size",
        args.max_shard_size,
        "--out",
        str(tmp),
        "--result",
        str(result),
        *(f"--override={o}" for o in args.override),
    ]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if r.returncode:
        raise RuntimeError(f"{way}: rc {r.returncode}\n{r.stderr[-4000:]}")
    return json.loads(result.read_text())


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    model = rows[0]
    lines = [
        f"`{command_line('llm.bench.export')}`; model {args.model} ({model['params'] / 1e6:.1f} M parameters, "
        f"{model['fp32_bytes'] / MIB:.0f} MiB in fp32), FSDP2 over {args.nproc} CPU processes (gloo), "
        f"export_max_shard_size={args.max_shard_size}; {cpu_name()}. Increase = VmHWM during the export less the RSS "
        "just before it (clear_refs=5; glibc mmap/trim thresholds 1 MiB).",
        "",
    ]
    table = []
    for r in rows:
        r0 = r["ranks"][0]
        other = max(x["increase"] for x in r["ranks"][1:]) if len(r["ranks"]) > 1 else 0
        table.append(
            [
                r["way"],
                f"{r0['increase'] / MIB:,.1f}",
                f"{r0['increase'] / r['fp32_bytes']:.2f}",
                f"{other / MIB:,.1f}",
                r["files"],
                f"{r['seconds']:.1f}",
            ]
        )
    header = ["export", "rank 0 peak increase (MiB)", "x model fp32 bytes", "other ranks' max (MiB)", "weight files", "seconds"]
    return lines + md_table(header, table, "lrrrrr")


def main(argv: list[str] | None = None) -> None:
    p = argument_parser("llm.bench.export", __doc__)
    p.add_argument("--model", default="gpt1_117m")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--vocab", type=int, default=None, help="vocabulary of a preset that sets none (default 50304)")
    p.add_argument("--max-shard-size", default="100MB", help="the export's export_max_shard_size (default 100MB)")
    p.add_argument("--override", action="append", default=[], help="a model override, e.g. model.n_layer=24 (repeatable)")
    p.add_argument("--ways", default=",".join(WAYS))
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None, help="append the section to this file (BENCHMARKS.md)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--way", default="streamed", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory(prefix="xiulian-bench-export-") as d:
        rows = [run_one(w, args, Path(d)) for w in args.ways.split(",")]
    lines = report(rows, args)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    if args.markdown:
        append_section(Path(args.markdown), f"{utc_stamp()} -- export memory: consolidated vs streamed", lines)


if __name__ == "__main__":
    main()
