"""The run report: every removal by block and reason (dedup included), what each source and each
language kept, warnings when one loses more than ``report.warn_loss_share``, the quality
threshold chosen by a kept fraction, histograms with the threshold, small harmful models and the
CLI summary. The pipeline runs once on a corpus generated from this repository's own text
(tests/pipeline_texts.py: English prose pages, Chinese texts, duplicates planted), so nothing
here needs a Debian package."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from pipeline_texts import ZH, list_of_tables, page, prose_sections


def _jsonl(folder: Path):
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            yield from (json.loads(line) for line in fh)


# ----------------------------------------------------------------------------- unit


def test_drops_without_a_reason_are_counted():
    """datatrove's dedup filters count ``dropped`` with no ``dropped_<reason>``: the report's
    removals keep them (the run that reported ``{}`` with 26 duplicates removed)."""
    from llm.pipeline.report import removals

    assert removals({"total": 40, "dropped": 26, "forwarded": 14}) == {"unspecified": 26}
    assert removals({"total": 9, "dropped": 3, "dropped_gopher_short": 2, "dropped_c4_lorem": 1}) == {"gopher_short": 2, "c4_lorem": 1}
    assert removals({"total": {"total": 5}, "dropped": {"total": 4}, "dropped_x": {"total": 1}}) == {"x": 1, "unspecified": 3}
    assert removals({"dropped_timeout": 2}) == {"timeout": 2}  # a block counting only named drops
    assert removals({"total": 5, "forwarded": 5}) == {}


def test_loss_table_and_warnings():
    from llm.pipeline.report import loss_table, loss_warnings

    t = loss_table({"en": 10, "zh": 32, "ja": 0}, {"en": 1000, "zh": 5000}, {"en": 9, "zh": 26}, {"en": 950, "zh": 3400, "ja": 0})
    assert t["en"]["docs_lost_share"] == 0.1 and t["en"]["chars_lost_share"] == 0.05
    assert t["zh"]["docs_lost_share"] == round(6 / 32, 4) and t["zh"]["chars_lost_share"] == 0.32
    assert t["ja"]["docs_lost_share"] == 0.0
    t["zh"]["removed"] = {"heuristics:gopher_dup_5gram": 6}
    (w,) = loss_warnings(t, "language", 0.3)
    assert w.startswith("language 'zh' lost 19% of its documents (6 of 32) and 32% of its characters")
    assert "heuristics:gopher_dup_5gram 6" in w
    assert loss_warnings(t, "language", 0.32) == []  # more than the share, not as much


def test_warn_loss_share_is_checked_when_the_config_loads():
    from llm.data.__main__ import load_config
    from llm.pipeline.config import PipelineConfigError

    assert load_config("python_docs", [])["report"]["warn_loss_share"] == 0.3
    with pytest.raises(PipelineConfigError, match=r"report.warn_loss_share=1.5"):
        load_config("python_docs", ["report.warn_loss_share=1.5"])


# ----------------------------------------------------------------------------- a small run

CONFIG = """\
defaults:
  - base
  - _self_
name: report_test
out: {out}
inputs:
  - {{name: site, kind: html, path: {root}/site}}
  - {{name: zh, kind: txt, path: {root}/zh}}
  - {{name: mirror, kind: jsonl, path: {root}/mirror}}
quality:
  sources: [site]
  train:
    positive:
      - {{name: reference, kind: txt, path: {root}/ref}}
    negative_sources: [site]
  keep: {{keep_fraction: 0.8}}
harmful:
  classifier_languages: [en]
mixture:
  vocab_size: 512
executor:
  tasks: 1
  workers: 1
