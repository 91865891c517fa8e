"""What only a GPU shows, in one run: ``bash launch/gpu-check.sh [--out DIR] [--smollm2 DIR]``
(``python -m llm.bench.gpu_check``). Written for one H100 within 8 minutes; on a machine without
CUDA (or with ``--dry-run``) the same steps run at tiny sizes on CPU, which is how CI keeps it
from rotting.

Steps, each the real ``python -m llm.train`` in a fresh process (a failed step is recorded with
its reason and the others still run):

1. ``pretrain``: bf16-mixed pretraining of ``llama_1b`` (dry: ``tiny``, fp32): tokens/s, MFU
   against 989 TFLOP/s (H100 dense bf16) and the peak CUDA memory beside the planner's prediction
   (``llm.plan``; dry: peak RSS over a step above the process's non-tensor base);
2. ``pretrain_compiled``: the same with ``trainer.compile=true``;
3. ``fsdp``, ``deepspeed_zero2``, ``deepspeed_zero3``: the same model under each strategy on one
   GPU (torchrun, one process);
4. ``sft_lora``: LoRA SFT of SmolLM2 (``--smollm2 DIR``, a Hugging Face directory; dry: the
   export of step 1) in bf16;
5. ``ppo``: one PPO iteration of the same model with a rule-based reward.
6. ``grpo_vllm``: one GRPO iteration of the same model on built-in arithmetic, rolled out by the
   colocated vLLM engine (``stage.rollout.engine=vllm``; its log-prob check and TIS logged);
   skipped without CUDA or the ``vllm`` extra.

Beside them, which scaled-dot-product-attention kernels accept the 1B model's attention shape
(flash, memory-efficient, cuDNN, math). The summary goes to ``gpu-check.md`` and ``gpu-check.json``
in ``--out``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llm.bench.common import ROOT, argument_parser, child_env, read_metrics, torchrun

H100_BF16 = 989e12
COMMON = [
    "data=demo",
    "trainer.log_every_n_steps=1",
    "trainer.progress_bar=false",
    "trainer.ckpt_every_n_steps=0",
    "trainer.val_every_n_steps=100000",
    "eval=none",
    "stage.sample_prompts=[]",
    "trainer.memory_report=true",
]


def sizes(dry: bool) -> dict[str, Any]:
    if dry:
        return {
            "model": "tiny",
            "seq_len": 64,
            "micro_batch": 4,
            "steps": 3,
            "precision": "32-true",
            "extra": ["strategy.accelerator=cpu", "data.vocab_size=1024", "model.max_seq_len=64", "data.num_workers=0"],
        }
    return {"model": "llama_1b", "seq_len": 2048, "micro_batch": 4, "steps": 20, "precision": "bf16-mixed", "extra": []}


def sdpa_kernels(dry: bool) -> dict[str, str]:
    """Which SDPA backends run the 1B model's attention (32 heads of 64, 8 KV heads) in bf16 on
    the GPU (dry: fp32 on CPU): ``ok`` or the reason the backend refused."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    q = torch.randn(1, 32, 256, 64, device=dev, dtype=dtype)
    k = v = torch.randn(1, 32, 256, 64, device=dev, dtype=dtype)
    out = {}
    for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel([b]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            out[b.name.lower()] = "ok"
        except RuntimeError as e:
            out[b.name.lower()] = f"no: {str(e).splitlines()[0][:120]}"
    return out


def run_step(name: str, overrides: list[str], out: Path, nproc: int | None, timeout: float) -> dict[str, Any]:
    run = out / name
    launcher = torchrun(nproc) if nproc else [sys.executable]
    cmd = [*launcher, "-m", "llm.train", *overrides, f"hydra.run.dir={run}"]
    env = child_env()
    env["MALLOC_MMAP_THRESHOLD_"] = env["MALLOC_TRIM_THRESHOLD_"] = str(1 << 20)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))  # DeepSpeed's ops, built once per checkout
    t0 = time.time()
    res: dict[str, Any] = {"step": name, "command": " ".join(cmd[1:] if not nproc else cmd)}
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        res["seconds"] = round(time.time() - t0, 1)
        if p.returncode:
            tail = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
            return {**res, "status": "failed", "reason": (tail[-1] if tail else f"rc {p.returncode}")[:300]}
    except subprocess.TimeoutExpired:
        return {**res, "status": "failed", "reason": f"timed out after {timeout:.0f} s", "seconds": round(time.time() - t0, 1)}
    res["status"] = "ok"
    try:
        rows = read_metrics(run)
        tps = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
        mfu = [float(r["train/mfu"]) for r in rows if r.get("train/mfu")]
        if tps:
            res["tokens_per_s"] = statistics.median(tps[1:] or tps)
        if mfu:
            res["mfu_logged"] = statistics.median(mfu[1:] or mfu)
    except OSError:
        pass
    mem = run / "memory_per_rank.json"
    if mem.is_file():
        rank = json.loads(mem.read_text())["ranks"][0]
        if "cuda_peak" in rank:
            res["peak_bytes"], res["peak_kind"] = rank["cuda_peak"], "max_memory_allocated"
        elif "rss_step_peak" in rank:
            res["peak_bytes"] = rank["rss_step_peak"] - (rank["rss_before_step"] - rank["tensors_before_step"])
            res["peak_kind"] = "peak RSS over a step above the non-tensor base"
    return res


