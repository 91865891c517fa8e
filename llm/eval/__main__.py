"""Evaluate a model on a suite of tasks (conf/eval/*.yaml).

    python -m llm.eval outputs/pretrain/demo/export                     # suite "pretrain"
    python -m llm.eval outputs/sft/demo/export --suite sft --limit 20
    python -m llm.eval model.gguf --suite my_suite.yaml --out results.json --wandb
    python -m llm.eval outputs/grpo/demo/export --tasks builtin:arithmetic --n 8 --k 1,4,8   # pass@k

The model is any Hugging Face causal-LM directory (a Xiulian export or another checkpoint) or a
``.gguf`` file. Results are printed, written beside the run, never into the model directory
(``--out`` sets the file), and logged to W&B with ``--wandb`` (offline unless a key is configured):

    a run's export (``<run>/export``, ``<run>/config.yaml`` exists) -> <run>/eval/<suite>.json
    any other directory or .gguf file ``NAME``                      -> ./eval-results/NAME/<suite>.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def load_model(path: str, dtype: str = "float32") -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.model.build import resolve_pretrained

    d = resolve_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=getattr(torch, dtype))
    tok = AutoTokenizer.from_pretrained(str(d))
    return model, tok


def results_path(model_path: str, suite: str, cwd: str | Path | None = None) -> Path:
    """Where results go without ``--out``: ``<run>/eval/<suite>.json`` for a run's ``export/``
    (its parent holds the run's ``config.yaml``), else ``<cwd>/eval-results/<name>/<suite>.json``
    (``name``: the directory's name, or the file's without ``.gguf``). Never inside the model
    directory: a default that would land there (run from inside it) is refused."""
    p = Path(model_path).absolute()
    stem = Path(suite).stem if suite.endswith((".yaml", ".yml")) else suite
    stem = stem.replace("/", "_") or "results"
    if p.is_dir() and p.name == "export" and (p.parent / "config.yaml").is_file():
        return p.parent / "eval" / f"{stem}.json"
    name = p.name if p.is_dir() else (p.stem if p.suffix == ".gguf" else p.name)
    out = Path(cwd or Path.cwd()).absolute() / "eval-results" / name / f"{stem}.json"
    if p.is_dir() and out.resolve().is_relative_to(p.resolve()):
        raise SystemExit(f"the default results path {out} is inside the model directory {p}: run from elsewhere or give --out")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m llm.eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("model", help="an HF model directory (e.g. a run's export/) or a .gguf file")
    ap.add_argument("--suite", default=None, help="a suite name in conf/eval or a YAML file (default: pretrain)")
    ap.add_argument(
        "--tasks",
        default=None,
        metavar="SPEC",
        help="instead of a suite, one verified task: builtin:<name> (a generator's held-out split, e.g. builtin:arithmetic) "
        "or a tasks .jsonl file (GRPO's format); greedy accuracy and pass@k",
    )
    ap.add_argument("--n", type=int, default=None, help="verified tasks: answers sampled per problem (n of pass@k)")
    ap.add_argument("--k", default=None, metavar="K[,K...]", help="verified tasks: the k of pass@k, e.g. 1,4,8 (each <= --n)")
    ap.add_argument("--temperature", type=float, default=None, help="verified tasks: sampling temperature (default 1.0)")
    ap.add_argument("--top-p", type=float, default=None, help="verified tasks: nucleus sampling (default 1.0: off)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="verified tasks: answer length limit")
    ap.add_argument("--seed", type=int, default=None, help="verified tasks: the seed of the problems and the sampling")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a suite field, e.g. tasks.0.shots=2")
    ap.add_argument("--limit", type=int, default=None, help="evaluate at most N items (or documents) per task")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    ap.add_argument(
        "--out",
        default=None,
        help="results JSON (default: <run>/eval/<suite>.json for a run's export, else ./eval-results/<name>/<suite>.json)",
    )
    ap.add_argument("--wandb", action="store_true", help="log the results to W&B (project xiulian, job type eval)")
    ap.add_argument("--project", default="xiulian")
    args = ap.parse_args(argv)

    from llm.eval.core import flat_metrics, headline_metrics, run_suite, write_results
    from llm.eval.suites import load_suite
    from llm.eval.verified import report_ks

    if args.tasks and args.suite:
        sys.exit("give --suite or --tasks, not both")
    suite = tasks_suite(args.tasks) if args.tasks else load_suite(args.suite or "pretrain", args.set)
    if args.tasks and args.set:
        for o in args.set:  # the same KEY=VALUE overrides, on the one-task suite
            suite = _override(suite, o)
    for t in suite.tasks:
        if t.type != "verified":
            continue
        for flag, key in (
            ("n", "samples"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("max_new_tokens", "max_new_tokens"),
            ("seed", "seed"),
        ):
            if getattr(args, flag) is not None:
                t[key] = getattr(args, flag)
        if args.k is not None:
            try:
                t.pass_k = [int(k) for k in args.k.split(",") if k.strip()]
            except ValueError:
                sys.exit(f"--k {args.k!r}: expected integers separated by commas, e.g. 1,4,8")
        try:
            report_ks(t)  # k > n refused before the model loads
        except ValueError as e:
            sys.exit(str(e))
    if args.limit is not None:
        for t in suite.tasks:
            t.limit = args.limit
    if args.batch_size:
        suite.batch_size = args.batch_size
    if not suite.tasks:
        sys.exit(f"eval suite {args.suite!r} has no tasks")
    out_path = Path(args.out) if args.out else results_path(args.model, suite.name)  # refused before the work, not after
    model, tok = load_model(args.model, args.dtype)
    model.to(args.device)
    if args.tasks and not any(o.startswith("tasks.0.chat=") for o in args.set):  # a chat model answers in its template, as GRPO prompted it
        suite.tasks[0].chat = bool(getattr(tok, "chat_template", None))
    res = run_suite(model, tok, suite)
    res["model"] = str(Path(args.model).absolute())
    out = write_results(res, out_path)
    print(f"\n{'task':<24} {'type':<11} {'metric':<16} {'value':>9} {'n':>6}")
    for name, r in res["tasks"].items():
        for k in headline_metrics(r):
            print(f"{name:<24} {r['type']:<11} {k:<16} {r[k]:>9.4f} {r.get('n', r.get('tokens')):>6}")
        if "problems_file" in r:
            print(f"{name}: per-problem answers and verdicts in {out.with_name(r['problems_file'])}")
    print(f"results: {out}")
    if args.wandb:
        import wandb

        from llm.loggers import wandb_mode

        run = wandb.init(
            project=args.project, job_type="eval", mode=wandb_mode("auto"), config={"model": res["model"], "suite": suite.name}
        )
        run.log(flat_metrics(res))
        run.summary.update(flat_metrics(res))
        run.finish()
    return res


def tasks_suite(spec: str) -> Any:
    """The one-task suite of ``--tasks SPEC``: a verified task named after the generator or file."""
    from omegaconf import OmegaConf

    from llm.config import EvalConfig

    name = spec.split(":", 1)[1] if spec.startswith("builtin:") else Path(spec).stem
    return OmegaConf.merge(OmegaConf.structured(EvalConfig), {"name": name, "tasks": [{"name": name, "type": "verified", "path": spec}]})


def _override(suite: Any, o: str) -> Any:
    import yaml
    from omegaconf import OmegaConf

    key, sep, value = o.partition("=")
    if not sep:
        raise ValueError(f"--set {o!r}: expected KEY=VALUE (e.g. tasks.0.params.digits=1)")
    OmegaConf.update(suite, key, yaml.safe_load(value), merge=True)
    return suite


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
