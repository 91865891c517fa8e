"""Stage-1 data pipeline on real pages (python3.11-doc), with planted duplicates, harmful pages
and bad input: the whole pipeline runs once (local executor, 2 tasks) and each test checks one
promise of the issue against what it wrote."""

from __future__ import annotations

import gzip
import json
import statistics
from collections import Counter
from pathlib import Path

import pytest

DOCS = Path("/usr/share/doc/python3.11/html")
pytestmark = pytest.mark.skipif(not (DOCS / "_sources").is_dir(),
                                reason="python3.11-doc is not installed (bash launch/fixtures.sh as root)")


def _jsonl(folder: Path):
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from llm.data.__main__ import load_config
    from llm.pipeline.planted import build_corpus
    from llm.pipeline.run import run_pipeline

    root = tmp_path_factory.mktemp("pipeline")
    pages = sorted(DOCS.glob("library/*.html"))[::4] + sorted(DOCS.glob("genindex-*.html"))[:6]
    planted = build_corpus(root / "corpus", pages, DOCS)
    cfg = load_config("python_docs", [
        f"out={root}/out", "executor.tasks=2", "executor.workers=2",
        f"inputs=[{{name: pydocs, kind: html, path: '{root}/corpus/html', glob: '**/*.htm*'}},"
        f"{{name: crawl, kind: warc, path: '{root}/corpus/warc', glob: '*.warc'}}]",
        "quality.sources=[pydocs,crawl]", "quality.train.negative_sources=[pydocs]",
        "mixture.sources={pydocs: {weight: 1, max_repeats: 1}}", "mixture.vocab_size=1024",
    ])
    report = run_pipeline(cfg)
    return {"root": root, "cfg": cfg, "planted": planted, "report": report, "work": root / "out" / "work"}


def _removed(run, block):
    return {r["id"] for r in _jsonl(run["work"] / "removed" / block)}


def _pid(name):
    return f"pydocs/{name}"


def test_boilerplate_gone_main_text_kept(run):
    from resiliparse.extract.html2text import extract_plain_text

    from llm.pipeline.text import normalize_line, words

    pages = [p for p in run["planted"]["pages"] if "genindex" not in p]
    raw = {p: extract_plain_text((run["root"] / "corpus/html" / p).read_text(), preserve_formatting=True)
           for p in pages}
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
    manifest = json.loads((run["root"] / "out" / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["tokens"] > 10_000
    mix = json.loads((run["root"] / "out" / "mixture.json").read_text())
    assert mix["sources"]["pydocs"]["documents_written"] == run["report"]["kept_documents"] - \
        mix["sources"].get("crawl", {}).get("documents", 0)


def test_rerun_skips_finished_tasks(run):
    from llm.pipeline.run import STAGES, run_pipeline

    before = {s: sorted((run["work"] / "logs" / s / "completions").iterdir()) for s in STAGES}
    mtimes = {f: f.stat().st_mtime for fs in before.values() for f in fs}
    report = run_pipeline(run["cfg"])
    assert report["kept_documents"] == run["report"]["kept_documents"]
    assert all(f.stat().st_mtime == m for f, m in mtimes.items())


def test_output_shards_train_pretraining(run, tmp_path):
    import csv

    from conftest import FAST, compose
    from llm.train import train

    shards = run["root"] / "out" / "shards"
    cfg = compose(["data=shards", f"data.shards={shards}", "data.seq_len=64", "data.micro_batch_size=8",
                   "trainer.max_steps=40", "trainer.val_every_n_steps=1000", "trainer.ckpt_every_n_steps=0",
                   "export=false", *FAST], run_dir=tmp_path / "train")
    result = train(cfg)
    assert result["global_step"] == 40
    rows = list(csv.DictReader(open(next((tmp_path / "train").rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0] - 1.0
