"""``python -m llm.bench.data``: the stage-1 data pipeline against datatrove's own blocks, on the
same input, in the same run.

* **per block**: documents/s on one core (this process pinned to one CPU), our block next to
  datatrove's equivalent, each over fresh copies of the same documents for at least
  ``--min-seconds``; the input is the python3.11-doc pages (raw HTML for reading and extraction,
  their extracted text plus fortunes, fortunes-zh and the KJV for the text blocks);
* **end to end**: our whole pipeline (``llm.pipeline.run``: ``python_docs`` pointed at one WARC of
  the pages and the KJV JSONL) against a datatrove-only pipeline of the equivalent blocks on the
  same two files (WarcReader, Trafilatura, LanguageFilter, exact dedup, URLFilter, Gopher
  repetition and quality, C4, fastText classifier, MinHash), each as its own process pinned to
  one core, one task per stage;
* **near-dedup memory**: each MinHash stage as its own process on synthetic documents (real
  sentences, 20% near duplicates) at two sizes; peak RSS above an idle process, fitted
  linearly and extrapolated to one million documents, with the bytes per document on disk.

datatrove's word-level blocks need spaCy (and jieba for Chinese), its WarcReader warcio, cchardet
and libmagic: the ``bench`` extra installs them (``launch/setup.sh`` does). The LanguageFilter baseline gets the same ``lid.176`` model as ours (datatrove
would download ``lid.176.bin``; no download happens here). ``--markdown BENCHMARKS.md`` appends
the tables. ``--quick`` (a few pages, small sizes) checks the script in a minute.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

from llm.bench.common import (
    ROOT,
    append_section,
    argument_parser,
    command_line,
    cpu_name,
    md_table,
    print_result,
    proc_status,
    run_module,
    usable_cores,
    utc_stamp,
)

DOCS = Path("/usr/share/doc/python3.11/html")


def say(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def pin_one_core() -> int:
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def doc_text(doc) -> str:
    """datatrove's exact dedup on the raw text (ours normalises it first)."""
    return doc.text


def same_input_quality_filter(model: Path, threshold: float):
    """datatrove's ``FastTextClassifierFilter`` on our quality model, fed what the model was
    trained on (``llm.pipeline.classify.model_tokens``: words, and the line-shape tokens when the
    model's figures say so); on raw text it scores every document low and keeps none."""
    import json

    from datatrove.data import Document
    from datatrove.pipeline.filters import FastTextClassifierFilter

    from llm.pipeline.classify import model_tokens

    side = Path(f"{model}.json")
    shapes = bool(side.is_file() and json.loads(side.read_text()).get("line_shapes"))

    class SameInput(FastTextClassifierFilter):
        def filter(self, doc):
            return super().filter(Document(text=model_tokens(doc.text, shapes), id=doc.id, metadata=doc.metadata))

    return SameInput(str(model), keep_labels=("pos", threshold))


def fresh(docs):
    from datatrove.data import Document

    return [Document(text=d.text, id=d.id, metadata=dict(d.metadata)) for d in docs]


# ----------------------------------------------------------------------------- input


def write_warc(pages: list[Path], out: Path) -> Path:
    from llm.pipeline.planted import _warc_record

    out.mkdir(parents=True, exist_ok=True)
    path = out / "pages.warc"
    with open(path, "wb") as f:
        for p in pages:
            f.write(_warc_record(f"https://docs.python.org/3.11/{p.relative_to(DOCS)}", p.read_bytes()))
    return path


def read_all(reader) -> list:
    return list(reader.run(None, 0, 1))


def bench_config(work: Path, warc_dir: Path, kjv: Path, *extra: str) -> dict:
    from llm.data.__main__ import load_config

    return load_config(
        "python_docs",
        [
            f"out={work}",
            "executor.tasks=1",
            "executor.workers=1",
            f"inputs=[{{name: pydocs, kind: warc, path: '{warc_dir}', glob: '*.warc'}},"
            f"{{name: kjv, kind: jsonl, path: '{kjv}', glob: '*.jsonl'}}]",
            "mixture.sources={pydocs: {weight: 1, max_repeats: 1}, kjv: {weight: 2, max_repeats: 4}}",
            *extra,
        ],
    )


