"""Stage-1 data pipeline on real pages (python3.11-doc), with planted duplicates, harmful pages
and bad input: the whole pipeline runs once (local executor, 2 tasks) and each test checks one
promise of the issue against what it wrote."""

from __future__ import annotations

import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

DOCS = Path("/usr/share/doc/python3.11/html")
pytestmark = [
    pytest.mark.tier("integration"),  # the pipeline on real pages, in process
    pytest.mark.skipif(not (DOCS / "_sources").is_dir(), reason="python3.11-doc is not installed (bash launch/fixtures.sh as root)"),
]


def _jsonl(folder: Path):
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


def _overrides(root: Path, out: Path) -> list[str]:
    """The python_docs config pointed at the planted corpus, written to ``out``."""
    return [
        f"out={out}",
        "executor.tasks=2",
        "executor.workers=2",
        f"inputs=[{{name: pydocs, kind: html, path: '{root}/corpus/html', glob: '**/*.htm*'}},"
        f"{{name: crawl, kind: warc, path: '{root}/corpus/warc', glob: '*.warc'}}]",
        "quality.sources=[pydocs,crawl]",
        "quality.train.negative_sources=[pydocs]",
        "mixture.sources={pydocs: {weight: 1, max_repeats: 1}}",
        "mixture.vocab_size=1024",
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from llm.data.__main__ import load_config
    from llm.pipeline.planted import build_corpus
    from llm.pipeline.run import run_pipeline

    root = tmp_path_factory.mktemp("pipeline")
    pages = sorted(DOCS.glob("library/*.html"))[::4] + sorted(DOCS.glob("genindex-*.html"))[:6]
    planted = build_corpus(root / "corpus", pages, DOCS)
    cfg = load_config("python_docs", _overrides(root, root / "out"))
    report = run_pipeline(cfg)
    return {"root": root, "cfg": cfg, "planted": planted, "report": report, "work": root / "out" / "work"}


def _same_output(a: Path, b: Path) -> None:
    """Two runs of one config wrote the same documents (all but the path of the file read), the
    same removals and byte-identical token shards."""

    def docs(folder):
        rows = list(_jsonl(folder))
        for r in rows:
            r["metadata"].pop("file_path", None)
        return rows

    for sub in ("work/final", "work/filtered", "work/extracted"):
        assert docs(a / sub) == docs(b / sub), sub
    for block in sorted(p.name for p in (a / "work/removed").iterdir()):
        assert docs(a / "work/removed" / block) == docs(b / "work/removed" / block), block
    tars = sorted(p.name for p in (a / "shards").glob("*.tar"))
    assert tars and tars == sorted(p.name for p in (b / "shards").glob("*.tar"))
    for t in tars:
        assert (a / "shards" / t).read_bytes() == (b / "shards" / t).read_bytes(), t
    assert json.loads((a / "mixture.json").read_text())["sources"] == json.loads((b / "mixture.json").read_text())["sources"]


def _removed(run, block):
    return {r["id"] for r in _jsonl(run["work"] / "removed" / block)}


def _pid(name):
    return f"pydocs/{name}"


def test_boilerplate_gone_main_text_kept(run):
    from resiliparse.extract.html2text import extract_plain_text

    from llm.pipeline.text import normalize_line, words

    pages = [p for p in run["planted"]["pages"] if "genindex" not in p]
    raw = {p: extract_plain_text((run["root"] / "corpus/html" / p).read_text(), preserve_formatting=True) for p in pages}
    counts = Counter(ln for t in raw.values() for ln in {normalize_line(x) for x in t.splitlines()} if ln)
    sources = {p: (DOCS / "_sources" / p.removeprefix("docs/").replace(".html", ".rst.txt")) for p in pages}
    src_lines = {p: {normalize_line(x) for x in s.read_text().splitlines()} for p, s in sources.items() if s.exists()}
    boiler = {ln for ln, c in counts.items() if c >= 0.5 * len(pages)}
    assert len(boiler) >= 10, "the whole-page rendering should show the repeated navigation/footer lines"
    out = {r["id"]: r["text"] for r in _jsonl(run["work"] / "extracted")}
    clean, recalls = 0, []
    for p in pages:
        text = out.get(_pid(p))
        if text is None:
            continue
        lines = {normalize_line(x) for x in text.splitlines()}
        bad = (lines & boiler) - src_lines.get(p, set())
        clean += not bad
        if p in src_lines:
            ref = set(w.lower() for w in words(sources[p].read_text()))
            got = set(w.lower() for w in words(text))
            recalls.append(len(ref & got) / max(1, len(ref)))
    assert clean / len([p for p in pages if _pid(p) in out]) > 0.95
    assert statistics.median(recalls) > 0.85


def test_planted_exact_duplicates_all_removed(run):
    removed = _removed(run, "exact_dedup")
    extracted = {r["id"] for r in _jsonl(run["work"] / "extracted")}
    checked = 0
    for e in run["planted"]["exact"]:
        pair = {_pid(e["copy"]), _pid(e["of"])}
        assert len(pair & extracted) in (0, 2), e  # the same text gets the same language decision
        if pair <= extracted:
            assert len(pair & removed) == 1, e  # exactly one copy left
            checked += 1
    assert checked >= 4


def test_near_duplicates_recall_and_precision(run):
    removed = _removed(run, "near_dedup")
    filtered = {r["id"] for r in _jsonl(run["work"] / "filtered")}  # what reached near-dedup
    pairs = [n for n in run["planted"]["near"] if {_pid(n["copy"]), _pid(n["of"])} <= filtered]
    assert len(pairs) >= 5
    found = sum((_pid(n["copy"]) in removed) or (_pid(n["of"]) in removed) for n in pairs)
    planted_ids = {_pid(n["copy"]) for n in pairs} | {_pid(n["of"]) for n in pairs}
    assert found / len(pairs) >= 0.9
    assert removed and len(removed & planted_ids) / len(removed) >= 0.95


def test_harmful_removed_clean_list_with_emoji_kept(run):
    removed = _removed(run, "harmful")
    for name in run["planted"]["harmful"]:
        assert _pid(name) in removed, name  # by the harmful filter, not by an earlier rule
    final = {r["id"]: r["text"] for r in _jsonl(run["work"] / "final")}
    blog = final[_pid("planted/blog_fruit.html")]
    assert "• Cherries 🍒 from the old tree" in blog and "Home" not in blog and "Privacy" not in blog
    assert blog.splitlines()[0].startswith("The fruit we ate this summer 🍓")
    reasons = run["report"]["removed_by_reason"]
    assert any("harmful_" in k for k in reasons)


def test_bad_input_counted_not_fatal(run):
    bad = run["report"]["bad_input"]
    assert bad.get("reader:empty_file") == 1
    assert bad.get("reader:undecodable") == 1
    assert bad.get("reader:broken_warc_record") == 1
    ids = {r["metadata"].get("url") for r in _jsonl(run["work"] / "extracted")}
    assert set(run["planted"]["warc"]["good"]) <= ids  # the records around the broken one survive


def test_quality_classifier_ranks_reference_above_link_lists(run):
    q = run["report"]["classifiers"]["quality"]
    assert q["eval_negative"] >= 5 and q["eval_auc"] >= 0.9
    assert q["heldout_auc"] >= 0.9


def test_report_and_shards(run):
    rep = run["root"] / "out" / "report"
    assert (rep / "report.md").read_text().startswith("# Data pipeline report")
    assert (rep / "quality_score.png").stat().st_size > 1000
    rows = {(b["stage"], b["block"]) for b in run["report"]["blocks"]}
    assert {("prepare", "boilerplate_finder"), ("mixture", "mixture"), ("extract", "extract")} <= rows  # one-task steps too
    manifest = json.loads((run["root"] / "out" / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["tokens"] > 10_000
    mix = json.loads((run["root"] / "out" / "mixture.json").read_text())
    assert mix["sources"]["pydocs"]["documents_written"] == run["report"]["kept_documents"] - mix["sources"].get("crawl", {}).get(
        "documents", 0
    )


def test_rerun_skips_finished_tasks(run):
    from llm.pipeline.run import STAGES, run_pipeline

    before = {s: sorted((run["work"] / "logs" / s / "completions").iterdir()) for s in STAGES}
    mtimes = {f: f.stat().st_mtime for fs in before.values() for f in fs}
    report = run_pipeline(run["cfg"])
    assert report["kept_documents"] == run["report"]["kept_documents"]
    assert all(f.stat().st_mtime == m for f, m in mtimes.items())


def test_output_shards_train_pretraining(run, tmp_path):
    import csv

    from llm.train import train

    from conftest import FAST, compose

    shards = run["root"] / "out" / "shards"
    cfg = compose(
        [
            "data=shards",
            f"data.shards={shards}",
            "data.seq_len=64",
            "data.micro_batch_size=8",
            "trainer.max_steps=40",
            "trainer.val_every_n_steps=1000",
            "trainer.ckpt_every_n_steps=0",
            "export=false",
            *FAST,
        ],
        run_dir=tmp_path / "train",
    )
    result = train(cfg)
    assert result["global_step"] == 40
    rows = list(csv.DictReader(open(next((tmp_path / "train").rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0] - 1.0


def test_killed_run_resumes_without_redoing_finished_tasks(run, tmp_path):
    """SIGKILL the whole CLI while the second extract task is writing: the first task's output and
    completion marker stay, the half-written file is only a ``.partial``; the rerun skips the first
    task, redoes the second and ends with exactly the uninterrupted run's output."""
    from conftest import ROOT

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llm.data", "python_docs", *_overrides(run["root"], out), "executor.workers=1"]
    extracted, marks = out / "work/extracted", out / "work/logs/extract/completions"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while not (extracted / "00001.jsonl.gz.partial").exists():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (marks / "00000").exists() and not (marks / "00001").exists()
    assert (extracted / "00000.jsonl.gz").exists() and not (extracted / "00001.jsonl.gz").exists()
    assert not (out / "work/logs/filter/completions").exists()
    first = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (marks / "00000", extracted / "00000.jsonl.gz")}

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Skipping 1 already completed tasks" in r.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first} == first  # not redone
    assert (marks / "00001").exists() and not list(out.rglob("*.partial"))
    _same_output(run["root"] / "out", out)


@pytest.mark.slow
def test_slurm_array_jobs_give_the_local_output(run, cluster, tmp_path):
    """The same config with ``executor=slurm``: one array job per stage on the local Slurm cluster,
    chained by afterok; the output equals the local executor's."""
    from llm.data.__main__ import load_config
    from llm.pipeline.run import run_pipeline

    out = tmp_path / "out"
    cfg = load_config("python_docs", [*_overrides(run["root"], out), "executor=slurm", "executor.tasks=2", "executor.wait_timeout=900"])
    assert cfg["executor"]["kind"] == "slurm"
    report = run_pipeline(cfg)
    assert report["kept_documents"] == run["report"]["kept_documents"]
    script = (out / "work/logs/extract/launch_script.slurm").read_text()
    assert "#SBATCH --array=0-1" in script and "srun" in script
    assert len(list((out / "work/logs/extract/slurm_logs").glob("*_1.out"))) == 1  # array task 1 ran as its own job
    _same_output(run["root"] / "out", out)


def test_trafilatura_page_over_timeout_is_dropped_and_the_next_page_extracted():
    """A page trafilatura needs longer than ``extract.timeout`` for is dropped and counted; its
    worker process is killed and restarted, so the next page is still extracted."""
    from datatrove.data import Document

    from llm.pipeline.extract import HtmlExtractor

    pages = sorted(DOCS.glob("library/*.html"))[:40]
    big = "<html><body>" + "".join(p.read_text() for p in pages) + "</body></html>"  # a few MB of real pages
    small = (
        "<html><body><article><h1>Fruit</h1><p>Cherries from the old tree were sweet this year, "
        "and the pears were late but worth the wait.</p></article></body></html>"
    )
    docs = [Document(text=big, id="big", metadata={"format": "html"}), Document(text=small, id="small", metadata={"format": "html"})]
    ex = HtmlExtractor("trafilatura", timeout=0.5)
    out = list(ex.run(iter(docs), 0, 1))
    assert [d.id for d in out] == ["small"]
    assert "Cherries from the old tree" in out[0].text
    assert ex.stats["dropped_timeout"].total == 1 and ex.stats["forwarded"].total == 1


def test_report_to_wandb_offline(run, tmp_path, monkeypatch):
    """``report.wandb=true`` with ``WANDB_MODE=offline``: an offline W&B run in the report folder
    holding the per-block table and the histograms, no connection."""
    import copy

    import wandb

    from llm.pipeline.report import build_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = copy.deepcopy(run["cfg"])
    cfg["report"]["wandb"] = True
    report = build_report(cfg)
    wandb.finish()
    runs = list((run["root"] / "out" / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].glob("run-*.wandb"))
    media = runs[0] / "files" / "media"
    assert list(media.glob("table/blocks_*.table.json"))
    logged = {p.name.rsplit("_", 2)[0] for p in media.glob("images/plots/*.png")}  # <key>_<step>_<hash>.png
    assert report["plots"] and logged == set(report["plots"])


def test_blockwise_minhash_signature_equals_datatrove():
    """Our signature (running minimum over blocks of shingles, bounded memory) is datatrove's."""
    import numpy as np
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    from llm.pipeline.dedup import MinhashSignature

    rng = np.random.default_rng(0)
    for precision in (32, 64):
        block = MinhashSignature("/tmp", config=MinhashConfig(hash_config=HashConfig(precision=precision)))
        for n in (1, 7, block.SHINGLE_BLOCK, block.SHINGLE_BLOCK + 1, 3 * block.SHINGLE_BLOCK + 5):
            sh = rng.integers(0, 2**63, size=(n, 1), dtype=np.uint64)
            assert block.get_signature(sh) == MinhashDedupSignature.get_signature(block, sh), (precision, n)


def test_langid_min_score_per_source():
    """A short English fortune scores under the default 0.5; its source's own min_score keeps it,
    other sources still use the default."""
    from datatrove.data import Document

    from llm.pipeline.langid import LanguageRouter

    text = "I am a deeply superficial person.\t\t-- Andy Warhol"
    router = LanguageRouter(["en", "zh"], min_score=0.5, sources={"fortunes": {"min_score": 0.3}})
    kept = router.filter(Document(text=text, id="f", metadata={"source": "fortunes"}))
    other = router.filter(Document(text=text, id="o", metadata={"source": "crawl"}))
    assert kept is True
    assert other == (False, "language_low_score")
    with pytest.raises(ValueError, match="langid.sources.fortunes"):
        LanguageRouter(sources={"fortunes": {"min_scor": 0.3}})


def test_top_ngram_rule_needs_a_repeat():
    """Gopher's top n-gram rule counts a repeated n-gram: a short quote whose every 3-gram occurs once
    passes (datatrove's version drops it: one 3-gram is a quarter of 12 words), a repetitive text fails."""
    from datatrove.data import Document

    from llm.pipeline.heuristics import HeuristicFilter

    flt = HeuristicFilter(default={"min_words": 5, "min_stop_words": 1})
    quote = "186,282 miles per second:\n\tIt isn't just a good idea, it's the law!"
    assert flt.filter(Document(text=quote, id="q", metadata={"language": "en"})) is True
    spam = "buy cheap pills now and buy cheap pills today, buy cheap pills at the best price for you"
    kept, reason = flt.filter(Document(text=spam, id="s", metadata={"language": "en"}))
    assert kept is False and reason == "gopher_top_2gram"  # "buy cheap" three times


def test_pareto_keep_rule_matches_gpt3(run):
    """GPT-3's rule, keep when pareto(alpha) > 1 - score: the kept fraction at each score is
    (2 - score)^-alpha (Lomax tail), decisions are reproducible per document, and the filter
    applies it to the trained classifier's scores."""
    from datatrove.data import Document

    from llm.pipeline.quality import QualityFilter, pareto_keep

    n = 6000
    for score in (0.3, 0.8, 1.0):
        kept = sum(pareto_keep(f"d{i}", score, 9.0) for i in range(n)) / n
        p = (2.0 - score) ** -9.0
        assert abs(kept - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (score, kept, p)
    assert [pareto_keep(f"d{i}", 0.8, 9.0) for i in range(50)] == [pareto_keep(f"d{i}", 0.8, 9.0) for i in range(50)]
    model = str(run["work"] / "models" / "quality.bin")
    docs = [r for r in _jsonl(run["work"] / "filtered")]
    flt = QualityFilter(model, rule="pareto", alpha=2.0)
    out = [flt.filter(Document(text=r["text"], id=r["id"], metadata=dict(r["metadata"]))) for r in docs]
    kept = [d for d, o in zip(docs, out) if o is True]
    assert 0 < len(kept) < len(docs)
    assert all(o == (False, "quality_pareto") for o in out if o is not True)