def predicted(sz: dict[str, Any], strategy: str, dry: bool) -> int:
    from llm import plan
    from llm.bench.common import compose_config

    cfg = compose_config([f"model={sz['model']}", *[o for o in sz["extra"] if o.startswith(("model.", "data.vocab"))]])
    s = plan.shape_of(cfg.model, 1024 if dry else 4096)
    st = plan.Setting(
        strategy=strategy,
        precision=sz["precision"],
        nodes=1,
        gpus_per_node=1,
        micro_batch=sz["micro_batch"],
        seq_len=sz["seq_len"],
        device="cpu" if dry else "gpu",
    )
    return plan.estimate(s, st, overhead=0).total


def flops_per_token(sz: dict[str, Any], dry: bool) -> float:
    from llm import plan
    from llm.bench.common import compose_config

    cfg = compose_config([f"model={sz['model']}", *[o for o in sz["extra"] if o.startswith(("model.", "data.vocab"))]])
    s = plan.shape_of(cfg.model, 1024 if dry else 4096)
    n = plan.param_count(s) - (0 if s.tie else s.vocab * s.d)  # the input embedding is a lookup
    return 6.0 * n + 12.0 * s.n_layer * s.d * sz["seq_len"]


def markdown(summary: dict[str, Any]) -> str:
    gib = 2**30
    lines = [
        f"# GPU check ({'dry run on CPU, tiny sizes' if summary['dry_run'] else summary.get('device', 'GPU')})",
        "",
        f"model {summary['sizes']['model']}, seq {summary['sizes']['seq_len']} x micro-batch {summary['sizes']['micro_batch']}, "
        f"{summary['sizes']['precision']}, {summary['seconds']:.0f} s in all",
        "",
        "| step | status | tokens/s | MFU (vs 989 TFLOP/s) | peak memory GiB | planner GiB | ratio | seconds | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in summary["steps"]:
        peak, pred = r.get("peak_bytes"), r.get("predicted_bytes")
        cells = [
            r["step"],
            r["status"],
            f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-",
            f"{r['mfu_h100']:.1%}" if "mfu_h100" in r else "-",
            f"{peak / gib:.3f}" if peak else "-",
            f"{pred / gib:.3f}" if pred else "-",
            f"{pred / peak:.2f}" if peak and pred else "-",
            r.get("seconds", "-"),
            r.get("reason", r.get("peak_kind", "")),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "SDPA kernels for the 1B attention shape: " + ", ".join(f"{k} {v}" for k, v in summary["sdpa"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("llm.bench.gpu_check", __doc__)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (automatic without CUDA)")
    ap.add_argument("--out", default="gpu-check", help="where the runs, gpu-check.md and gpu-check.json go")
    ap.add_argument("--smollm2", default=os.environ.get("SMOLLM2"), help="SmolLM2 Hugging Face directory for the LoRA SFT and PPO steps")
    ap.add_argument("--step-timeout", type=float, default=None, help="seconds per step (default 150 on a GPU, 600 dry)")
    args = ap.parse_args(argv)
    import torch

    dry = args.dry_run or not torch.cuda.is_available()
    sz = sizes(dry)
    timeout = args.step_timeout or (600 if dry else 150)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base = [*COMMON, f"model={sz['model']}", f"data.seq_len={sz['seq_len']}", f"data.micro_batch_size={sz['micro_batch']}"]
    base += [f"trainer.max_steps={sz['steps']}", f"trainer.precision={sz['precision']}", *sz["extra"]]
    steps: list[dict[str, Any]] = []

    def step(name: str, overrides: list[str], strategy: str, nproc: int | None = None) -> dict[str, Any]:
        print(f"[gpu-check] {name} ...", flush=True)
        r = run_step(name, overrides, out, nproc, timeout)
        if r["status"] == "ok" and name.startswith(("pretrain", "fsdp", "deepspeed")):
            r["predicted_bytes"] = predicted(sz, strategy, dry)
            if "tokens_per_s" in r and not dry:
                r["mfu_h100"] = r["tokens_per_s"] * flops_per_token(sz, dry) / H100_BF16
        print(f"[gpu-check]   {r['status']} {r.get('reason', '')}", flush=True)
        steps.append(r)
        return r

    pre = step("pretrain", [*base, f"export={str(dry).lower()}"], "single")
    step("pretrain_compiled", [*base, "trainer.compile=true", "export=false"], "single")
    for s in ("fsdp", "deepspeed_zero2", "deepspeed_zero3"):
        step(s, [*base, f"strategy={s}", "export=false"], s, nproc=1)
    model_dir = args.smollm2 or (str(out / "pretrain" / "export") if dry and pre["status"] == "ok" else None)
    if model_dir:
        ft = [
            *(o for o in COMMON if o not in ("data=demo", "trainer.memory_report=true")),
            "model=hf",
            f"model.pretrained={model_dir}",
            f"trainer.precision={sz['precision']}",
            "export=false",
        ]
        ft += [o for o in sz["extra"] if not o.startswith(("model.", "data.vocab"))]
        sft_seq = sz["seq_len"] if dry else 512
        step("sft_lora", [*ft, "stage=sft_lora", "data=sft_demo", f"trainer.max_steps={sz['steps']}", f"data.seq_len={sft_seq}"], "single")
        ppo = [*ft, "stage=ppo", "data=prompts_demo", "stage.reward.function=short", "trainer.max_steps=1", "data.micro_batch_size=4"]
        step("ppo", [*ppo, "stage.ppo.max_new_tokens=16"], "single")
        # one GRPO iteration rolled out by vLLM, colocated (llm/rl/engines.py): needs CUDA and the vllm extra
        if dry or importlib.util.find_spec("vllm") is None:
            reason = "needs CUDA and the vllm extra (pip install -e '.[vllm]')"
            steps.append({"step": "grpo_vllm", "status": "skipped", "reason": reason})
        else:
            grpo = [*ft, "stage=grpo", "data=tasks_demo", "trainer.max_steps=1", "data.micro_batch_size=4", "stage.rollout.engine=vllm"]
            step("grpo_vllm", [*grpo, "stage.grpo.max_new_tokens=64", "stage.grpo.group_size=8"], "single")
    else:
        for name in ("sft_lora", "ppo", "grpo_vllm"):
            steps.append({"step": name, "status": "skipped", "reason": "no SmolLM2 directory: --smollm2 DIR or $SMOLLM2"})
    summary = {
        "dry_run": dry,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "sizes": {k: v for k, v in sz.items() if k != "extra"},
        "sdpa": sdpa_kernels(dry),
        "steps": steps,
        "seconds": time.time() - t0,
    }
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=1))
    (out / "gpu-check.md").write_text(markdown(summary))
    print(markdown(summary))
    print(f"[gpu-check] written: {out / 'gpu-check.md'}, {out / 'gpu-check.json'}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
