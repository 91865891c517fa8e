"""``python -m llm.bench.data_scale``: the whole stage-1 pipeline at scale -- peak RSS and docs/s
per stage on a synthetic corpus of N documents, at several N, so a memory that grows with the
corpus shows.

* **corpus**: N JSONL documents of 5-12 real English sentences each (the python3.11-doc reST
  sources, markup stripped, and the English fortunes), ``--exact`` of them exact copies of an
  earlier document (case and spacing changed on half: the normalised exact dedup must catch
  them) and ``--near`` near copies (one sentence replaced); a separate 2,000-document source
  is the quality classifier's raw-text negatives (its training set does not grow with N).
* **pipeline**: ``conf/pipeline/python_docs.yaml`` pointed at the corpus, ``executor.tasks`` =
  N / ``--docs-per-task`` run one after the other (``workers=1``), the quality keep threshold at
  0 (every document reaches the mixture; the negatives have mixture weight 0); each stage in its own process (``run_pipeline(...,
  only=[stage])``), its peak RSS (VmHWM) and wall time recorded; the pipeline's peak is the
  largest stage's (``python -m llm.data`` runs the stages one after the other in one process).
* **baseline**: ``--baseline-rev REV`` also runs the mixture step of ``llm/pipeline/mixture.py``
  at git revision REV (the in-memory mixture before it streamed) on the same documents, in its
  own process, and checks it wrote the same number of documents.

``--markdown BENCHMARKS.md`` appends the table. ``--docs 20000`` checks the script in a minute.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from llm.bench.common import ROOT, append_section, argument_parser, command_line, md_table, print_result, run_module, utc_stamp
from llm.bench.data import DOCS, machine, peak_rss_mib, pin_one_core, say

FORTUNES = Path("/usr/share/games/fortunes")


def real_sentences() -> list[str]:
    """English sentences of 6-40 words: the python3.11-doc reST sources (markup stripped) and fortunes."""
    from llm.pipeline.train_classifiers import strip_rst

    texts = [strip_rst(p.read_text(encoding="utf-8", errors="replace")) for p in sorted((DOCS / "_sources").rglob("*.rst.txt"))]
    for p in sorted(FORTUNES.glob("*")) if FORTUNES.is_dir() else []:
        if p.is_file() and not p.suffix and not re.search("chinese|tang300|song100", p.name):
            texts.append(p.read_text(encoding="utf-8", errors="replace").replace("%", " "))
    out = set()
    for t in texts:
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", t)):
            w = s.split()
            if 6 <= len(w) <= 40 and sum(c.isalpha() for c in s) > 0.7 * len(s) and s[0].isupper():
                out.add(s)
    return sorted(out)


def synthetic_corpus(n: int, sentences: list[str], out: Path, exact: float, near: float, seed: int = 0, files: int = 8) -> dict:
    """``n`` documents in ``files`` JSONL files (round robin); returns the planted counts."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    fs = [open(out / f"part-{i:03d}.jsonl", "w", encoding="utf-8") for i in range(files)]
    pool: list[list[str]] = []
    planted = {"exact": 0, "near": 0}
    try:
        for i in range(n):
            r = rng.random()
            if pool and r < exact:
                s = list(rng.choice(pool))
                text = " ".join(s)
                if rng.random() < 0.5:
                    text = "  ".join(x.upper() if j == 0 else x for j, x in enumerate(s))
                planted["exact"] += 1
            elif pool and r < exact + near:
                s = list(rng.choice(pool))
                s[rng.randrange(len(s))] = rng.choice(sentences)
                text = " ".join(s)
                planted["near"] += 1
            else:
                s = [rng.choice(sentences) for _ in range(rng.randint(5, 12))]
                text = " ".join(s)
            if len(pool) < 5000:
                pool.append(s)
            fs[i % files].write(json.dumps({"id": f"synth/{i}", "text": text}) + "\n")
    finally:
        for f in fs:
            f.close()
    return planted


def overrides(work: Path, corpus: Path, negatives: Path, tasks: int) -> list[str]:
    return [
        f"out={work / 'out'}",
        f"executor.tasks={tasks}",
        "executor.workers=1",
        f"inputs=[{{name: synth, kind: jsonl, path: '{corpus}', glob: '*.jsonl'}},{{name: raw, kind: jsonl, path: '{negatives}', glob: '*.jsonl'}}]",
        "quality.sources=[synth]",
        "quality.train.negative_sources=[raw]",
        "quality.train.eval_negative_match=null",
        "quality.keep.threshold=0.0",
        "+mixture.sources.raw={weight: 0}",  # the negatives train the classifier only
    ]


