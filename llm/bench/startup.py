"""Per-rank peak memory of the start-up under FSDP, whole-model start against sharded start:
``python -m llm.bench.startup [--model llama_1b] [--nproc 1,2,4] [--markdown BENCHMARKS.md]``.

Each start runs in fresh ``torchrun`` processes (gloo, CPU; glibc's mmap and trim thresholds at
1 MiB so freed blocks leave the process): every rank builds the stage module as training does and
calls its ``configure_model`` under a one-dimensional data-parallel mesh (FSDP2, a decoder layer
per unit), then reports its peak RSS (VmHWM) and its RSS after the imports, before any model was
built (the fixed overhead: Python, torch, transformers, Lightning). Two ways:

* ``whole`` (before, ``strategy.sharded_init=false``): every rank builds the whole fp32 model
  (transformers' initialisation), then shards it;
* ``sharded`` (now): built on the meta device, sharded, each rank fills its shard
  (``llm.model.materialise``).

Then every rank runs the loss of the same fixed batch (a forward; FSDP gathers each layer): the
sharded start's loss at every N must equal the unsharded start's (one process, no FSDP, the
start DDP and ``single`` make), which is also measured. ``--dump FILE`` (tests) writes the full
weights after the start (rank 0, safetensors).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
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
WAYS = ("whole", "sharded")


def worker(args: argparse.Namespace) -> None:
    """One rank of one start (under torchrun, or alone with ``--unsharded``); rank 0 writes the
    ranks' figures to ``--result``."""
    import os

    import torch
    import torch.distributed as dist

    from llm.bench.common import compose_config
    from llm.model.build import count_params
    from llm.stages.registry import get_stage

    stage = get_stage(args.stage).module  # imports Lightning, transformers: part of the fixed overhead
    import torch.distributed.fsdp  # noqa: F401
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    if args.strategy == "deepspeed_zero3":
        import deepspeed  # noqa: F401  (imported by the strategy before any model: part of the overhead)
    release_memory()
    base = proc_status()["VmRSS"]
    dist_on = "RANK" in os.environ
    if dist_on:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
    zero3 = args.strategy == "deepspeed_zero3" and not args.unsharded
    strategy = ["strategy=deepspeed_zero3"] if zero3 else []
    cfg = compose_config(
        [f"model={args.model}", f"stage={args.stage}", *strategy, f"strategy.sharded_init={args.way == 'sharded'}", *args.override]
    )
    vocab = None if (cfg.model.vocab_size or cfg.model.pretrained) else args.vocab
    torch.manual_seed(cfg.seed)  # what training does first (seed_everything): the whole start draws from it
    module = stage(cfg.model, cfg.stage, vocab_size=vocab, sharded_init=args.way == "sharded", init_seed=cfg.seed)
    if zero3:  # as the strategy does: DeepSpeed's communication over the gloo group, the run's config
        import deepspeed

        from llm.strategy import deepspeed_config

        deepspeed.init_distributed(dist_backend="gloo")
        module.zero3_config = deepspeed_config(cfg.strategy, 1.0, 1, gpu=False)
    elif not args.unsharded:
        from torch.distributed.device_mesh import init_device_mesh

        module._device_mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
    module.configure_model()
    if zero3 and args.way == "whole":  # the engine's conversion: every rank partitions its whole model
        deepspeed.zero.Init(module=module.model, config_dict_or_path=module.zero3_config)
    model = module.model
    n = count_params(model)
    release_memory()
    st = proc_status()
    mine: dict[str, Any] = {"rank": rank, "base": base, "peak": st["VmHWM"], "rss": st["VmRSS"], "bytes_read": module.start_bytes_read}
    if args.loss:
        ids = torch.randint(0, model.config.vocab_size, (2, args.loss_tokens), generator=torch.Generator().manual_seed(0))
        model.eval()
        with torch.no_grad(), gathered_per_module(model) if zero3 else contextlib.nullcontext():
            mine["loss"] = float(model(input_ids=ids, labels=ids).loss)
            # frozen copies (DPO's reference): the same weights, so the same loss
            mine["copy_losses"] = [float(m.eval()(input_ids=ids, labels=ids).loss) for m in module.frozen_copies()]
    if args.dump:
        from safetensors.torch import save_file

        full = {}
        for k, p in model.named_parameters(remove_duplicate=False):
            with gathered_per_module(p) if zero3 else contextlib.nullcontext():
                t = p.full_tensor() if hasattr(p, "full_tensor") else p
                if rank == 0:
                    full[k] = t.detach().cpu().clone().contiguous()
        if rank == 0:
            save_file(full, args.dump)
        mine["tied"] = model.get_output_embeddings() is None or model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ranks: list[Any] = [None] * world
    if dist_on:
        dist.all_gather_object(ranks, mine)
    else:
        ranks = [mine]
    if rank == 0:
        res = {"way": args.way, "nproc": world, "unsharded": args.unsharded, "params": n, "fp32_bytes": 4 * n, "ranks": ranks}
        Path(args.result).write_text(json.dumps(res))
    if dist_on:
        dist.barrier()  # every rank leaves together (llm.bench.export: gloo torn down while rank 0 writes)
        dist.destroy_process_group()