# ----------------------------------------------------------------------------- per block


def time_block(blocks, docs, min_seconds: float) -> dict:
    """Documents/s of ``blocks`` chained (one datatrove step or several), over fresh copies of
    ``docs`` (``None``: a reader), repeated for at least ``min_seconds`` after one warm-up pass."""

    def once(batch):
        data = iter(batch) if batch is not None else None
        for b in blocks:
            data = b.run(data, 0, 1)
        return len(batch) if data is None else sum(1 for _ in data)  # None: a step that only consumes

    once(fresh(docs[:20]) if docs is not None else None)  # lazy model loads, sandbox start-up
    n = kept = 0
    spent = 0.0
    while spent < min_seconds or n == 0:
        batch = fresh(docs) if docs is not None else None
        t = time.perf_counter()
        k = once(batch)
        spent += time.perf_counter() - t
        n += len(docs) if docs is not None else k
        kept += k
    return {"docs_per_s": n / spent, "kept_fraction": kept / n, "seconds": spent}


def no_exclusions(block):
    if hasattr(block, "exclusion_writer"):
        block.exclusion_writer = None
    return block


def datatrove_lang_and_url():
    """datatrove's LanguageFilter and URLFilter, offline: the same lid.176 (compressed) model as
    ours, copied instead of downloaded; tldextract's bundled suffix list."""
    from datatrove.pipeline.filters import LanguageFilter, URLFilter
    from tldextract import TLDExtract

    from llm.pipeline.langid import lid_model_path

    lang = LanguageFilter(languages=["en", "zh"])
    lang.model.MODEL_URL = str(lid_model_path())
    url = URLFilter()
    url.tldextractor = TLDExtract(suffix_list_urls=())
    return lang, url


def block_pairs(cfg: dict, models: Path, warc_dir: Path, tmp: Path) -> list[tuple[str, list, list, str, str]]:
    """(row, our blocks, datatrove's blocks, input kind, notes)."""
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import WarcReader as DTWarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from llm.pipeline.extract import HtmlExtractor
    from llm.pipeline.run import _minhash_config, build_stages

    stages = build_stages(cfg)
    ours = {type(b).__name__: no_exclusions(b) for b in stages["extract"][0] + stages["filter"][0] + stages["final"][0]}
    lang, url = datatrove_lang_and_url()
    q = cfg["quality"]["keep"]
    mh = _minhash_config(cfg)
    return [
        (
            "read WARC",
            [ours["WarcReader"]],
            [DTWarcReader(str(warc_dir), glob_pattern="*.warc")],
            "reader",
            "ours: fastwarc, resyncs after a broken record; datatrove: warcio",
        ),
        (
            "extract HTML (resiliparse)",
            [HtmlExtractor("resiliparse", timeout=5)],
            [Trafilatura(timeout=5)],
            "html",
            "ours: resiliparse + DOM skip of nav/aside/footer; datatrove: Trafilatura (favour_precision); "
            "both in datatrove's killable sandbox",
        ),
        (
            "extract HTML (trafilatura)",
            [HtmlExtractor("trafilatura", timeout=5)],
            [Trafilatura(timeout=5)],
            "html",
            "the same engine on both sides",
        ),
        ("language id", [ours["LanguageRouter"]], [lang], "text", "both fastText lid.176 (ftz)"),
        (
            "heuristic rules",
            [ours["HeuristicFilter"]],
            [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False)],
            "text",
            "ours: Gopher quality+repetition+C4 lines, regex words, CJK chars; datatrove: the three filters, spaCy words",
        ),
        (
            "harmful",
            [ours["HarmfulFilter"]],
            [url],
            "text",
            "ours: word+URL blocklists and a fastText classifier per language; datatrove: URLFilter only",
        ),
        (
            "exact-dedup signature",
            [ours["ExactDedupSignature"]],
            [
                ExactDedupSignature(
                    str(tmp / "dt_exact"), config=ExactDedupConfig(content_getter=doc_text, hash_config=HashConfig(precision=64))
                )
            ],
            "text",
            "datatrove's block on both sides; ours hashes normalised text",
        ),
        (
            "MinHash signature",
            [ours["MinhashSignature"]],
            [MinhashDedupSignature(str(tmp / "dt_minhash"), config=mh, language="en")],
            "text",
            f"{mh.num_buckets}x{mh.hashes_per_bucket} 64-bit; ours: regex words / CJK chars; datatrove: spaCy words",
        ),
        (
            "quality classifier",
            [ours["QualityFilter"]],
            [same_input_quality_filter(models / "quality.bin", q["threshold"])],
            "text",
            "the same fastText model and model input on both sides (trained by our run)",
        ),
        (
            "write JSONL",
            [ours["AtomicJsonlWriter"]],
            [JsonlWriter(str(tmp / "dt_written"))],
            "text",
            "ours writes .partial and renames on close",
        ),
    ]