def stage_child(stage: str, work: Path, args: list[str]) -> dict:
    from llm.data.__main__ import load_config
    from llm.pipeline.layout import STAGES
    from llm.pipeline.run import run_pipeline

    cfg = load_config("python_docs", json.loads(args[0]))
    t = time.perf_counter()
    run_pipeline(cfg, restart=(stage == STAGES[0]), only=[stage])
    return {"seconds": time.perf_counter() - t, "peak_rss_mib": peak_rss_mib()}


def baseline_mixture_child(work: Path, args: list[str]) -> dict:
    """The mixture step of ``llm/pipeline/mixture.py`` at revision ``args[1]`` on the same documents."""
    from llm.data.__main__ import load_config
    from llm.pipeline.layout import paths

    cfg = load_config("python_docs", json.loads(args[0]))
    src = subprocess.run(["git", "show", f"{args[1]}:llm/pipeline/mixture.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = work / "baseline_mixture.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_mixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p, mx = paths(cfg), cfg["mixture"]
    step = mod.MixtureWriter(
        str(p["final"]),
        str(work / "baseline_out"),
        sources=mx.get("sources"),
        total_chars=mx.get("total_chars"),
        tokenizer=mx.get("tokenizer"),
        vocab_size=mx["vocab_size"],
        shard_max_tokens=mx["shard_max_tokens"],
        val_fraction=mx["val_fraction"],
        seed=cfg.get("seed", 0),
    )
    t = time.perf_counter()
    for _ in step.run():
        pass
    documents = json.loads((work / "baseline_out" / "mixture.json").read_text())["documents"]
    return {"seconds": time.perf_counter() - t, "peak_rss_mib": peak_rss_mib(), "documents": documents}


def count_lines(folder: Path) -> int:
    return sum(1 for f in folder.glob("*.jsonl.gz") for _ in gzip.open(f, "rt", encoding="utf-8"))


def one_size(n: int, args, sentences: list[str]) -> dict:
    from llm.pipeline.layout import STAGES

    work = Path(args.work) / f"n{n}"
    corpus, negatives = work / "corpus", work / "negatives"
    t = time.perf_counter()
    planted = synthetic_corpus(n, sentences, corpus, args.exact, args.near)
    synthetic_corpus(2000, sentences, negatives, 0.0, 0.0, seed=1, files=1)
    chars = sum(f.stat().st_size for f in corpus.glob("*.jsonl"))
    say(f"{n:,} documents ({chars / 2**20:.0f} MiB of JSONL) written in {time.perf_counter() - t:.0f} s; planted {planted}")
    tasks = max(1, round(n / args.docs_per_task))
    ov = json.dumps(overrides(work, corpus, negatives, tasks) + list(args.set))
    stages = {}
    for s in STAGES:
        say(f"  {n:,}: {s}")
        stages[s] = run_module("llm.bench.data_scale", ["--stage", s, "--work", str(work), "--arg", ov], timeout=args.timeout)
    out = work / "out"
    mix = json.loads((out / "mixture.json").read_text())
    res = {
        "docs": n,
        "tasks": tasks,
        "jsonl_mib": chars / 2**20,
        "planted": planted,
        "removed": {
            b: count_lines(out / "work" / "removed" / b) for b in ("exact_dedup", "near_dedup", "heuristics", "harmful", "quality")
        },
        "mixture_documents": mix["documents"],
        "tokens": mix["shards"]["tokens"],
        "shuffle": mix.get("shuffle"),
        "stages": stages,
        "seconds": sum(v["seconds"] for v in stages.values()),
        "peak_rss_mib": max(v["peak_rss_mib"] for v in stages.values()),
    }
    res["docs_per_s"] = n / res["seconds"]
    if args.baseline_rev:
        say(f"  {n:,}: mixture at {args.baseline_rev}")
        b = run_module(
            "llm.bench.data_scale", ["--baseline", "--work", str(work), "--arg", ov, "--arg", args.baseline_rev], timeout=args.timeout
        )
        if b["documents"] != mix["documents"]:
            raise SystemExit(f"the baseline mixture wrote {b['documents']} documents, the streamed one {mix['documents']}")
        res["baseline_mixture"] = b
    if not args.keep:
        import shutil

        shutil.rmtree(work)
    return res


def table(results: list[dict]) -> str:
    from llm.pipeline.layout import STAGES

    lines = md_table(
        ["documents", "tasks", "whole pipeline", "docs/s", "peak RSS", "mixture peak RSS", "mixture peak RSS before (in memory)"],
        [
            [
                f"{r['docs']:,}",
                r["tasks"],
                f"{r['seconds']:.0f} s",
                f"{r['docs_per_s']:.0f}",
                f"{r['peak_rss_mib']:.0f} MiB",
                f"{r['stages']['mixture']['peak_rss_mib']:.0f} MiB",
                f"{r['baseline_mixture']['peak_rss_mib']:.0f} MiB" if "baseline_mixture" in r else "-",
            ]
            for r in results
        ],
        "rrrrrrr",
    )
    lines += ["", "Per stage, seconds / peak RSS (MiB):", ""]
    lines += md_table(
        ["documents", *STAGES],
        [
            [f"{r['docs']:,}", *(f"{r['stages'][s]['seconds']:.0f} s / {r['stages'][s]['peak_rss_mib']:.0f}" for s in STAGES)]
            for r in results
        ],
        "r" * (len(STAGES) + 1),
    )
    lines += ["", "Planted and removed (documents):", ""]
    lines += md_table(
        ["documents", "planted exact", "removed exact", "planted near", "removed near", "heuristics", "kept to the mixture", "tokens"],
        [
            [
                f"{r['docs']:,}",
                f"{r['planted']['exact']:,}",
                f"{r['removed']['exact_dedup']:,}",
                f"{r['planted']['near']:,}",
                f"{r['removed']['near_dedup']:,}",
                f"{r['removed']['heuristics']:,}",
                f"{r['mixture_documents']:,}",
                f"{r['tokens']:,}",
            ]
            for r in results
        ],
        "rrrrrrrr",
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("llm.bench.data_scale", __doc__, whole_doc=True)
    ap.add_argument("--docs", default="100000,300000", help="comma-separated corpus sizes (documents)")
    ap.add_argument("--docs-per-task", type=int, default=100_000, help="executor.tasks = documents / this")
    ap.add_argument("--exact", type=float, default=0.04, help="fraction of planted exact duplicates")
    ap.add_argument("--near", type=float, default=0.04, help="fraction of planted near duplicates")
    ap.add_argument("--baseline-rev", help="also run the mixture step of this git revision on the same documents")
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench_data_scale"), help="scratch directory")
    ap.add_argument("--set", action="append", default=[], help="a pipeline config override, e.g. mixture.shuffle_buffer_mb=16 (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep each size's corpus and outputs")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per stage at most")
    ap.add_argument("--markdown", help="append the tables to this file (e.g. BENCHMARKS.md)")
    ap.add_argument("--json", help="write every figure to this JSON file")
    ap.add_argument("--stage", help=argparse_suppress())
    ap.add_argument("--baseline", action="store_true", help=argparse_suppress())
    ap.add_argument("--arg", action="append", default=[], help=argparse_suppress())
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.stage or args.baseline:  # child
        pin_one_core()
        work = Path(args.work)
        print_result(baseline_mixture_child(work, args.arg) if args.baseline else stage_child(args.stage, work, args.arg))
        return 0
    if not (DOCS / "_sources").is_dir():
        raise SystemExit(f"{DOCS} is missing: run `bash launch/fixtures.sh` as root (python3.11-doc, fortunes)")
    sentences = real_sentences()
    say(f"{len(sentences):,} real sentences to draw from")
    results = [one_size(int(n), args, sentences) for n in args.docs.split(",")]
    text = table(results)
    res = {
        "machine": machine(),
        "command": command_line("llm.bench.data_scale", argv or None),
        "sentences": len(sentences),
        "sizes": results,
    }
    print(f"machine: {res['machine']}\n\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.markdown:
        append_section(
            args.markdown,
            f"{utc_stamp()} -- stage-1 data pipeline at scale: peak RSS and docs/s per stage",
            [f"- machine: {res['machine']}", f"- command: `{res['command']}`", "", text],
        )
    return 0


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
