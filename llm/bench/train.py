"""Benchmarks: the framework against a bare PyTorch loop, the data loader's headroom, and the
memory of one training step -- all in one run, on the same model, data and machine.

    python -m llm.bench                      # tiny preset on the demo data; memory for tiny and gpt1_117m
    python -m llm.bench --quick              # ~1 minute: fewer steps, no 117M memory run
    python -m llm.bench --json bench.jsonl   # also append one JSON line per figure

What is measured, and how
-------------------------
1. *Training throughput.* "framework" is the real path, :func:`llm.train.train` on a config
   composed from ``conf/`` exactly as the CLI composes it (``model=tiny data=demo``, no
   validation, checkpoints, samples or export inside the run); its tokens/s are the
   ``train/tokens_per_s`` rows of the run's ``metrics.csv``, first window (warm-up) left out.
   "bare" is the plain PyTorch loop in :func:`run_bare`: the same transformers model
   (``build_seeded_model``: the stage's seeded start, same vocabulary), the same AdamW settings and parameter groups,
   the same LR schedule, the same batches (``PackedTokenStream`` in a ``DataLoader`` with the
   same workers), forward -> ``token_nll_sum`` -> backward -> clip -> step -> zero_grad. Both
   time the wall clock between consecutive step ends over the same steps (``log_every + 1`` ..
   ``steps``), both run in this process with the same ``torch.get_num_threads()``. The runs are
   interleaved ABBA (bare, framework, framework, bare, ...) so that a slow drift of the machine
   (other jobs, thermal) hits both alike; medians and the spread are reported. The logged
   training losses of the two must agree: proof that both did the same work. Other processes'
   CPU time and the hypervisor's steal time during each run are read from ``/proc/stat``: on a
   shared VM they, not the code, are the main source of run-to-run spread.
1b. *Fixed cost per step.* The same comparison on a micro model (1 layer, 16 wide, 32 tokens per
   step), where a step is almost all loop, hook and logging work: framework step time minus
   bare step time is what the framework adds to every step, whatever the model; it predicts the
   ratio of (1) more precisely than (1) measures it on a noisy machine.
2. *Data loader.* The framework's train ``DataLoader`` (``TokenDataModule.train_dataloader``)
   iterated alone, for the configured ``num_workers`` and for 0 and 2, new epochs (and new
   workers) as training would; tokens/s over the whole time (start-up included), and against
   the training tokens/s of (1).
3. *Memory of a step.* In a fresh subprocess per preset (so nothing else lives in the process),
   with glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``: large blocks go back to the
   OS when freed, so RSS follows live memory instead of the allocator's cache): build the
   model and AdamW, run one warm-up step (creates AdamW state), free the gradients, read
   VmRSS, reset the kernel's peak-RSS mark (``/proc/self/clear_refs`` = 5), run one step, read
   VmHWM. "step peak" = VmHWM - VmRSS before the step (gradients + activations + temporaries);
   "total" = VmHWM - VmRSS before the model was built. Autograd's saved tensors (activations
   kept for backward, parameters excluded) are summed by storage as a cross-check. On CUDA
   ``torch.cuda.max_memory_allocated`` is used instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.bench.common import (
    ROOT,
    ChildFailed,
    ForeignLoad,
    append_section,
    argument_parser,
    bench_overrides,
    command_line,
    compose_config,
    interleaved,
    loadavg,
    machine_info,
    md_table,
    print_result,
    proc_status,
    run_framework,
    run_module,
    utc_stamp,
)
from llm.procstat import release_memory


def tokens_per_step(cfg) -> int:
    return cfg.data.seq_len * cfg.data.micro_batch_size * cfg.stage.grad_accum


# ================================================================================== bare
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_bare(cfg, log_every: int) -> dict[str, Any]:
    """A plain PyTorch loop doing the same work as the framework's pretraining step.

    Times windows of ``log_every`` steps as the framework's StepTimer does (wall clock between
    step ends); the first window (steps 1..log_every, warm-up) is left out."""
    with ForeignLoad() as fl:
        res = _bare(cfg, log_every)
    res["foreign_cores"], res["steal_cores"] = fl.cores, fl.steal
    return res


def bench_device(cfg) -> tuple[torch.device, Any]:
    """The device and autocast context the framework picks for this config (llm.strategy)."""
    from llm.strategy import resolve_precision

    acc = cfg.strategy.accelerator
    if acc == "auto":
        acc = "gpu" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(cfg.trainer.precision, acc)
    dev = torch.device("cuda", torch.cuda.current_device()) if acc == "gpu" else torch.device("cpu")
    if precision.startswith("bf16"):
        if "true" in precision:
            raise ValueError(f"trainer.precision={precision}: the bare loop mirrors 32-true and bf16-mixed only")
        return dev, lambda: torch.autocast(dev.type, dtype=torch.bfloat16)
    return dev, contextlib.nullcontext


def _bare(cfg, log_every: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from llm.data.builders import resolve_data
    from llm.data.shards import PackedTokenStream
    from llm.losses import token_nll_sum
    from llm.model.build import build_seeded_model
    from llm.stages.base import param_groups, warmup_cosine

    threads = torch.get_num_threads()
    load0 = loadavg()
    t_start = time.perf_counter()
    dev, autocast = bench_device(cfg)
    _seed_all(cfg.seed)
    tokenizer, shards = resolve_data(cfg.data)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    model = build_seeded_model(cfg.model, len(tokenizer), special, cfg.seed).to(dev)  # the stage's start
    model.train()
    o = cfg.stage.optim
    fused = bool(o.fused) if o.fused is not None else dev.type in ("cuda", "cpu")  # the framework's default
    opt = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
    total = cfg.trainer.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, o.warmup_steps, total, o.min_lr_ratio))
    params = [p for p in model.parameters() if p.requires_grad]
    nw = cfg.data.num_workers
    d = cfg.data

    def loader(epoch: int) -> DataLoader:
        ds = PackedTokenStream(
            shards,
            "train",
            d.seq_len,
            d.micro_batch_size,
            cfg.stage.grad_accum,
            seed=d.seed,
            epoch=epoch,
            shuffle=True,
            shuffle_block=d.shuffle_block,
            skip_corrupt=d.skip_corrupt,
            num_workers_hint=max(1, nw),
        )
        return DataLoader(
            ds, batch_size=None, num_workers=nw, persistent_workers=False, pin_memory=False, prefetch_factor=2 if nw > 0 else None
        )

    ends: list[float] = []
    losses: list[torch.Tensor] = []
    ntoks: list[torch.Tensor] = []
    step, epoch = 0, 0
    # phase split: seconds in data (waiting for the batch, host-to-device copy), forward (+ loss),
    # backward, optimizer (clip, step, zero_grad, schedule); on CUDA each phase ends in a sync
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    phases: list[tuple[float, float, float, float]] = []
    while step < total:
        it = iter(loader(epoch))
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            ids, labels = batch["input_ids"].to(dev), batch["labels"].to(dev)
            n = (labels != -100).sum()
            sync()
            t1 = time.perf_counter()
            fwd = bwd = 0.0
            loss_sum = torch.zeros((), device=dev)
            for i in range(ids.shape[0]):
                ta = time.perf_counter()
                with autocast():
                    out = model(input_ids=ids[i], use_cache=False)
                    nll, _ = token_nll_sum(out.logits, labels[i])
                sync()
                tb = time.perf_counter()
                (nll / n).backward()
                loss_sum += nll.detach()
                sync()
                fwd, bwd = fwd + tb - ta, bwd + time.perf_counter() - tb
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            sync()  # the framework's step ends in .item() calls: a sync
            ends.append(time.perf_counter())
            phases.append((t1 - t0, fwd, bwd, ends[-1] - t2))
            losses.append(loss_sum / n)
            ntoks.append(n)
            step += 1
            if step >= total:
                break
        epoch += 1
    wall = time.perf_counter() - t_start
    w = log_every
    last = (total // w) * w  # the framework's windows end at multiples of log_every
    toks = [int(x) for x in ntoks]
    windows = [sum(toks[a : a + w]) / (ends[a + w - 1] - ends[a - 1]) for a in range(w, last, w)]
    elapsed = ends[last - 1] - ends[w - 1]
    return {
        "tokens_per_s": sum(toks[w:last]) / elapsed,
        "windows": windows,
        "step_s": elapsed / (last - w),
        "losses": {i + 1: float(x) for i, x in enumerate(losses)},
        "phases_s": {k: sum(p[j] for p in phases[w:last]) / (last - w) for j, k in enumerate(("data", "forward", "backward", "optimizer"))},
        "wall_s": wall,
        "threads": threads,
        "load": (load0, loadavg()),
        "model": model,
    }


def bare_mfu(model: torch.nn.Module, seq_len: int, tokens_per_s: float, peak: float) -> float:
    from llm.model.build import count_params, flops_per_token

    return flops_per_token(model.config, count_params(model), seq_len) * tokens_per_s / peak


def bench_throughput(overrides: list[str], steps: int, log_every: int, repeats: int, workdir: Path, say) -> dict[str, Any]:
    cfg = compose_config(overrides)
    fw, bare, order = [], [], []
    loss_check: list[float] = []
    model = None
    for r, kind in interleaved(("bare", "framework"), repeats):
        if kind == "bare":
            res = run_bare(cfg, log_every)
            model = res.pop("model")
            bare.append(res)
        else:
            res = run_framework(cfg, Path(tempfile.mkdtemp(prefix=f"fw{r}-", dir=workdir)))
            fw.append(res)
        order.append(kind)
        say(
            f"  [{len(order)}/{2 * repeats}] {kind:9s} {res['tokens_per_s']:10.1f} tokens/s  "
            f"(best window {max(res['windows']):,.0f}; run {res['wall_s']:.1f} s; other processes {res['foreign_cores']:.2f} cores, steal {res['steal_cores']:.2f})"
        )
    # same work: the framework's logged losses against the bare loop's at the same steps
    for f in fw:
        for step, loss in f["losses"].items():
            if step in bare[0]["losses"]:
                loss_check.append(abs(loss - bare[0]["losses"][step]) / max(1e-12, abs(loss)))
    f_t = [x["tokens_per_s"] for x in fw]
    b_t = [x["tokens_per_s"] for x in bare]
    pairs = [f / b for f, b in zip(f_t, b_t)]
    return {
        "model": cfg.model.name,
        "seq_len": cfg.data.seq_len,
        "micro_batch_size": cfg.data.micro_batch_size,
        "grad_accum": cfg.stage.grad_accum,
        "num_workers": cfg.data.num_workers,
        "tokens_per_step": tokens_per_step(cfg),
        "steps": steps,
        "measured_steps": steps - log_every,
        "repeats": repeats,
        "order": order,
        "framework_tokens_per_s": f_t,
        "bare_tokens_per_s": b_t,
        "framework_median": statistics.median(f_t),
        "bare_median": statistics.median(b_t),
        "ratio": statistics.median(f_t) / statistics.median(b_t),
        "pair_ratios": pairs,
        "framework_mfu": statistics.median([x["mfu"] for x in fw if x["mfu"] is not None]) if any(x["mfu"] for x in fw) else None,
        "bare_step_s": statistics.median([x["step_s"] for x in bare]),
        "bare_phases_s": {k: statistics.median([x["phases_s"][k] for x in bare]) for k in bare[0]["phases_s"]},
        "framework_step_s": tokens_per_step(cfg) / statistics.median(f_t),
        "max_rel_loss_diff": max(loss_check) if loss_check else None,
        "framework_best_window": max(max(x["windows"]) for x in fw),
        "bare_best_window": max(max(x["windows"]) for x in bare),
        "framework_median_window": statistics.median([w for x in fw for w in x["windows"]]),
        "bare_median_window": statistics.median([w for x in bare for w in x["windows"]]),
        "framework_foreign_cores": [x["foreign_cores"] for x in fw],
        "bare_foreign_cores": [x["foreign_cores"] for x in bare],
        "framework_steal_cores": [x["steal_cores"] for x in fw],
        "bare_steal_cores": [x["steal_cores"] for x in bare],
        "threads": fw[0]["threads"],
        "_model": model,
        "_cfg": cfg,
    }


# a model so small that a step is almost all framework/loop work: the fixed cost per step
MICRO = [
    "model.n_layer=1",
    "model.n_embd=16",
    "model.n_head=2",
    "model.n_kv_head=1",
    "model.intermediate_size=32",
    "data.seq_len=16",
    "data.micro_batch_size=2",
]


def bench_fixed_cost(steps: int, log_every: int, repeats: int, workdir: Path, say, extra: list[str] = ()) -> dict[str, Any]:
    """Framework step time minus bare step time on a micro model (1 layer, 16 wide, 32 tokens)."""
    data_extra = [o for o in extra if o.startswith("data.") and not o.startswith(("data.seq_len", "data.micro_batch_size"))]
    r = bench_throughput(bench_overrides("tiny", steps, log_every, [*data_extra, *MICRO]), steps, log_every, repeats, workdir, say)
    tps = r["tokens_per_step"]
    fw_step = [tps / x for x in r["framework_tokens_per_s"]]
    bare_step = [tps / x for x in r["bare_tokens_per_s"]]
    return {
        "framework_step_s": statistics.median(fw_step),
        "bare_step_s": statistics.median(bare_step),
        "overhead_s": statistics.median(fw_step) - statistics.median(bare_step),
        "pair_overheads_s": [f - b for f, b in zip(fw_step, bare_step)],
        "max_rel_loss_diff": r["max_rel_loss_diff"],
        "steps": steps,
        "repeats": repeats,
    }


# ================================================================================ loader
def bench_loader(cfg, num_workers: int, seconds: float) -> dict[str, Any]:
    """Iterate the framework's train DataLoader alone for ``seconds`` (new epochs as needed)."""
    from omegaconf import OmegaConf

    from llm.data.builders import pretrain_data

    dm = pretrain_data(OmegaConf.merge(cfg, {"data": {"num_workers": num_workers}})).datamodule  # what training reads
    tokens = batches = epochs = 0
    first_batch_s: list[float] = []
    t0 = time.perf_counter()
    epoch = 0
    while time.perf_counter() - t0 < seconds:
        dm.on_epoch_start(epoch)
        ts = time.perf_counter()
        got = False
        for batch in dm.train_dataloader():
            if not got:
                first_batch_s.append(time.perf_counter() - ts)
                got = True
            tokens += int(batch["labels"].numel())
            batches += 1
            if time.perf_counter() - t0 >= seconds:
                break
        epoch += 1
        epochs += 1
    elapsed = time.perf_counter() - t0
    return {
        "num_workers": num_workers,
        "tokens_per_s": tokens / elapsed,
        "batches": batches,
        "epochs_started": epochs,
        "seconds": elapsed,
        "first_batch_s": statistics.median(first_batch_s) if first_batch_s else None,
    }