def per_block(cfg: dict, models: Path, warc_dir: Path, tmp: Path, html_docs, text_docs, min_seconds: float) -> list[dict]:
    rows = []
    for name, ours, theirs, kind, notes in block_pairs(cfg, models, warc_dir, tmp):
        docs = {"reader": None, "html": html_docs, "text": text_docs}[kind]
        say(f"  block: {name}")
        a, b = time_block(ours, docs, min_seconds), time_block(theirs, docs, min_seconds)
        rows.append({"block": name, "ours": a, "datatrove": b, "ratio": a["docs_per_s"] / b["docs_per_s"], "notes": notes})
    return rows


# ----------------------------------------------------------------------------- end to end


def e2e_ours(work: Path, warc_dir: Path, kjv: Path) -> dict:
    from llm.pipeline.run import STAGES, run_pipeline

    cfg = bench_config(work, warc_dir, kjv)
    times = {}
    for s in STAGES:
        t = time.perf_counter()
        run_pipeline(cfg, restart=(s == STAGES[0]), only=[s])
        times[s] = time.perf_counter() - t
    rep = json.loads((work / "report" / "report.json").read_text())
    return {"stages": times, "kept": rep["kept_documents"]}


def e2e_datatrove(work: Path, warc_dir: Path, kjv: Path, quality_model: Path, threshold: float) -> dict:
    import shutil

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    if work.exists():
        shutil.rmtree(work)
    w = str(work)
    lang, url = datatrove_lang_and_url()
    mh = MinhashConfig(hash_config=HashConfig(precision=64))  # 5-grams, 14 buckets x 8 hashes, as ours
    ex = ExactDedupConfig(content_getter=doc_text, hash_config=HashConfig(precision=64))
    stages = {
        "extract": [
            WarcReader(str(warc_dir), glob_pattern="*.warc"),
            Trafilatura(timeout=5),
            JsonlReader(str(kjv), glob_pattern="*.jsonl"),
            lang,
            JsonlWriter(f"{w}/extracted"),
            ExactDedupSignature(f"{w}/exact/sigs", config=ex),
        ],
        "find_exact": [ExactFindDedups(f"{w}/exact/sigs", f"{w}/exact/dups", config=ex)],
        "filter": [
            JsonlReader(f"{w}/extracted"),
            ExactDedupFilter(f"{w}/exact/dups", config=ex),
            url,
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            JsonlWriter(f"{w}/filtered"),
            MinhashDedupSignature(f"{w}/minhash/sigs", config=mh, language="en"),
        ],
        "buckets": [MinhashDedupBuckets(f"{w}/minhash/sigs", f"{w}/minhash/buckets", config=mh)],
        "cluster": [MinhashDedupCluster(f"{w}/minhash/buckets", f"{w}/minhash/clusters", config=mh)],
        "final": [
            JsonlReader(f"{w}/filtered"),
            MinhashDedupFilter(f"{w}/minhash/clusters"),
            same_input_quality_filter(quality_model, threshold),
            JsonlWriter(f"{w}/final"),
        ],
    }
    times = {}
    for name, pipe in stages.items():
        tasks = mh.num_buckets if name == "buckets" else 1
        t = time.perf_counter()
        LocalPipelineExecutor(pipe, tasks=tasks, workers=1, logging_dir=f"{w}/logs/{name}").run()
        times[name] = time.perf_counter() - t
    kept = sum(1 for f in (work / "final").glob("*.jsonl.gz") for _ in gzip.open(f, "rt"))
    return {"stages": times, "kept": kept}


