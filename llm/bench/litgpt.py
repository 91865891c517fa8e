"""Baseline: litgpt's own pretraining loop (``litgpt.pretrain``) against Xiulian's, same model
shape, same data, same machine, one run.

    python -m llm.bench.litgpt                  # tiny preset, demo data
    python -m llm.bench.litgpt --steps 40 --model tiny --json out.jsonl

litgpt (0.5.13) is installed on first use into the cache (``pip install --no-deps --target``;
its pinned ``huggingface_hub<1.4`` would otherwise downgrade the one transformers 5 needs) and
imported only in a child process. The child runs ``litgpt.pretrain.setup`` unmodified with:

* ``model_config``: litgpt's ``GPT`` with our preset's shape -- Llama blocks (RMSNorm, SwiGLU
  ``LLaMAMLP``, RoPE, grouped-query attention), same layers, width, heads, KV heads, MLP width
  and padded vocabulary; the parameter counts are printed and must be equal;
* ``data``: a litgpt ``DataModule`` over our packed demo shards (``PackedTokenStream``: the same
  ``seq_len + 1`` windows, same micro-batch size, same DataLoader workers);
* AdamW with our lr, betas, eps and weight decay, the same warm-up, grad-norm clip 1.0, fp32.

Only the final checkpoint write is switched off (``save_checkpoint``), as our runs export nothing.

litgpt always wraps the model in ``torch.compile``, so Xiulian is measured both ways
(``trainer.compile=false``, its default, and ``true``). Every run is a fresh process (litgpt's,
and Xiulian's ``llm.train.train`` too), interleaved. Timing is the same on both sides: the
wall clock between consecutive optimizer steps (litgpt: each call of its loss function, which
it makes once per iteration outside the compiled model), first ``log_every`` steps left out
(warm-up, compilation). Losses cannot match step for step (different initialisation and fused
vs for-loop AdamW on CPU); both must fall.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from llm.bench.common import (
    argument_parser,
    bench_overrides,
    cache_root,
    compose_config,
    interleaved,
    pip_install_into,
    run_framework,
    run_module,
)

LITGPT_VERSION = "0.5.13"
# litgpt's import-time requirements beyond what Xiulian already installs (torch, lightning, ...)
LITGPT_EXTRA = ["jsonargparse==4.41.0", "docstring_parser", "typeshed_client"]


def ensure_litgpt(say=print) -> tuple[str | None, str]:
    """(a directory to put on PYTHONPATH, how it was found) or (None, why not)."""
    target = cache_root() / "bench_litgpt" / f"litgpt-{LITGPT_VERSION}"
    if (target / "litgpt" / "pretrain.py").is_file():
        return str(target), f"cached litgpt=={LITGPT_VERSION} at {target}"
    say(f"  installing litgpt=={LITGPT_VERSION} (no dependencies) into {target}")
    ok, err = pip_install_into(target, [f"litgpt=={LITGPT_VERSION}", *LITGPT_EXTRA])
    if not ok:
        return None, f"`pip install litgpt=={LITGPT_VERSION}` failed: {err}"
    return str(target), f"litgpt=={LITGPT_VERSION} installed into {target}"


# ============================================================================ child
def litgpt_config(cfg: Any, vocab: int) -> Any:
    from litgpt.config import Config

    from llm.model.build import _pad_vocab, llama_intermediate

    m = cfg.model
    if m.arch != "llama":
        raise ValueError(f"model.arch={m.arch}: the litgpt baseline mirrors the llama architecture only")
    kv = m.n_kv_head or m.n_head
    return Config(
        name=f"xiulian-{m.name}",
        block_size=cfg.data.seq_len,
        vocab_size=vocab,
        padded_vocab_size=m.vocab_size or _pad_vocab(vocab),
        n_layer=m.n_layer,
        n_embd=m.n_embd,
        n_head=m.n_head,
        n_query_groups=kv,
        head_size=m.n_embd // m.n_head,
        intermediate_size=m.intermediate_size or llama_intermediate(m.n_embd),
        bias=False,
        norm_class_name="RMSNorm",
        norm_eps=m.norm_eps,
        mlp_class_name="LLaMAMLP",
        rotary_percentage=1.0,
        parallel_residual=False,
        rope_base=int(m.rope_theta),
    )


def child(overrides: list[str], steps: int, log_every: int, out: str) -> None:
    import time

    import litgpt.pretrain as lp
    import torch
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.data import DataModule
    from torch.utils.data import DataLoader, IterableDataset

    from llm.data.builders import resolve_data
    from llm.data.shards import PackedTokenStream
    from llm.model.build import build_model, count_params

    cfg = compose_config(overrides)
    d, o = cfg.data, cfg.stage.optim
    tokenizer, shards = resolve_data(d)
    lconf = litgpt_config(cfg, len(tokenizer))

    class Windows(IterableDataset):
        def __init__(self, split: str, max_steps: int | None = None) -> None:
            self.split, self.max_steps = split, max_steps

        def __iter__(self):
            ds = PackedTokenStream(
                shards,
                self.split,
                d.seq_len,
                d.micro_batch_size,
                1,
                seed=d.seed,
                epoch=0,
                shuffle=self.split == "train",
                shuffle_block=d.shuffle_block,
                num_workers_hint=max(1, d.num_workers),
                max_steps=self.max_steps,
            )
            for b in ds:  # the same L+1 windows the framework trains on
                yield torch.cat([b["input_ids"][0], b["labels"][0, :, -1:]], dim=1)

    class Packed(DataModule):
        def connect(self, tokenizer: Any = None, batch_size: int = 1, max_seq_length: int | None = None) -> None:
            pass

        def setup(self, stage: str = "") -> None:
            pass

        def train_dataloader(self) -> DataLoader:
            return DataLoader(Windows("train"), batch_size=None, num_workers=d.num_workers)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(Windows("val", 2), batch_size=None, num_workers=0)

    stamps: list[float] = []
    losses: list[float] = []
    ce = lp.chunked_cross_entropy

    def timed_ce(logits, targets, *a, **k):  # called once per iteration by litgpt's fit loop
        loss = ce(logits, targets, *a, **k)
        if logits.device.type != "meta":  # measure_flops calls it once on the meta model
            stamps.append(time.perf_counter())
            losses.append(float(loss.detach()))
        return loss

    lp.chunked_cross_entropy = timed_ce
    lp.save_checkpoint = lambda *a, **k: None  # the final checkpoint is not part of what is compared
    ours = count_params(
        build_model(
            cfg.model,
            len(tokenizer),
            {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        )
    )
    tokens = steps * d.micro_batch_size * d.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        lp.setup(
            "xiulian",
            model_config=lconf,
            out_dir=Path(tmp),
            precision="32-true",
            data=Packed(),
            train=TrainArgs(
                save_interval=10**9,
                log_interval=log_every,
                global_batch_size=d.micro_batch_size,
                micro_batch_size=d.micro_batch_size,
                lr_warmup_steps=o.warmup_steps,
                max_tokens=tokens,
                max_seq_length=d.seq_len,
                max_norm=o.grad_clip,
                min_lr=o.lr * o.min_lr_ratio,
            ),
            eval=EvalArgs(interval=10**9, initial_validation=False, final_validation=False, max_iters=1),
            optimizer={
                "class_path": "torch.optim.AdamW",
                "init_args": {"lr": o.lr, "weight_decay": o.weight_decay, "betas": list(o.betas), "eps": o.eps},
            },
            devices=1,
            logger_name="csv",
            seed=cfg.seed,
        )
        import litgpt.model

        theirs = count_params(litgpt.model.GPT(lconf))
    ends = stamps[:steps]
    w = log_every
    n_tok = d.micro_batch_size * d.seq_len
    last = (len(ends) // w) * w
    windows = [w * n_tok / (ends[a + w - 1] - ends[a - 1]) for a in range(w, last, w)]
    res = {
        "tokens_per_s": (last - w) * n_tok / (ends[last - 1] - ends[w - 1]),
        "windows": windows,
        "losses": losses[:steps],
        "params_litgpt": theirs,
        "params_xiulian": ours,
        "steps": len(ends),
        "threads": torch.get_num_threads(),
    }
    Path(out).write_text(json.dumps(res))


# ============================================================================ parent
def run_litgpt(overrides: list[str], steps: int, log_every: int, path: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "litgpt.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        args = [
            "--child",
            str(out),
            "--steps",
            str(steps),
            "--log-every",
            str(log_every),
            *[x for o in overrides for x in ("--override", o)],
        ]
        return run_module("llm.bench.litgpt", args, timeout=1800, env=env, out=out, name="litgpt run")


def xiulian_child(overrides: list[str], out: str, workdir: str) -> None:
    res = run_framework(compose_config(overrides), Path(tempfile.mkdtemp(dir=workdir)))
    Path(out).write_text(json.dumps({k: v for k, v in res.items() if k in ("tokens_per_s", "windows", "losses")}))


def run_xiulian(overrides: list[str], compile: bool, workdir: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(dir=workdir)) / "xiulian.json"
    ov = [*overrides, f"trainer.compile={compile}"]
    args = ["--xiulian-child", str(out), "--workdir", workdir, *[x for o in ov for x in ("--override", o)]]
    res = run_module("llm.bench.litgpt", args, timeout=1800, out=out, name="Xiulian run")
    res["losses"] = {int(k): v for k, v in res["losses"].items()}
    return res


def compare(model: str, steps: int, log_every: int, repeats: int, extra: list[str], say=print) -> dict[str, Any]:
    path, how = ensure_litgpt(say)
    if path is None:
        return {"skipped": how}
    say(f"  litgpt: {how}")
    ov = bench_overrides(model, steps, log_every, extra)
    rows: dict[str, list[dict]] = {"litgpt": [], "xiulian": [], "xiulian_compiled": []}
    with tempfile.TemporaryDirectory() as work:
        for _, kind in interleaved(("litgpt", "xiulian", "xiulian_compiled"), repeats):
            if kind == "litgpt":
                res = run_litgpt(ov, steps, log_every, path)
            else:  # also in a fresh process, as litgpt is: no allocator or import state from earlier runs
                res = run_xiulian(ov, kind == "xiulian_compiled", work)
            rows[kind].append(res)
            say(f"  [{kind:16s}] {res['tokens_per_s']:10,.0f} tokens/s")
    lit = rows["litgpt"][0]
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in rows.items()}
    out = {
        "model": model,
        "steps": steps,
        "log_every": log_every,
        "repeats": repeats,
        "litgpt_version": LITGPT_VERSION,
        "tokens_per_s": med,
        "ratio_xiulian_vs_litgpt": med["xiulian"] / med["litgpt"],
        "ratio_xiulian_compiled_vs_litgpt": med["xiulian_compiled"] / med["litgpt"],
        "params": {"litgpt": lit["params_litgpt"], "xiulian": lit["params_xiulian"]},
        "litgpt_loss_first_last": (lit["losses"][0], lit["losses"][-1]),
        "xiulian_loss_first_last": _first_last(rows["xiulian"][0]["losses"]),
    }
    return out


def _first_last(losses: dict) -> tuple[float, float]:
    ks = sorted(losses)
    return losses[ks[0]], losses[ks[-1]]


def format_report(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"litgpt baseline skipped: {r['skipped']}"
    t = r["tokens_per_s"]
    return "\n".join(
        [
            f"litgpt {r['litgpt_version']} pretraining vs Xiulian, model={r['model']}, {r['steps']} steps, {r['repeats']} runs each "
            f"(parameters: litgpt {r['params']['litgpt']:,}, Xiulian {r['params']['xiulian']:,})",
            f"   tokens/s (median): litgpt (torch.compile) {t['litgpt']:,.0f}; Xiulian {t['xiulian']:,.0f} "
            f"(ratio {r['ratio_xiulian_vs_litgpt']:.3f}); Xiulian trainer.compile=true {t['xiulian_compiled']:,.0f} "
            f"(ratio {r['ratio_xiulian_compiled_vs_litgpt']:.3f})",
            f"   loss first -> last: litgpt {r['litgpt_loss_first_last'][0]:.3f} -> {r['litgpt_loss_first_last'][1]:.3f}; "
            f"Xiulian {r['xiulian_loss_first_last'][0]:.3f} -> {r['xiulian_loss_first_last'][1]:.3f}",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argument_parser("llm.bench.litgpt", __doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--xiulian-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.xiulian_child:
        xiulian_child(args.override, args.xiulian_child, args.workdir)
        return None
    if args.child:
        child(args.override, args.steps, args.log_every, args.child)
        return None
    os.environ.setdefault("WANDB_MODE", "offline")
    res = compare(args.model, args.steps, args.log_every, args.repeats, args.override)
    print(format_report(res))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"bench": "litgpt", **res}) + "\n")
    return res


if __name__ == "__main__":
    main()