# ================================================================================ memory
def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(preset: str, seq_len: int, micro_batch_size: int, device: str, overrides: list[str] = ()) -> dict[str, Any]:
    """Run in a fresh process: memory of one training step of ``preset`` (see module doc)."""
    from llm.data.builders import resolve_data
    from llm.data.shards import PackedTokenStream
    from llm.losses import token_nll_sum
    from llm.model.build import build_seeded_model, count_params
    from llm.stages.base import param_groups

    cfg = compose_config(
        [f"model={preset}", "data=demo", *overrides, f"data.seq_len={seq_len}", f"data.micro_batch_size={micro_batch_size}"]
    )
    dev = torch.device(device)
    autocast = bench_device(cfg)[1] if dev.type == "cuda" else contextlib.nullcontext  # bf16-mixed as the framework
    tokenizer, shards = resolve_data(cfg.data)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    ds = PackedTokenStream(shards, "train", seq_len, micro_batch_size, 1, seed=cfg.data.seed, shuffle=True, num_workers_hint=1)
    it = iter(ds)
    batches = [next(it), next(it)]
    release_memory()
    rss_base = proc_status()["VmRSS"]
    _seed_all(cfg.seed)
    model = build_seeded_model(cfg.model, len(tokenizer), special, cfg.seed).to(dev)
    model.train()
    n_params = count_params(model)
    o = cfg.stage.optim
    opt = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=dev.type in ("cuda", "cpu")
    )
    params = [p for p in model.parameters()]
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            saved[s.data_ptr()] = s.nbytes()
        return t

    def step(batch, record: bool) -> float:
        ids, labels = batch["input_ids"][0].to(dev), batch["labels"][0].to(dev)
        n = (labels != -100).sum()
        ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if record else contextlib.nullcontext()
        with ctx, autocast():
            out = model(input_ids=ids, use_cache=False)
            nll, _ = token_nll_sum(out.logits, labels)
        (nll / n).backward()
        del out
        torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(nll / n)

    release_memory()
    rss_model = proc_status()["VmRSS"]
    step(batches[0], record=False)  # warm-up: AdamW state, kernels, allocator
    release_memory()
    rss_before = proc_status()["VmRSS"]
    res: dict[str, Any] = {
        "preset": preset,
        "seq_len": seq_len,
        "micro_batch_size": micro_batch_size,
        "device": str(dev),
        "params": n_params,
        "vocab": model.config.vocab_size,
    }
    if dev.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step(batches[1], record=True)
        torch.cuda.synchronize()
        res.update(
            method="torch.cuda.max_memory_allocated",
            steady=before,
            step_peak=torch.cuda.max_memory_allocated() - before,
            total=torch.cuda.max_memory_allocated(),
        )
    else:
        reset = _reset_peak()
        t0 = time.perf_counter()
        step(batches[1], record=True)
        st = proc_status()
        if not reset:
            res["warning"] = "/proc/self/clear_refs not writable: VmHWM covers the whole process"
        res.update(
            method="VmHWM after clear_refs=5 (mmap threshold pinned)",
            steady=rss_before - rss_base,
            step_peak=st["VmHWM"] - rss_before,
            total=st["VmHWM"] - rss_base,
            rss_model=rss_model - rss_base,
        )
    res["step_s"] = time.perf_counter() - t0
    res["saved_activations"] = sum(saved.values())
    res["logits_bytes"] = micro_batch_size * seq_len * model.config.vocab_size * 4
    res["static_bytes"] = 16 * n_params  # fp32 params + grads + AdamW exp_avg + exp_avg_sq
    return res