@contextlib.contextmanager
def gathered_per_module(model: Any) -> Any:
    """ZeRO-3 partitions outside a DeepSpeed engine: a parameter, or during a forward each module's
    own parameters, gathered whole on every rank for as long as it needs them (a layer at a time)."""
    import deepspeed
    import torch

    if isinstance(model, torch.nn.Parameter):
        with deepspeed.zero.GatheredParameters([model]):
            yield
        return
    handles, held = [], {}

    def pre(m: Any, _args: Any) -> None:
        held[m] = deepspeed.zero.GatheredParameters(list(m.parameters(recurse=False)))
        held[m].__enter__()

    def post(m: Any, _args: Any, _out: Any) -> None:
        held.pop(m).__exit__(None, None, None)

    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_one(way: str, nproc: int, args: argparse.Namespace, tmp: Path, unsharded: bool = False, dump: str | None = None) -> dict[str, Any]:
    env = child_env(threads=args.threads)
    env["MALLOC_MMAP_THRESHOLD_"] = env["MALLOC_TRIM_THRESHOLD_"] = str(1 << 20)
    result = tmp / f"{way}-{nproc}-{int(unsharded)}.json"
    launch = [sys.executable] if unsharded else torchrun(nproc)
    cmd = [
        *launch,
        "-m",
        "llm.bench.startup",
        "--worker",
        "--way",
        way,
        "--model",
        args.model,
        "--stage",
        args.stage,
        "--strategy",
        getattr(args, "strategy", "fsdp"),
        "--vocab",
        str(args.vocab),
        "--result",
        str(result),
        "--loss-tokens",
        str(args.loss_tokens),
        *([] if args.loss else ["--no-loss"]),
        *(["--unsharded"] if unsharded else []),
        *(["--dump", dump] if dump else []),
        *(f"--override={o}" for o in args.override),
    ]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    if r.returncode:
        raise RuntimeError(f"{way} N={nproc}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(result.read_text())


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    full = rows[0]["fp32_bytes"]
    ref = next((r for r in rows if r["unsharded"]), None)
    ref_loss = ref["ranks"][0].get("loss") if ref else None
    overhead = max(x["base"] for r in rows for x in r["ranks"])
    lines = [
        f"`{command_line('llm.bench.startup')}`; model {args.model} ({rows[0]['params'] / 1e9:.2f} B parameters, "
        f"{full / MIB:,.0f} MiB in fp32), stage {args.stage}, {'FSDP2' if args.strategy == 'fsdp' else 'DeepSpeed ZeRO-3'} over N CPU processes (gloo); {cpu_name()}. Peak = VmHWM "
        "at the end of set-up (model built and sharded, before any step), the largest over the ranks; base = RSS after "
        f"the imports (torch, transformers, Lightning), before any model (the fixed overhead, at most {overhead / MIB:,.0f} MiB here). Bound: "
        "1.2 x fp32 model / N + base. Loss: the same fixed batch (2 x "
        f"{args.loss_tokens} tokens) after the start; 'unsharded' is one process without FSDP (DDP's and single's start).",
        "",
    ]
    table = []
    for r in rows:
        peak = max(x["peak"] for x in r["ranks"])
        base = max(x["base"] for x in r["ranks"])
        bound = 1.2 * full / r["nproc"] + base
        loss = r["ranks"][0].get("loss")
        diff = f"{abs(loss - ref_loss):.1e}" if loss is not None and ref_loss is not None and r["way"] == "sharded" else "-"
        table.append(
            [
                "unsharded" if r["unsharded"] else r["way"],
                r["nproc"],
                f"{peak / MIB:,.0f}",
                f"{(peak - base) / MIB:,.0f}",
                f"{(peak - base) / (full / r['nproc']):.2f}",
                f"{bound / MIB:,.0f}",
                "yes" if peak <= bound else "no",
                f"{loss:.6f}" if loss is not None else "-",
                diff,
            ]
        )
    header = [
        "start",
        "N",
        "peak RSS / rank (MiB)",
        "peak - base (MiB)",
        "x (fp32 model / N)",
        "bound (MiB)",
        "within",
        "loss",
        "vs unsharded",
    ]
    return lines + md_table(header, table, "lrrrrrlrr")


def main(argv: list[str] | None = None) -> None:
    p = argument_parser("llm.bench.startup", __doc__)
    p.add_argument("--model", default="llama_1b")
    p.add_argument("--stage", default="pretrain")
    p.add_argument("--strategy", default="fsdp", choices=("fsdp", "deepspeed_zero3"), help="the sharding (default fsdp)")
    p.add_argument("--nproc", default="1,2,4", help="numbers of ranks (default 1,2,4)")
    p.add_argument("--whole-nproc", default=None, help="numbers of ranks for the whole-model start (default: --nproc)")
    p.add_argument("--vocab", type=int, default=50304, help="vocabulary of a preset that sets none (default 50304)")
    p.add_argument("--override", action="append", default=[], help="a config override, e.g. model.n_layer=24 (repeatable)")
    p.add_argument("--ways", default=",".join(WAYS))
    p.add_argument("--no-loss", dest="loss", action="store_false", help="skip the loss of the fixed batch")
    p.add_argument("--loss-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None, help="append the section to this file (BENCHMARKS.md)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--way", default="sharded", help=argparse.SUPPRESS)
    p.add_argument("--unsharded", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dump", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    ns = [int(x) for x in args.nproc.split(",")]
    whole_ns = [int(x) for x in (args.whole_nproc or args.nproc).split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="xiulian-bench-startup-") as d:
        if args.loss:
            rows.append(run_one("sharded", 1, args, Path(d), unsharded=True))
        for way in args.ways.split(","):
            for n in whole_ns if way == "whole" else ns:
                rows.append(run_one(way, n, args, Path(d)))
                print(json.dumps(rows[-1]), flush=True)
    lines = report(rows, args)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))
    if args.markdown:
        append_section(Path(args.markdown), f"{utc_stamp()} -- start-up memory per rank: whole vs sharded", lines)


if __name__ == "__main__":
    main()