"""


def _corpus(root: Path) -> dict:
    """English pages of the repository's documentation with a site's menus (two near copies
    and a DocBook-style "List of Tables" link page among them), Chinese texts, and a ``mirror`` source of
    exact copies of three Chinese texts and near copies of two English pages."""
    secs = prose_sections()
    for d in ("site", "zh", "mirror", "ref"):
        (root / d).mkdir(parents=True)
    for i, (title, text) in enumerate(secs):
        (root / "site" / f"{i:03d}.html").write_text(page(title, text), encoding="utf-8")
        (root / "ref" / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    longest = sorted(range(len(secs)), key=lambda i: -len(secs[i][1]))[:2]
    for k, i in enumerate(longest):  # near copies: one sentence added
        title, text = secs[i]
        (root / "site" / f"near_{k}.html").write_text(page(title, "This page was copied from another site. " + text), encoding="utf-8")
    tables = list_of_tables().splitlines()
    (root / "site" / "tables.html").write_text(
        "<html><body><h1>List of Tables</h1><dl>" + "".join(f"<dt><a href='#'>{e}</a></dt>" for e in tables[1:]) + "</dl></body></html>"
    )
    for i, text in enumerate(ZH):
        (root / "zh" / f"{i}.txt").write_text(text, encoding="utf-8")
    own = [text for _, text in secs[-2:]]
    rows = [{"id": f"copy{i}", "text": ZH[i]} for i in range(3)] + [{"id": f"own{i}", "text": t + " (mirror)"} for i, t in enumerate(own)]
    (root / "mirror" / "m.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return {"near": [f"site/near_{k}.html" for k in range(2)], "exact": [f"copy{i}" for i in range(3)]}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from llm.data.__main__ import main

    root = tmp_path_factory.mktemp("report")
    planted = _corpus(root / "in")
    cfg = root / "report_test.yaml"
    cfg.write_text(CONFIG.format(out=root / "out", root=root / "in"))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(cfg)]) == 0
    out = buf.getvalue()
    summary = json.loads(out[out.index("{\n") :])
    report = json.loads((root / "out" / "report" / "report.json").read_text())
    return {"root": root, "work": root / "out" / "work", "report": report, "summary": summary, "planted": planted}


@pytest.mark.tier("integration")
def test_every_removal_is_in_removed_by_reason(small_run):
    """Each document written to ``work/removed/<block>`` is counted under that block in
    ``removed_by_reason``: exact and near duplicates included."""
    rep, work = small_run["report"], small_run["work"]
    reasons = rep["removed_by_reason"]
    exact = [r["id"] for r in _jsonl(work / "removed" / "exact_dedup")]
    near = list(_jsonl(work / "removed" / "near_dedup"))
    assert len(exact) >= 3 and set(small_run["planted"]["exact"]) <= {i.split("/")[-1] for i in exact}
    assert near
    assert reasons["exact_dedup:duplicate"] == len(exact)
    assert reasons["near_dedup:near_duplicate"] == len(near)
    for block in sorted(p.name for p in (work / "removed").iterdir()):
        files = Counter(
            f"{block}:{r['metadata'].get('filter_reason') or {'exact_dedup': 'duplicate', 'near_dedup': 'near_duplicate'}[block]}"
            for r in _jsonl(work / "removed" / block)
        )
        assert {k: v for k, v in reasons.items() if k.startswith(block + ":")} == dict(files), block
    assert small_run["summary"]["removed_by_reason"] == reasons
    md = (small_run["root"] / "out" / "report" / "report.md").read_text()
    assert f"- exact_dedup:duplicate: {len(exact)}" in md


@pytest.mark.tier("integration")
def test_per_source_and_language_counts_and_loss_warnings(small_run):
    rep, work = small_run["report"], small_run["work"]
    extracted, final = list(_jsonl(work / "extracted")), list(_jsonl(work / "final"))
    langid_removed = list(_jsonl(work / "removed" / "langid"))
    for kind, key in (("source", "by_source"), ("language", "by_language")):
        docs_in = Counter(r["metadata"][kind] for r in extracted + (langid_removed if kind == "source" else []))
        kept = Counter(r["metadata"][kind] for r in final)
        chars_kept = Counter()
        for r in final:
            chars_kept[r["metadata"][kind]] += len(r["text"])
        table = rep[key]
        assert {k: v["docs_in"] for k, v in table.items()} == dict(docs_in)
        assert {k: v["docs_kept"] for k, v in table.items() if v["docs_kept"]} == dict(kept)
        assert {k: v["chars_kept"] for k, v in table.items() if v["chars_kept"]} == dict(chars_kept)
        for name, row in table.items():
            removed = sum(row["removed"].values()) - (row["removed"].get("langid:language_low_score", 0) if kind == "language" else 0)
            assert row["docs_in"] - row["docs_kept"] >= removed  # every recorded removal counted against its source/language
            warned = any(w.startswith(f"{kind} {name!r} lost") for w in rep["warnings"])
            assert warned == (max(row["docs_lost_share"], row["chars_lost_share"]) > 0.3), (kind, name, row)
    assert rep["by_language"]["zh"]["docs_lost_share"] > 0.3 and rep["by_source"]["mirror"]["docs_lost_share"] > 0.3
    assert rep["by_source"]["mirror"]["removed"]["exact_dedup:duplicate"] == 3
    assert any(w.startswith("source 'mirror' lost") for w in rep["warnings"])
    assert any(w.startswith("language 'zh' lost") for w in rep["warnings"])
    s = small_run["summary"]
    assert s["warnings"] == rep["warnings"]
    assert s["by_source"]["mirror"]["docs_in"] == rep["by_source"]["mirror"]["docs_in"]
    assert set(s["by_language"]) == set(rep["by_language"])


@pytest.mark.tier("integration")
def test_quality_threshold_from_keep_fraction_and_kept_share_per_source(small_run):
    rep, work = small_run["report"], small_run["work"]
    chosen = json.loads((work / "models" / "quality_threshold.json").read_text())
    q = rep["quality"]
    assert q["threshold"] == chosen["threshold"] and q["keep_fraction"] == 0.8
    assert abs(chosen["kept_fraction"] - 0.8) <= 0.05  # over the filtered documents it was chosen on
    scores_kept = [r["metadata"]["quality_score"] for r in _jsonl(work / "final") if "quality_score" in r["metadata"]]
    scores_removed = [r["metadata"]["quality_score"] for r in _jsonl(work / "removed" / "quality")]
    assert min(scores_kept) >= chosen["threshold"] - 5e-5 and max(scores_removed) <= chosen["threshold"] + 5e-5  # scores kept to 4 places
    assert q["kept_fraction_by_source"] == {"site": round(len(scores_kept) / (len(scores_kept) + len(scores_removed)), 4)}
    assert abs(q["kept_fraction_by_source"]["site"] - 0.8) <= 0.1
    assert set(q["kept_fraction_by_source"]) == set(small_run["summary"]["quality"]["kept_fraction_by_source"])
    assert q["heldout_auc"] == rep["classifiers"]["quality"]["heldout_auc"] == small_run["summary"]["quality"]["heldout_auc"]
    assert "site/tables.html" in {r["id"] for r in _jsonl(work / "removed" / "quality")}  # the link list
    plots = small_run["root"] / "out" / "report"
    for name in ("quality_score_by_language", "quality_score_by_source", "quality_score"):
        assert rep["plots"][name] == f"{name}.png" and (plots / f"{name}.png").stat().st_size > 5000


@pytest.mark.tier("integration")
def test_harmful_models_are_small(small_run):
    """The harmful classifier hashes its bigrams into harmful.buckets (50,000): a few MB on disk
    (with fastText's default 2M buckets it was 128 MB)."""
    size = (small_run["work"] / "models" / "harmful_en.bin").stat().st_size
    assert size < 5_000_000 and small_run["report"]["classifiers"]["harmful_en"]["model_bytes"] == size


@pytest.mark.tier("integration")  # trains fastText models (seconds)
def test_small_harmful_models_train_one_after_another(tmp_path):
    """Models with few buckets, trained one after another in one process (as the prepare stage
    trains quality, then harmful en and zh), all train and give the same figures: trained in the
    process itself, fastText's result depended on what the process had done before (different
    models, or "Encountered NaN" in the pipeline); each training now runs in a fresh interpreter."""
    from llm.pipeline.classify import train_fasttext
    from llm.pipeline.train_classifiers import harmful_examples

    records = [{"text": t, "metadata": {"language": "en"}} for _, t in prose_sections()]
    pos, neg = harmful_examples("en", records, {"benign_paragraphs": 3000})
    train_fasttext(pos, neg, tmp_path / "big.bin", holdout=0.2, epoch=5, dim=32)  # as the quality model: 2M buckets, then freed
    figures = [train_fasttext(pos, neg, tmp_path / f"m{i}.bin", holdout=0.2, epoch=50, dim=16, buckets=50000) for i in range(4)]
    assert all(f == figures[0] for f in figures)
    assert figures[0]["model_bytes"] < 5_000_000 and figures[0]["heldout_auc"] > 0.5


# ------------------------------------------------------------------- the report's memory at crawl scale
def test_sample_counts_exactly_and_keeps_at_most_k():
    from llm.pipeline.report import Sample

    a, b = Sample(k=100, seed=3), Sample(k=100, seed=3)
    for i in range(10_000):
        a.add(i / 10_000)
        b.add(i / 10_000)
    assert a.n == 10_000 and len(a.values) == 100 and a.values == b.values  # exact count, bounded, seeded
    assert 0.35 < sum(a.values) / 100 < 0.65  # a uniform sample of a uniform ramp (mean 0.5; sd of the mean 0.03)
    small = Sample(k=100)
    for v in (0.1, 0.2):
        small.add(v)
    assert small.values == [0.1, 0.2] and small.n == 2


def _report_inputs(out: Path, n: int) -> dict:
    """The folders the report reads, for ``n`` documents: all extracted, a tenth near-duplicates
    (in 5-document clusters), a tenth removed by quality, the rest kept."""
    import gzip

    from llm.pipeline.layout import paths

    cfg = {"name": "mem", "out": str(out), "quality": {"enabled": True, "keep": {"threshold": 0.5}}}
    p = paths(cfg)
    text = "a sentence of ordinary prose that repeats to give each document some weight. " * 40  # 3 KB
    files = {k: gzip.open(_mk(p[k] if k != "quality" else p["removed"] / k), "wt") for k in ("extracted", "final", "quality")}
    files["near_dedup"] = gzip.open(_mk(p["removed"] / "near_dedup"), "wt")
    for i in range(n):
        meta = {"source": f"s{i % 3}", "language": "en", "quality_score": (i % 97) / 97, "harmful_score": 0.01, "language_score": 0.9}
        rec = {"id": f"d{i}", "text": text, "metadata": meta}
        files["extracted"].write(json.dumps(rec) + "\n")
        if i % 10 == 0:
            rec["metadata"] = {**meta, "minhash_cluster_id": i // 50, "minhash_cluster_size": 6}
            files["near_dedup"].write(json.dumps(rec) + "\n")
        elif i % 10 == 1:
            rec["metadata"] = {**meta, "filter_reason": "low_quality"}
            files["quality"].write(json.dumps(rec) + "\n")
        else:
            files["final"].write(json.dumps(rec) + "\n")
    for f in files.values():
        f.close()
    return cfg


def _mk(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "00000.jsonl.gz"


@pytest.mark.tier("integration")
def test_report_memory_does_not_grow_with_the_corpus(tmp_path, monkeypatch):
    """The report reads every document once and keeps counters, five ids per near-duplicate
    cluster and bounded samples for its histograms: its peak Python memory (tracemalloc, after a
    warm-up run that pays for imports and the plotting library) grows by under 4 MiB from 10k to
    40k documents (by 12 MiB before: it held every near-duplicate's text and a score per
    document), and its counts stay exact."""
    import tracemalloc

    from llm.pipeline import report as rep

    monkeypatch.setattr(rep, "HIST_SAMPLE", 2_000)  # the bound, small enough to be reached by both corpora
    monkeypatch.setattr(rep.Sample.__init__, "__defaults__", (2_000, 0))
    peaks = {}
    for n in (1_000, 10_000, 40_000):
        cfg = _report_inputs(tmp_path / str(n), n)
        tracemalloc.start()
        r = rep.build_report(cfg)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert r["kept_documents"] == n - 2 * (n // 10)
        assert r["by_source"]["s0"]["docs_in"] == (n + 2) // 3
        assert sum(r["quality"]["judged_by_source"].values()) == n - n // 10
        assert r["largest_near_duplicate_clusters"][0]["removed"] and len(r["largest_near_duplicate_clusters"][0]["removed"]) <= 5
    # 4 MiB: what grows is matplotlib's artists (the larger corpus fills more histogram bins: +2.2 to
    # +3.3 MiB measured with this environment's matplotlib), not the report's own data (12 MiB before)
    assert peaks[40_000] - peaks[10_000] < 4 * 2**20, peaks