def bench_memory(preset: str, seq_len: int, micro_batch_size: int, overrides: list[str] = (), timeout: float = 600) -> dict[str, Any]:
    """:func:`memory_child` in a fresh ``python -m llm.bench.train`` process; ``overrides``: data.* only."""
    env = dict(os.environ)
    # large blocks are mmapped and returned on free: RSS follows live memory, not malloc's cache
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 20))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = [
        "--memory-child",
        preset,
        "--seq-len",
        str(seq_len),
        "--micro-batch-size",
        str(micro_batch_size),
        "--device",
        device,
        *[f"--override={o}" for o in overrides],
    ]
    return run_module("llm.bench.train", args, timeout=timeout, env=env, cwd=ROOT, name=f"memory child for {preset}")


# ================================================================================ report
def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f} MiB"


def format_report(
    machine: dict, thr: dict | None, loaders: list[dict], mems: list[dict], peak: float | None, notes: list[str], fixed: dict | None = None
) -> str:
    L: list[str] = []
    L.append("=" * 88)
    L.append("Xiulian benchmark")
    L.append(
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['cores_usable']} usable), "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), python {machine['python']}"
        + (f", lightning {machine.get('lightning')}, transformers {machine.get('transformers')}" if machine.get("lightning") else "")
        + (f", GPU {machine['cuda']}" if machine["cuda"] else "")
    )
    if peak and machine["cuda"]:
        L.append(f"peak FLOP/s used for MFU (llm.perf.peak_flops): {peak / 1e12:,.1f} TFLOP/s")
    elif peak:
        L.append(f"measured fp32 matmul peak (llm.perf.measured_matmul_flops, used by train/mfu): {peak / 1e9:,.1f} GFLOP/s")
    if thr:
        L.append("-" * 88)
        L.append(
            f"1. training throughput: model={thr['model']} data=demo seq_len={thr['seq_len']} micro_batch={thr['micro_batch_size']} "
            f"grad_accum={thr['grad_accum']} workers={thr['num_workers']} ({thr['tokens_per_step']} tokens/step)"
        )
        L.append(
            f"   {thr['steps']} steps per run, measured steps {thr['steps'] - thr['measured_steps'] + 1}..{thr['steps']}, "
            f"{thr['repeats']} runs each, order {' '.join(k[0].upper() for k in thr['order'])} (B=bare F=framework), torch threads {thr['threads']}"
        )
        L.append(
            f"   {'':11s}{'median':>9s}{'per run (all measured steps), tokens/s':>44s}{'spread':>9s}{'median win':>12s}{'best win':>10s}"
        )
        for name, key in (("bare loop", "bare"), ("framework", "framework")):
            xs = thr[f"{key}_tokens_per_s"]
            runs = " ".join(f"{x:,.0f}" for x in xs)
            spread = (max(xs) - min(xs)) / statistics.median(xs) * 100
            L.append(
                f"   {name:11s}{thr[f'{key}_median']:9,.0f}{runs:>44s}{spread:8.1f}%{thr[f'{key}_median_window']:12,.0f}{thr[f'{key}_best_window']:10,.0f}"
            )
        verdict = "OK" if thr["ratio"] >= 0.95 else "BELOW TARGET"
        L.append(f"   ratio framework/bare, medians of runs: {thr['ratio']:.3f}  (target >= 0.95: {verdict})")
        L.append(
            f"   per pair: {', '.join(f'{x:.3f}' for x in thr['pair_ratios'])};  median windows: "
            f"{thr['framework_median_window'] / thr['bare_median_window']:.3f};  best windows: "
            f"{thr['framework_best_window'] / thr['bare_best_window']:.3f}"
        )
        fc = thr["bare_foreign_cores"] + thr["framework_foreign_cores"]
        sc = thr["bare_steal_cores"] + thr["framework_steal_cores"]
        L.append(
            f"   other processes kept {min(fc):.2f}..{max(fc):.2f} cores busy during the runs, hypervisor steal "
            f"{min(sc):.2f}..{max(sc):.2f} cores (from /proc/stat)"
        )
        L.append(f"   bare step time (median): {thr['bare_step_s'] * 1000:,.1f} ms")
        ph, fw_step = thr["bare_phases_s"], thr["framework_step_s"]
        bare_step = sum(ph.values())
        L.append(
            "   step time split (bare loop): "
            + ", ".join(f"{k} {v * 1000:,.1f} ms ({v / bare_step * 100:.0f}%)" for k, v in ph.items())
            + f"; framework step {fw_step * 1000:,.1f} ms ({(fw_step - bare_step) * 1000:+,.1f} ms: Lightning, hooks, logging)"
        )
        L.append("   (phases are timed in the bare loop, which does the same work; on CUDA each phase ends in a synchronize)")
        if thr.get("framework_mfu") is not None:
            L.append(
                f"   MFU: framework train/mfu {thr['framework_mfu'] * 100:.2f}%  (bare, same formula: {thr.get('bare_mfu', 0) * 100:.2f}%)"
            )
        if thr.get("max_rel_loss_diff") is not None:
            L.append(f"   same work: max relative difference of logged train/loss, framework vs bare: {thr['max_rel_loss_diff']:.2e}")
    if fixed:
        L.append("-" * 88)
        L.append(
            f"1b. fixed cost per step (micro model: 1 layer, 16 wide, 2 x 16 tokens; {fixed['steps']} steps, {fixed['repeats']} runs each)"
        )
        L.append(
            f"   bare {fixed['bare_step_s'] * 1000:.2f} ms/step, framework {fixed['framework_step_s'] * 1000:.2f} ms/step: "
            f"the framework adds {fixed['overhead_s'] * 1000:.2f} ms per step (per pair: "
            f"{', '.join(f'{x * 1000:.2f}' for x in fixed['pair_overheads_s'])} ms)"
        )
        if thr:
            pred = thr["bare_step_s"] / (thr["bare_step_s"] + fixed["overhead_s"])
            L.append(
                f"   = {fixed['overhead_s'] / thr['bare_step_s'] * 100:.1f}% of a bare {thr['model']} step ({thr['bare_step_s'] * 1000:.0f} ms): "
                f"predicted framework/bare {pred:.3f}; the ratio falls to 0.95 at a bare step of {fixed['overhead_s'] * 19 * 1000:.0f} ms"
            )
    if loaders:
        L.append("-" * 88)
        train_tps = thr["framework_median"] if thr else None
        L.append("2. data loader alone (TokenDataModule.train_dataloader, new epochs included)")
        L.append(f"   {'workers':>8s}{'tokens/s':>16s}{'x training':>12s}{'batches':>10s}{'1st batch':>12s}")
        for r in loaders:
            x = f"{r['tokens_per_s'] / train_tps:,.0f}x" if train_tps else "-"
            tag = "  (config)" if r.get("config") else ""
            L.append(
                f"   {r['num_workers']:>8d}{r['tokens_per_s']:16,.0f}{x:>12s}{r['batches']:>10d}{(r['first_batch_s'] or 0) * 1000:>10.0f}ms{tag}"
            )
        if train_tps:
            L.append(f"   target: loader >= 10x training tokens/s ({train_tps:,.0f})")
    if mems:
        L.append("-" * 88)
        L.append(f"3. memory of one training step (fresh subprocess per preset; {mems[0]['method']})")
        L.append(
            f"   {'preset':12s}{'params':>10s}{'seq x mb':>10s}{'p+g+AdamW':>14s}{'steady':>14s}{'step peak':>14s}{'total peak':>14s}{'saved act.':>14s}{'logits':>12s}"
        )
        for m in mems:
            L.append(
                f"   {m['preset']:12s}{m['params'] / 1e6:9.1f}M{m['seq_len']:>6d}x{m['micro_batch_size']:<3d}{_mb(m['static_bytes']):>14s}"
                f"{_mb(m['steady']):>14s}{_mb(m['step_peak']):>14s}{_mb(m['total']):>14s}{_mb(m['saved_activations']):>14s}{_mb(m['logits_bytes']):>12s}"
            )
        L.append("   p+g+AdamW = 16 B/param computed (fp32 weights, grads, exp_avg, exp_avg_sq); steady = RSS after a warm-up step with")
        L.append("   grads freed, minus RSS before the model was built (weights + AdamW state = 12 B/param expected); step peak = peak RSS")
        L.append("   during the next step minus RSS before it (grads + activations + temporaries); total = peak - RSS before the model;")
        L.append("   saved act. = autograd's saved tensors (parameters excluded); logits = one fp32 [mb, seq, vocab] tensor.")
    for n in notes:
        L.append(f"note: {n}")
    L.append("=" * 88)
    return "\n".join(L)