def run_pinned(args: list[str], timeout: float = 3600) -> dict:
    """``python -m llm.bench.data <args>`` as its own process (pinned to one core by itself); its
    result line."""
    return run_module("llm.bench.data", args, timeout=timeout, cwd=ROOT, name=f"llm.bench.data {' '.join(args)}")


# ----------------------------------------------------------------------------- near-dedup memory


def synthetic_docs(n: int, sentences: list[str], out: Path, dup_fraction: float = 0.2, seed: int = 0) -> Path:
    """``n`` documents of 6 real sentences each; ``dup_fraction`` of them copies of an earlier one
    with one sentence replaced (near duplicates MinHash should pair)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "00000.jsonl.gz"
    made: list[list[str]] = []
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(n):
            if made and rng.random() < dup_fraction:
                s = list(rng.choice(made))
                s[rng.randrange(len(s))] = rng.choice(sentences)
            else:
                s = [rng.choice(sentences) for _ in range(6)]
            if len(made) < 5000:
                made.append(s)
            f.write(json.dumps({"id": f"s{i}", "text": " ".join(s)}) + "\n")
    return path


MEM_STAGES = ("signature", "signature_sort", "buckets", "cluster", "filter")


def mem_stage(stage: str, work: Path) -> dict:
    """Run one MinHash stage (one task; buckets: every bucket in this process) and report this
    process's peak RSS; ``none`` imports the same and does nothing (the baseline)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.utils.hashing import HashConfig

    from llm.pipeline.dedup import MinhashSignature

    mh = MinhashConfig(hash_config=HashConfig(precision=64))
    w = str(work)
    sort_only = MinhashSignature(f"{w}/sigs", config=mh)
    sort_only.skip_existing_sigs = True  # its own files exist: datatrove skips hashing and only sorts
    pipes = {
        "signature": ([JsonlReader(f"{w}/input"), MinhashSignature(f"{w}/sigs", config=mh)], 1),
        "signature_sort": ([sort_only], 1),
        "buckets": ([MinhashDedupBuckets(f"{w}/sigs", f"{w}/buckets", config=mh)], mh.num_buckets),
        "cluster": ([MinhashDedupCluster(f"{w}/buckets", f"{w}/clusters", config=mh, save_cluster_size=True)], 1),
        "filter": ([JsonlReader(f"{w}/input"), MinhashDedupFilter(f"{w}/clusters")], 1),
    }
    t = time.perf_counter()
    if stage != "none":
        pipe, tasks = pipes[stage]
        LocalPipelineExecutor(pipe, tasks=tasks, workers=1, logging_dir=f"{w}/logs/{stage}", skip_completed=False).run()
    return {"seconds": time.perf_counter() - t, "maxrss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike getrusage's ru_maxrss it does not carry the parent's
    peak across fork and exec)."""
    hwm = proc_status().get("VmHWM")
    return hwm / 2**20 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def near_dedup_memory(sizes: list[int], sentences: list[str], tmp: Path) -> dict:
    base = run_pinned(["--mem-stage", "none", "--work", str(tmp / "mem_none")])["maxrss_mib"]
    per = {}
    for n in sizes:
        w = tmp / f"mem_{n}"
        synthetic_docs(n, sentences, w / "input")
        per[n] = {}
        for stage in MEM_STAGES:
            say(f"  near-dedup memory: {stage}, {n:,} documents")
            r = run_pinned(["--mem-stage", stage, "--work", str(w)])
            r["above_idle_mib"] = max(0.0, r["maxrss_mib"] - base)
            per[n][stage] = r
        sig = sum(f.stat().st_size for f in (w / "sigs").rglob("*.sig"))
        per[n]["disk"] = {
            "signature_bytes_per_doc": sig / n,
            "bucket_bytes_per_doc": sum(f.stat().st_size for f in (w / "buckets").rglob("*") if f.is_file()) / n,
            "removed": sum(1 for _ in (w / "clusters").glob("*.remove")),
        }
    long_doc = long_document_memory()
    lo, hi = min(sizes), max(sizes)
    fit = {}
    for stage in MEM_STAGES:
        a, b = per[lo][stage]["above_idle_mib"], per[hi][stage]["above_idle_mib"]
        slope = max(0.0, (b - a) / (hi - lo))
        fit[stage] = {"mib_per_million": slope * 1e6 + max(0.0, a - slope * lo), "docs_per_s": hi / per[hi][stage]["seconds"]}
    return {"idle_mib": base, "sizes": per, "per_million": fit, "long_document": long_doc}


def long_document_memory(words: int = 100_000) -> dict:
    """Peak memory (tracemalloc) of one document's MinHash signature: datatrove's block builds a
    (shingles x permutations) uint64 matrix; ours takes a running minimum over blocks of shingles.
    Same signature on both sides (asserted)."""
    import tracemalloc

    import numpy as np
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    from llm.pipeline.dedup import MinhashSignature

    block = MinhashSignature("/tmp", config=MinhashConfig(hash_config=HashConfig(precision=64)))
    shingles = np.random.default_rng(0).integers(0, 2**63, size=(words, 1), dtype=np.uint64)
    out = {"words": words}
    sigs = []
    for side, fn in (("ours", block.get_signature), ("datatrove", lambda sh: MinhashDedupSignature.get_signature(block, sh))):
        tracemalloc.start()
        sigs.append(fn(shingles))
        out[f"{side}_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    assert sigs[0] == sigs[1], "the blockwise signature must equal datatrove's"
    return out


# ----------------------------------------------------------------------------- report


def machine() -> str:
    from importlib.metadata import version

    return f"{cpu_name()}, {usable_cores()} usable cores, Python {platform.python_version()}, datatrove {version('datatrove')}, resiliparse {version('resiliparse')}, trafilatura {version('trafilatura')}, spaCy {version('spacy')}"


def tables(res: dict) -> str:
    out = md_table(
        ["block", "ours docs/s/core", "datatrove docs/s/core", "ours / datatrove", "notes"],
        [
            [r["block"], f"{r['ours']['docs_per_s']:,.0f}", f"{r['datatrove']['docs_per_s']:,.0f}", f"**{r['ratio']:.2f}**", r["notes"]]
            for r in res["blocks"]
        ],
        "lrrrl",
    )
    e = res["e2e"]
    if e:
        o, d = e["ours"], e["datatrove"]
        n = e["input_docs"]
        through = sum(v for k, v in o["stages"].items() if k not in ("mixture", "report"))
        ours_all, theirs = sum(o["stages"].values()), sum(d["stages"].values())
        out += [
            "",
            f"End to end, one core, {n:,} input documents ({e['pages']} pages in one WARC + {n - e['pages']:,} KJV chapters):",
            "",
            *md_table(
                ["pipeline", "seconds", "docs/s/core", "kept", "stages (s)"],
                [
                    [
                        "ours, to `final`",
                        f"{through:.1f}",
                        f"{n / through:,.1f}",
                        f"{o['kept']:,}",
                        ", ".join(f"{k} {v:.1f}" for k, v in o["stages"].items() if k not in ("mixture", "report")),
                    ],
                    [
                        "ours, with mixture (tokenizer + shards) and report",
                        f"{ours_all:.1f}",
                        f"{n / ours_all:,.1f}",
                        f"{o['kept']:,}",
                        f"mixture {o['stages']['mixture']:.1f}, report {o['stages']['report']:.1f}",
                    ],
                    [
                        "datatrove's blocks",
                        f"{theirs:.1f}",
                        f"{n / theirs:,.1f}",
                        f"{d['kept']:,}",
                        ", ".join(f"{k} {v:.1f}" for k, v in d["stages"].items()),
                    ],
                ],
                "lrrrl",
            ),
        ]
    m = res["memory"]
    sizes = sorted(m["sizes"])
    out += [
        "",
        f"Near-dedup (MinHash {res['minhash']}), one task per stage, synthetic documents of real sentences "
        f"with 20% near duplicates, measured at {', '.join(f'{n:,}' for n in sizes)} documents "
        f"(idle process {m['idle_mib']:.0f} MiB):",
        "",
        *md_table(
            ["stage", "peak above idle, " + " / ".join(f"{n:,} docs" for n in sizes), "extrapolated per 1M docs", "docs/s"],
            [
                [
                    st,
                    " / ".join(f"{m['sizes'][n][st]['above_idle_mib']:.1f} MiB" for n in sizes),
                    f"**{m['per_million'][st]['mib_per_million']:,.0f} MiB**",
                    f"{m['per_million'][st]['docs_per_s']:,.0f}",
                ]
                for st in MEM_STAGES
            ],
            "lrrr",
        ),
    ]
    worst = max(MEM_STAGES, key=lambda st: m["per_million"][st]["mib_per_million"])
    out += [
        "",
        f"Peak memory of near-dedup per million documents in one task: **"
        f"{m['per_million'][worst]['mib_per_million']:,.0f} MiB** above an idle process (the {worst} stage; "
        "each stage is its own task, so the peak is the largest stage's, and it divides by the number of tasks "
        "for signature and filter).",
    ]
    ld = m["long_document"]
    out += [
        "",
        f"One {ld['words']:,}-word document's signature: ours {ld['ours_mib']:.1f} MiB, datatrove's "
        f"{ld['datatrove_mib']:.1f} MiB (tracemalloc peak; the same signature). datatrove's signature stage "
        "peaks with the longest document, whatever the number of documents.",
    ]
    disk = m["sizes"][sizes[-1]]["disk"]
    out += [
        "",
        f"On disk: {disk['signature_bytes_per_doc']:.0f} signature bytes and "
        f"{disk['bucket_bytes_per_doc']:.1f} bucket bytes per document "
        f"(= {disk['signature_bytes_per_doc'] * 1e6 / 2**20:,.0f} MiB of signatures per 1M documents).",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("llm.bench.data", __doc__, whole_doc=True)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench_data"), help="scratch directory")
    ap.add_argument("--quick", action="store_true", help="59 pages, small sizes: checks the script in about 1.5 minutes")
    ap.add_argument("--min-seconds", type=float, default=None, help="time each block for at least this long")
    ap.add_argument("--mem-sizes", default=None, help="comma-separated document counts for the memory fit")
    ap.add_argument(
        "--no-e2e", action="store_true", help="skip datatrove's end-to-end run (ours always runs: it trains the models the block rows use)"
    )
    ap.add_argument("--markdown", help="append the tables to this file (e.g. BENCHMARKS.md)")
    ap.add_argument("--json", help="write every figure to this JSON file")
    ap.add_argument("--e2e", choices=("ours", "datatrove"), help=argparse.SUPPRESS)
    ap.add_argument("--mem-stage", help=argparse.SUPPRESS)
    ap.add_argument("--arg", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.work)

    if args.mem_stage:  # child: one near-dedup stage
        pin_one_core()
        print_result(mem_stage(args.mem_stage, work))
        return 0
    if args.e2e:  # child: one end-to-end pipeline
        pin_one_core()
        warc_dir, kjv = Path(args.arg[0]), Path(args.arg[1])
        if args.e2e == "ours":
            r = e2e_ours(work, warc_dir, kjv)
        else:
            r = e2e_datatrove(work, warc_dir, kjv, Path(args.arg[2]), float(args.arg[3]))
        print_result(r)
        return 0

    if not (DOCS / "_sources").is_dir():
        raise SystemExit(f"{DOCS} is missing: run `bash launch/fixtures.sh` as root (python3.11-doc, fortunes, KJV)")
    try:  # import statements, not names: tests/test_packaging.py checks that the bench extra declares them
        import cchardet
        import jieba
        import magic
        import spacy
        import warcio
    except ImportError as e:
        raise SystemExit(f"datatrove's baseline blocks need {e.name}: pip install -e '.[bench]' (bash launch/setup.sh installs it)") from e
    del cchardet, jieba, magic, spacy, warcio  # only their presence is checked here
    from llm.data.__main__ import load_config
    from llm.pipeline.readers import make_reader

    min_seconds = args.min_seconds if args.min_seconds is not None else (0.3 if args.quick else 3.0)
    sizes = [int(s) for s in (args.mem_sizes or ("1000,4000" if args.quick else "20000,80000")).split(",")]
    pages = sorted(DOCS.rglob("*.html"))
    if args.quick:
        pages = pages[::9]
    work.mkdir(parents=True, exist_ok=True)
    warc_dir = work / "warc"
    write_warc(pages, warc_dir)
    base = load_config("python_docs", [])
    kjv = Path(next(i for i in base["inputs"] if i["name"] == "kjv")["path"]).resolve()
    # a copy of the KJV chapters with a URL each (datatrove's URLFilter asserts one on every document)
    rows = [json.loads(ln) for ln in open(kjv / "kjv.jsonl")][: 150 if args.quick else None]
    kjv = work / "kjv"
    kjv.mkdir(exist_ok=True)
    with open(kjv / "kjv.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "url": f"https://kjv.example.org/{r['id']}"}) + "\n")
    n_kjv = sum(1 for _ in open(kjv / "kjv.jsonl"))
    say(f"input: {len(pages)} pages in {warc_dir / 'pages.warc'}, {n_kjv} KJV chapters")

    res: dict = {"machine": machine(), "command": command_line("llm.bench.data", argv or None), "e2e": {}}
    say("end to end: ours (one process, one core)")
    ours = run_pinned(["--e2e", "ours", "--work", str(work / "e2e_ours"), "--arg", str(warc_dir), "--arg", str(kjv)])
    models = work / "e2e_ours" / "work" / "models"
    cfg = bench_config(work / "e2e_ours", warc_dir, kjv)
    if not args.no_e2e:
        say("end to end: datatrove's blocks (one process, one core)")
        theirs = run_pinned(
            [
                "--e2e",
                "datatrove",
                "--work",
                str(work / "e2e_datatrove"),
                "--arg",
                str(warc_dir),
                "--arg",
                str(kjv),
                "--arg",
                str(models / "quality.bin"),
                "--arg",
                str(cfg["quality"]["keep"]["threshold"]),
            ]
        )
        res["e2e"] = {"ours": ours, "datatrove": theirs, "input_docs": len(pages) + n_kjv, "pages": len(pages)}

    cpu = pin_one_core()
    say(f"per block (this process pinned to CPU {cpu}, >= {min_seconds} s each)")
    html_docs = read_all(make_reader({"name": "pydocs", "kind": "warc", "path": str(warc_dir), "glob": "*.warc"}))
    for i, d in enumerate(html_docs):
        d.metadata.setdefault("url", f"https://docs.python.org/{i}")
    from llm.pipeline.extract import HtmlExtractor

    extracted = list(HtmlExtractor("resiliparse").run(iter(fresh(html_docs)), 0, 1))
    text_docs = list(extracted)
    for spec in base["inputs"]:
        if spec["name"] == "pydocs":
            continue
        docs = read_all(make_reader(spec if spec["name"] != "kjv" else {**spec, "path": str(kjv)}))
        text_docs += docs[:: 20 if args.quick else 1]
    for i, d in enumerate(text_docs):
        d.metadata.setdefault("url", f"https://{d.metadata.get('source', 'text')}.example.org/{i}")
    res["block_input"] = {"html_pages": len(html_docs), "text_docs": len(text_docs)}
    say(f"  {len(html_docs)} HTML pages, {len(text_docs)} text documents")
    res["blocks"] = per_block(cfg, models, warc_dir, work / "blocks", html_docs, text_docs, min_seconds)

    sentences = [
        s.strip() + "."
        for d in text_docs
        if d.metadata.get("source") in ("kjv", "pydocs")
        for s in d.text.replace("\n", " ").split(". ")
        if 6 <= len(s.split()) <= 60
    ]
    say(f"near-dedup memory at {sizes} documents ({len(sentences):,} real sentences to draw from)")
    res["memory"] = near_dedup_memory(sizes, sentences, work)
    mh = cfg["dedup"]["near"]
    res["minhash"] = f"{mh['num_buckets']} bands x {mh['hashes_per_bucket']} rows, {mh['n_grams']}-grams"

    text = tables(res)
    print(f"machine: {res['machine']}\n\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.markdown:
        append_section(
            args.markdown,
            f"{utc_stamp()} -- stage-1 data pipeline vs datatrove's blocks",
            [
                f"- machine: {res['machine']}",
                f"- command: `{res['command']}`",
                f"- per-block input: {res['block_input']['html_pages']} HTML pages; {res['block_input']['text_docs']:,} text documents "
                "(their extracted text, fortunes, fortunes-zh, KJV chapters)",
                "",
                text,
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