def trl_baseline(say) -> dict[str, Any]:
    """``python -m llm.bench.sft --model tiny`` in a subprocess: Xiulian's SFT against TRL's SFTTrainer."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sft.json"
        try:
            res = run_module("llm.bench.sft", ["--model", "tiny", "--lora-repeats", "0", "--json", str(out)], timeout=1800, out=out)
        except ChildFailed as e:
            return {"skipped": str(e).splitlines()[0]}
        thr = res.get("throughput", {})
    if "ratio" not in thr:
        return {"skipped": "llm.bench.sft ran without TRL (is trl installed? pip install -e .[bench])"}
    say(f"  SFT tokens/s: Xiulian {thr['xiulian']['tokens_per_s_median']:,.1f}, TRL {thr['trl']['tokens_per_s_median']:,.1f}")
    return {
        "model": "tiny",
        "xiulian": thr["xiulian"]["tokens_per_s_median"],
        "trl": thr["trl"]["tokens_per_s_median"],
        "ratio": thr["ratio"],
        "pair_ratios": thr.get("pair_ratios"),
    }


def append_markdown(path: Path, out: dict[str, Any], args: argparse.Namespace) -> Path:
    """Append one section (machine, command, table of figures) to a Markdown file."""
    m, thr, fixed = out["machine"], out["throughput"], out["fixed_cost"]
    rows: list[tuple[str, str, str]] = []
    if thr:
        rows += [
            (
                "training tokens/s, framework (median)",
                f"{thr['framework_median']:,.0f}",
                f"model={thr['model']}, {thr['tokens_per_step']} tokens/step",
            ),
            ("training tokens/s, bare PyTorch loop", f"{thr['bare_median']:,.0f}", "same model, data, optimizer, schedule"),
            ("**ratio framework / bare**", f"**{thr['ratio']:.3f}**", f"per pair {', '.join(f'{x:.3f}' for x in thr['pair_ratios'])}"),
            ("step time (framework)", f"{thr['framework_step_s'] * 1000:,.1f} ms", ""),
        ]
        bare_step = sum(thr["bare_phases_s"].values())
        for k, v in thr["bare_phases_s"].items():
            rows.append((f"  {k}", f"{v * 1000:,.1f} ms", f"{v / bare_step * 100:.0f}% of a bare-loop step ({bare_step * 1000:,.1f} ms)"))
        if thr.get("framework_mfu") is not None:
            rows.append(
                (
                    "MFU",
                    f"{thr['framework_mfu'] * 100:.2f}%",
                    f"peak {out['peak_flops'] / 1e9:,.0f} GFLOP/s measured by a matmul"
                    if not m["cuda"]
                    else f"peak {out['peak_flops'] / 1e12:,.0f} TFLOP/s",
                )
            )
    if fixed:
        rows.append(
            ("framework's fixed cost per step", f"{fixed['overhead_s'] * 1000:.2f} ms", "micro model: framework minus bare step time")
        )
    for mem in out["memory"]:
        rows.append(
            (
                f"peak memory of a step, {mem['preset']} {mem['seq_len']}x{mem['micro_batch_size']}",
                _mb(mem["total"]),
                f"{mem['params'] / 1e6:.1f}M params; {mem['method']}",
            )
        )
    lit = out["baselines"].get("litgpt")
    if lit and "skipped" not in lit:
        rows.append(
            (
                "**ratio Xiulian / litgpt pretrain**",
                f"**{lit['ratio_xiulian_vs_litgpt']:.3f}**",
                f"litgpt {lit['litgpt_version']} (torch.compile) {lit['tokens_per_s']['litgpt']:,.0f} tokens/s; Xiulian compiled: ratio {lit['ratio_xiulian_compiled_vs_litgpt']:.3f}",
            )
        )
    trl = out["baselines"].get("trl")
    if trl and trl.get("ratio"):
        rows.append(
            (
                "**ratio Xiulian / TRL SFTTrainer**",
                f"**{trl['ratio']:.3f}**",
                f"SFT, {trl['model']} model: {trl['xiulian']:,.1f} vs {trl['trl']:,.1f} tokens/s",
            )
        )
    machine = (
        f"{m['cpu']}, {m['cores_usable']} usable cores, torch {m['torch']} ({m['torch_threads']} threads)"
        + (f", GPU {m['cuda']}" if m["cuda"] else "")
        + f", lightning {m.get('lightning')}, transformers {m.get('transformers')}"
    )
    lines = [
        f"- machine: {machine}",
        f"- command: `{command_line('llm.bench', args.argv)}`",
        "",
        *md_table(["figure", "value", "notes"], rows, "lrl"),
    ]
    return append_section(
        path,
        f"{utc_stamp(out['time'])} -- {thr['model'] if thr else args.model}",
        lines,
        "# Benchmarks\n\nAppended by `python -m llm.bench --markdown BENCHMARKS.md`; each section is one run.\n",
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ================================================================================== main
def run(args: argparse.Namespace, say=print) -> dict[str, Any]:
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    os.environ.setdefault("WANDB_MODE", "offline")
    from llm.perf import measured_matmul_flops

    machine = machine_info(runtime=True)
    notes: list[str] = []
    load0 = loadavg()
    t_all = time.perf_counter()
    if torch.cuda.is_available():
        from llm.perf import peak_flops

        peak = peak_flops(torch.device("cuda"), "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")
    else:
        peak = measured_matmul_flops("cpu", torch.float32)
    own_workdir = not args.workdir
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="xiulian-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    extra = list(args.override or [])
    if args.seq_len:
        extra.append(f"data.seq_len={args.seq_len}")
    if args.micro_batch_size:
        extra.append(f"data.micro_batch_size={args.micro_batch_size}")
    thr = None
    if not args.skip_throughput:
        say(f"1. throughput: model={args.model}, {args.steps} steps x {args.repeats} runs each (bare, framework, interleaved)")
        thr = bench_throughput(
            bench_overrides(args.model, args.steps, args.log_every, extra), args.steps, args.log_every, args.repeats, workdir, say
        )
        if peak:
            thr["bare_mfu"] = bare_mfu(thr["_model"], thr["seq_len"], thr["bare_median"], peak)
    fixed = None
    if not args.skip_fixed_cost:
        say(f"1b. fixed cost per step: micro model, {args.fixed_steps} steps x {args.fixed_repeats} runs each")
        fixed = bench_fixed_cost(args.fixed_steps, args.fixed_steps // 4, args.fixed_repeats, workdir, say, extra)
    loaders: list[dict] = []
    if not args.skip_loader:
        cfg = thr["_cfg"] if thr else compose_config(bench_overrides(args.model, args.steps, args.log_every, extra))
        wanted = [cfg.data.num_workers] + [w for w in (0, 2) if w != cfg.data.num_workers]
        say(f"2. data loader alone: workers {wanted}, {args.loader_seconds:.0f} s each")
        for w in wanted:
            r = bench_loader(cfg, w, args.loader_seconds)
            r["config"] = w == cfg.data.num_workers
            if thr:
                r["x_training"] = r["tokens_per_s"] / thr["framework_median"]
            loaders.append(r)
            say(f"  workers={w}: {r['tokens_per_s']:,.0f} tokens/s")
    mems: list[dict] = []
    for spec in args.memory:
        preset, _, rest = spec.partition(":")
        seq, _, mb = rest.partition("x")
        say(f"3. memory: {preset} seq_len={seq} micro_batch={mb} (fresh subprocess)")
        mems.append(
            bench_memory(
                preset,
                int(seq),
                int(mb),
                [o for o in extra if o.startswith("data.") and not o.startswith(("data.seq_len", "data.micro_batch_size"))],
            )
        )
    baselines: dict[str, Any] = {}
    if "litgpt" in args.baselines:
        from llm.bench.litgpt import compare as litgpt_compare
        from llm.bench.litgpt import format_report as litgpt_report

        say(f"4. baseline: litgpt's pretraining loop, model={args.model}, {args.steps} steps")
        baselines["litgpt"] = litgpt_compare(args.model, args.steps, args.log_every, max(1, args.repeats // 2), extra, say)
        notes.append(litgpt_report(baselines["litgpt"]).replace("\n", "\n      "))
    if "trl" in args.baselines:
        say("5. baseline: TRL's SFTTrainer (python -m llm.bench.sft, tiny model)")
        baselines["trl"] = trl_baseline(say)
        if "ratio" in baselines["trl"]:
            notes.append(
                f"SFT: Xiulian {baselines['trl']['xiulian']:,.1f} vs TRL SFTTrainer {baselines['trl']['trl']:,.1f} tokens/s, "
                f"ratio {baselines['trl']['ratio']:.3f} ({baselines['trl']['model']} model, same data and schedule)"
            )
    peak_again = None
    if peak and not torch.cuda.is_available():
        # the framework's MFU uses the first (cached) measurement; a second look shows its noise
        peak_again = [measured_matmul_flops.__wrapped__("cpu", torch.float32) for _ in range(3)]
        notes.append(
            f"matmul peak measured again at the end (3 x 0.5 s): {', '.join(f'{x / 1e9:,.1f}' for x in peak_again)} GFLOP/s; "
            "train/mfu divides by the first measurement, so MFU moves with that noise"
        )
    if own_workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    load1 = loadavg()
    notes.append(f"whole benchmark took {time.perf_counter() - t_all:.0f} s")
    report = format_report(machine, thr, loaders, mems, peak, notes, fixed)
    say(report)
    out = {
        "machine": machine,
        "peak_flops": peak,
        "peak_flops_again": peak_again,
        "throughput": thr,
        "fixed_cost": fixed,
        "loaders": loaders,
        "memory": mems,
        "baselines": baselines,
        "load": [load0, load1],
        "time": time.time(),
    }
    if args.markdown:
        md = append_markdown(Path(args.markdown), out, args)
        say(f"appended to {md}")
    if args.json:
        with open(args.json, "a") as f:
            for kind, payload in (
                ("throughput", thr),
                ("fixed_cost", fixed),
                *[("loader", x) for x in loaders],
                *[("memory", x) for x in mems],
            ):
                if payload is not None:
                    f.write(json.dumps({"kind": kind, "machine": machine, "peak_flops": peak, **_jsonable(payload)}) + "\n")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argument_parser("llm.bench", __doc__)
    p.add_argument("--quick", action="store_true", help="about a minute: fewer steps and runs, no 117M memory run")
    p.add_argument("--model", default="tiny", help="model preset for the throughput comparison (tiny, gpt1_117m, ...)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 30; quick 24)")
    p.add_argument("--log-every", type=int, default=None, help="steps per tokens/s window; the first is warm-up (default 5; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each loop, interleaved ABBA (default 6; quick 2)")
    p.add_argument("--seq-len", type=int, default=None, help="override data.seq_len")
    p.add_argument("--micro-batch-size", type=int, default=None, help="override data.micro_batch_size")
    p.add_argument("--override", action="append", help="extra Hydra override for the throughput runs (repeatable)")
    p.add_argument("--loader-seconds", type=float, default=None, help="seconds per data-loader measurement (default 5; quick 1)")
    p.add_argument(
        "--memory",
        action="append",
        default=None,
        metavar="PRESET:SEQxMB",
        help="memory run, e.g. gpt1_117m:256x4 (repeatable; default tiny:128x16 and gpt1_117m:256x4; quick: tiny only)",
    )
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-loader", action="store_true")
    p.add_argument("--skip-fixed-cost", action="store_true", help="skip the micro-model run that measures the framework's cost per step")
    p.add_argument("--fixed-steps", type=int, default=None, help="steps per micro-model run (default 400; quick 120)")
    p.add_argument("--fixed-repeats", type=int, default=None, help="micro-model runs of each loop (default 3; quick 2)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--workdir", default=None, help="where the framework runs write (default: a temporary directory)")
    p.add_argument("--json", default=None, metavar="PATH", help="append one JSON line per figure to PATH")
    p.add_argument(
        "--markdown", default=None, metavar="PATH", help="append the results as a section of a Markdown table file (BENCHMARKS.md)"
    )
    p.add_argument("--baselines", default="", help="comma-separated extra baselines run in the same benchmark: litgpt, trl (default: none)")
    # internal: the memory measurement in a fresh process
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)  # for the report's command line
    q = a.quick
    a.steps = a.steps or (24 if q else 30)
    a.log_every = a.log_every or (4 if q else 5)
    a.repeats = a.repeats or (2 if q else 6)
    a.fixed_repeats = a.fixed_repeats or (2 if q else 3)
    a.loader_seconds = a.loader_seconds or (1.0 if q else 5.0)
    a.fixed_steps = a.fixed_steps or (120 if q else 400)
    if a.skip_memory:
        a.memory = []
    elif a.memory is None:
        a.memory = ["tiny:128x16"] if q else ["tiny:128x16", "gpt1_117m:256x4"]
    a.baselines = [b for b in a.baselines.split(",") if b]
    unknown = set(a.baselines) - {"litgpt", "trl"}
    if unknown:
        p.error(f"--baselines: unknown {', '.join(sorted(unknown))} (choose from litgpt, trl)")
    a.steps = -(-a.steps // a.log_every) * a.log_every  # windows end at multiples of log_every
    a.fixed_steps = -(-a.fixed_steps // 4) * 4
    if a.steps < 2 * a.log_every:
        p.error(f"--steps ({a.steps}) must be at least 2 x --log-every ({a.log_every}): the first window is warm-up")
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("XIULIAN_CACHE", str(Path.home() / ".cache" / "xiulian"))
    if args.memory_child:
        print_result(memory_child(args.memory_child, args.seq_len or 128, args.micro_batch_size or 16, args.device, args.override or []))
        return
    run(args)


if __name__ == "__main__":
    main()
