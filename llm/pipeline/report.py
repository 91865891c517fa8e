"""Per-run report: documents and bytes in and out per block, removals by block and reason
(dedup included: ``removed_by_reason``), bad input, the boilerplate lines removed, the largest
duplicate clusters with examples, classifier figures, what each input source and each language
kept (``by_source``, ``by_language``), the quality threshold and the kept fraction per source,
warnings (a low classifier AUC, a source or language losing more than
``report.warn_loss_share``) and score histograms (PNG; quality per language and per source with
the threshold drawn). Written to ``<out>/report/`` (report.json, report.md, *.png) and, when
``report.wandb`` is set, to W&B (respects ``WANDB_MODE=offline``)."""

from __future__ import annotations

import heapq
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

from datatrove.utils.stats import PipelineStats

from llm.data.shards import atomic_write_json
from llm.pipeline.layout import STAGES
from llm.pipeline.layout import paths as _paths
from llm.pipeline.writers import read_jsonl_gz as _jsonl_gz

log = logging.getLogger(__name__)

#: removal folders (``work/removed/<folder>``) whose documents carry no ``filter_reason``: their reason
DEDUP_REASONS = {"exact_dedup": "duplicate", "near_dedup": "near_duplicate"}

#: values kept per histogram series: a seeded uniform sample beyond this (counts stay exact)
HIST_SAMPLE = 50_000


class Sample:
    """Count every value, keep a uniform sample of at most ``k`` of them (reservoir sampling,
    seeded): the report's memory stays bounded however many documents a crawl has, while counts
    and shares stay exact and histograms keep their shape."""

    def __init__(self, k: int = HIST_SAMPLE, seed: int = 0) -> None:
        import random

        self.k, self.n, self.values, self._rng = k, 0, [], random.Random(seed)

    def add(self, v) -> None:
        self.n += 1
        if len(self.values) < self.k:
            self.values.append(v)
        else:
            j = self._rng.randrange(self.n)
            if j < self.k:
                self.values[j] = v


def _stage_stats(logs: Path) -> list[dict]:
    files = sorted((logs / "stats").glob("*.json")) if (logs / "stats").is_dir() else []
    if not files:
        return []
    total = sum((PipelineStats.from_json(json.loads(f.read_text())) for f in files), start=PipelineStats())
    return [s.to_dict() for s in total.stats]


def _num(v) -> float:
    return v.get("total", 0) if isinstance(v, dict) else (v or 0)


def removals(stats: dict) -> dict[str, int]:
    """Documents one block removed, by reason, from its datatrove stats: every ``dropped_<reason>``
    count, and the drops counted without a reason (``dropped`` beyond the named ones) as
    ``unspecified``, so that no removal is left out."""
    removed = {k.removeprefix("dropped_"): int(_num(v)) for k, v in stats.items() if k.startswith("dropped_") and _num(v)}
    unnamed = int(_num(stats.get("dropped"))) - sum(removed.values())
    if unnamed > 0:
        removed["unspecified"] = unnamed
    return removed


def loss_table(docs_in: dict, chars_in: dict, docs_kept: dict, chars_kept: dict) -> dict[str, dict]:
    """Per key (a source or a language): documents and characters in and kept, and the shares
    lost (0 when nothing came in)."""
    out = {}
    for key in sorted(set(docs_in) | set(docs_kept)):
        di, ci, dk, ck = docs_in.get(key, 0), chars_in.get(key, 0), docs_kept.get(key, 0), chars_kept.get(key, 0)
        out[key] = {
            "docs_in": di,
            "docs_kept": dk,
            "chars_in": ci,
            "chars_kept": ck,
            "docs_lost_share": round(1 - dk / di, 4) if di else 0.0,
            "chars_lost_share": round(1 - ck / ci, 4) if ci else 0.0,
        }
    return out


def loss_warnings(table: dict[str, dict], kind: str, share: float) -> list[str]:
    """A warning for each entry of ``table`` (``loss_table``) that lost more than ``share`` of its
    documents or of its characters."""
    out = []
    for key, row in table.items():
        worst = max(row["docs_lost_share"], row["chars_lost_share"])
        if worst > share:
            removed = ", ".join(f"{k} {v}" for k, v in sorted(row.get("removed", {}).items(), key=lambda kv: -kv[1])[:4])
            out.append(
                f"{kind} {key!r} lost {row['docs_lost_share']:.0%} of its documents ({row['docs_in'] - row['docs_kept']} of "
                f"{row['docs_in']}) and {row['chars_lost_share']:.0%} of its characters, more than report.warn_loss_share="
                f"{share}" + (f"; removed by {removed}" if removed else "")
            )
    return out


def auc_warnings(figures: dict | None, min_auc: float) -> list[str]:
    """A warning for each AUC of the quality classifier's figures below ``min_auc``."""
    out = []
    for key, what in (("heldout_auc", "held-out reference vs held-out negatives"), ("eval_auc", "held-out reference vs eval negatives")):
        auc = (figures or {}).get(key)
        if auc is not None and auc == auc and auc < min_auc:
            out.append(
                f"quality classifier {key}={auc:.3f} ({what}) is below quality.min_auc={min_auc}: its scores barely rank "
                "good text above bad; give it more or closer reference text (quality.train.positive) before trusting its removals"
            )
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    _plt().close(fig)
    os.replace(tmp, path)
    return path.name


def _threshold_line(ax, threshold: float | None) -> None:
    if threshold is not None:
        ax.axvline(threshold, color="crimson", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3g}")


def _hist(values, title: str, path: Path, bins: int = 20, threshold: float | None = None) -> str | None:
    """One histogram of ``values``, or of each (label, values) pair; ``threshold`` drawn as a
    dashed vertical line."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    fig, ax = _plt().subplots(figsize=(5, 3.2))
    if isinstance(values[0], (list, tuple)):  # (label, values) pairs
        for label, vals in values:
            ax.hist(vals, bins=bins, alpha=0.6, label=f"{label} ({len(vals)})")
    else:
        ax.hist(values, bins=bins)
    _threshold_line(ax, threshold)
    if isinstance(values[0], (list, tuple)) or threshold is not None:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("documents")
    fig.tight_layout()
    return _save(fig, path)


def _hist_grid(groups: dict[str, dict[str, Sample]], title: str, path: Path, threshold: float | None, bins: int = 20) -> str | None:
    """One panel per group (a language or a source): its kept and removed scores on the same
    bins, the threshold drawn, the kept share in the panel's title."""
    groups = {k: v for k, v in groups.items() if v["kept"].n or v["removed"].n}
    if not groups:
        return None
    plt = _plt()
    cols = min(3, len(groups))
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows + 0.4), squeeze=False)
    edges = [i / bins for i in range(bins + 1)]
    for ax, (name, v) in zip(axes.flat, groups.items()):
        n = v["kept"].n + v["removed"].n
        ax.hist(
            [v["kept"].values, v["removed"].values], bins=edges, stacked=True, label=["kept", "removed"], color=["tab:green", "tab:gray"]
        )
        _threshold_line(ax, threshold)
        ax.set_title(f"{name}: kept {v['kept'].n} of {n} ({v['kept'].n / n:.0%})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


class ReportWriter:
    name = "report"

    def __init__(self, cfg: dict, out: str):
        self.cfg, self.out = cfg, out

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        build_report(self.cfg)
        return iter(())


def build_report(cfg: dict) -> dict:
    p = _paths(cfg)
    p["report"].mkdir(parents=True, exist_ok=True)
    blocks, reasons, bad = [], defaultdict(int), defaultdict(int)
    for stage in STAGES:
        for st in _stage_stats(p["logs"] / stage):
            name, stats = st["name"].split(": ", 1)[-1], st.get("stats", {})
            row = {
                "stage": stage,
                "block": name,
                "docs_in": _num(stats.get("total")) or _num(stats.get("documents")),
                "docs_out": _num(stats.get("forwarded")) or (_num(stats.get("documents")) if "documents" in stats else 0),
                "bytes_out": _num(stats.get("doc_len")),
                "seconds": round(_num(st.get("time_stats")), 3),
            }
            removed = removals(stats)
            if removed:
                row["removed"] = removed
                for k, v in removed.items():
                    reasons[f"{name}:{k}"] += v
            for k, v in stats.items():
                if k.startswith("bad_"):
                    bad[f"{name}:{k.removeprefix('bad_')}"] += int(_num(v))
            extra = {
                k: int(_num(v)) for k, v in stats.items() if k in ("lines_removed", "documents_changed", "c4_lines_removed", "passed_text")
            }
            if extra:
                row.update(extra)
            blocks.append(row)
    report: dict = {"name": cfg["name"], "blocks": blocks, "removed_by_reason": dict(reasons), "bad_input": dict(bad)}
    bp = p["boilerplate"] / "boilerplate.json"
    if bp.exists():
        report["boilerplate_lines"] = {
            s: {"documents": v["documents"], "lines": len(v["hashes"]), "top": v["top"][:10]} for s, v in json.loads(bp.read_text()).items()
        }
    # near-duplicate clusters, largest first: a count, five ids and an example each (never the documents)
    clusters: dict[int, dict] = {}
    for rec in _jsonl_gz(p["removed"] / "near_dedup"):
        m = rec.get("metadata", {})
        c = clusters.setdefault(
            m.get("minhash_cluster_id", -1), {"n": 0, "size": m.get("minhash_cluster_size"), "removed": [], "example": rec["text"][:300]}
        )
        c["n"] += 1
        if len(c["removed"]) < 5:
            c["removed"].append(rec["id"])
    top = sorted(clusters.items(), key=lambda kv: -kv[1]["n"])[:10]
    report["largest_near_duplicate_clusters"] = [
        {"cluster": cid, "size": c["size"] or c["n"] + 1, "removed": c["removed"], "example": c["example"]} for cid, c in top
    ]
    exact = heapq.nlargest(10, _jsonl_gz(p["filtered"]), key=lambda r: r.get("metadata", {}).get("duplicate_count", 0))
    report["largest_exact_duplicate_clusters"] = [
        {"kept": r["id"], "copies_removed": r["metadata"].get("duplicate_count", 0), "example": r["text"][:200]}
        for r in exact
        if r.get("metadata", {}).get("duplicate_count", 0) > 0
    ]
    for name in ("quality.bin.json", "harmful_en.bin.json", "harmful_zh.bin.json"):
        f = p["models"] / name
        if f.exists():
            report.setdefault("classifiers", {})[name.removesuffix(".bin.json")] = json.loads(f.read_text())
    mix = p["out"] / "mixture.json"
    if mix.exists():
        report["mixture"] = json.loads(mix.read_text())
    # what each source and each language kept, one pass over each folder (nothing held but counters and scores)
    cnt = {k: defaultdict(lambda: defaultdict(int)) for k in ("docs_in", "chars_in", "docs_kept", "chars_kept")}
    removed_by = {"source": defaultdict(lambda: defaultdict(int)), "language": defaultdict(lambda: defaultdict(int))}

    def _count(rec: dict, what: str, language: bool = True) -> None:
        m = rec.get("metadata", {})
        cnt[f"docs_{what}"]["source"][m.get("source", "?")] += 1
        cnt[f"chars_{what}"]["source"][m.get("source", "?")] += len(rec["text"])
        if language:
            cnt[f"docs_{what}"]["language"][m.get("language", "?")] += 1
            cnt[f"chars_{what}"]["language"][m.get("language", "?")] += len(rec["text"])

    for rec in _jsonl_gz(p["extracted"]):
        _count(rec, "in")
    removed_dirs = sorted(d.name for d in p["removed"].iterdir() if d.is_dir()) if p["removed"].is_dir() else []
    q_scores = defaultdict(lambda: {"kept": Sample(), "removed": Sample()})  # (kind, key) -> scores
    for block in removed_dirs:
        for rec in _jsonl_gz(p["removed"] / block):
            m = rec.get("metadata", {})
            reason = f"{block}:{m.get('filter_reason') or DEDUP_REASONS.get(block, 'unspecified')}"
            removed_by["source"][m.get("source", "?")][reason] += 1
            if block == "langid":  # not routed to a language: counted in its source only
                _count(rec, "in", language=False)
                continue
            removed_by["language"][m.get("language", "?")][reason] += 1
            if block == "quality" and m.get("quality_score") is not None:
                q_scores[("source", m.get("source", "?"))]["removed"].add(m["quality_score"])
                q_scores[("language", m.get("language", "?"))]["removed"].add(m["quality_score"])
    kept_scores = {k: Sample() for k in ("harmful_score", "language_score", "doc_chars")}
    kept = 0
    for rec in _jsonl_gz(p["final"]):
        kept += 1
        m = rec.get("metadata", {})
        _count(rec, "kept")
        if m.get("quality_score") is not None:
            q_scores[("source", m.get("source", "?"))]["kept"].add(m["quality_score"])
            q_scores[("language", m.get("language", "?"))]["kept"].add(m["quality_score"])
        for key, v in (("harmful_score", m.get("harmful_score")), ("language_score", m.get("language_score"))):
            if v is not None:
                kept_scores[key].add(v)
        kept_scores["doc_chars"].add(len(rec["text"]))
    warn_share = float(cfg.get("report", {}).get("warn_loss_share", 0.3))
    warnings: list[str] = []
    for kind, key in (("source", "by_source"), ("language", "by_language")):
        table = loss_table(*(cnt[k][kind] for k in ("docs_in", "chars_in", "docs_kept", "chars_kept")))
        for name, row in table.items():
            row["removed"] = dict(sorted(removed_by[kind][name].items(), key=lambda kv: -kv[1]))
        report[key] = table
        warnings += loss_warnings(table, kind, warn_share)

    # quality: the threshold used, the kept fraction of the judged documents per source, the AUC floor
    q = cfg.get("quality", {})
    if q.get("enabled", True):
        keep = q.get("keep", {})
        threshold = keep.get("threshold") if keep.get("rule", "threshold") == "threshold" else None
        tfile = p["models"] / "quality_threshold.json"
        chosen = json.loads(tfile.read_text()) if keep.get("keep_fraction") is not None and tfile.exists() else None
        if chosen:
            threshold = chosen["threshold"]
        figures = report.get("classifiers", {}).get("quality", {})
        report["quality"] = {
            "rule": keep.get("rule", "threshold"),
            "threshold": threshold,
            **({"keep_fraction": keep["keep_fraction"], "threshold_from_keep_fraction": chosen} if chosen else {}),
            "heldout_auc": figures.get("heldout_auc"),
            "eval_auc": figures.get("eval_auc"),
            "kept_fraction_by_source": {
                key: round(v["kept"].n / (v["kept"].n + v["removed"].n), 4)
                for (kind, key), v in sorted(q_scores.items())
                if kind == "source" and (v["kept"].n or v["removed"].n)
            },
            "judged_by_source": {key: v["kept"].n + v["removed"].n for (kind, key), v in sorted(q_scores.items()) if kind == "source"},
        }
        warnings += auc_warnings(figures, float(q.get("min_auc", 0.75)))
    else:
        threshold = None
    for w in warnings:
        log.warning(w)
    report["warnings"] = warnings

    # histograms
    plots = {}
    all_q = {"kept": [], "removed": []}  # the per-source samples together (each at most HIST_SAMPLE)
    for (kind, _), v in q_scores.items():
        if kind == "source":
            all_q["kept"] += v["kept"].values
            all_q["removed"] += v["removed"].values
    hf = cfg.get("harmful", {})
    for key, title, series, line in (
        ("quality_score", "quality score (kept vs removed)", [(k, v) for k, v in all_q.items() if v], threshold),
        ("harmful_score", "harmful classifier score (kept)", kept_scores["harmful_score"].values, hf.get("threshold")),
        ("language_score", "language-id score (kept)", kept_scores["language_score"].values, None),
        ("doc_chars", "document length, characters (kept)", kept_scores["doc_chars"].values, None),
    ):
        png = _hist(series, title, p["report"] / f"{key}.png", threshold=line)
        if png:
            plots[key] = png
    for kind in ("language", "source"):
        groups = {key: v for (k, key), v in sorted(q_scores.items()) if k == kind}
        png = _hist_grid(groups, f"quality score per {kind} (kept / removed)", p["report"] / f"quality_score_by_{kind}.png", threshold)
        if png:
            plots[f"quality_score_by_{kind}"] = png
    report["plots"] = plots
    report["kept_documents"] = kept
    atomic_write_json(p["report"] / "report.json", report)
    (p["report"] / "report.md").write_text(to_markdown(report))
    if cfg.get("report", {}).get("wandb"):
        _to_wandb(cfg, report, p["report"])
    return report


def summary(r: dict, report_dir: str) -> dict:
    """The CLI's summary of a report: kept documents, removals by block and reason, per source
    and per language (documents in/kept, shares lost), the quality classifier's AUC, threshold
    and kept fraction per source, bad input and the warnings."""

    def brief(table: dict) -> dict:
        keys = ("docs_in", "docs_kept", "docs_lost_share", "chars_lost_share")
        return {k: {f: v[f] for f in keys} for k, v in (table or {}).items()}

    out = {
        "kept_documents": r.get("kept_documents"),
        "removed_by_reason": r.get("removed_by_reason"),
        "by_source": brief(r.get("by_source")),
        "by_language": brief(r.get("by_language")),
    }
    if r.get("quality"):
        keep = ("threshold", "keep_fraction", "heldout_auc", "eval_auc", "kept_fraction_by_source")
        out["quality"] = {k: r["quality"][k] for k in keep if r["quality"].get(k) is not None}
    out.update({"bad_input": r.get("bad_input"), "warnings": r.get("warnings", []), "report": report_dir})
    return out


def to_markdown(r: dict) -> str:
    lines = [
        f"# Data pipeline report: {r['name']}",
        "",
        "| stage | block | docs in | docs out | MB out | s | removed |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for b in r["blocks"]:
        rem = ", ".join(f"{k} {v}" for k, v in sorted(b.get("removed", {}).items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {b['stage']} | {b['block']} | {int(b['docs_in'])} | {int(b['docs_out'])} | "
            f"{b['bytes_out'] / 1e6:.2f} | {b['seconds']} | {rem} |"
        )
    if r.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in r["warnings"]]
    if r.get("removed_by_reason"):
        lines += ["", "## Removed by block and reason", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(r["removed_by_reason"].items(), key=lambda kv: -kv[1])]
    for key, title in (("by_source", "source"), ("by_language", "language")):
        if r.get(key):
            lines += [
                "",
                f"## Per {title}",
                "",
                f"| {title} | docs in | docs kept | lost | chars lost | removed |",
                "|---|---:|---:|---:|---:|---|",
            ]
            for name, row in r[key].items():
                rem = ", ".join(f"{k} {v}" for k, v in row.get("removed", {}).items())
                lines.append(
                    f"| {name} | {row['docs_in']} | {row['docs_kept']} | {row['docs_lost_share']:.0%} | {row['chars_lost_share']:.0%} | {rem} |"
                )
    if r.get("quality"):
        qr = r["quality"]
        lines += ["", "## Quality classifier", "", f"- rule {qr['rule']}, threshold {qr['threshold']}"]
        if qr.get("keep_fraction") is not None:
            lines.append(f"- threshold chosen to keep {qr['keep_fraction']} of the judged documents: {qr['threshold_from_keep_fraction']}")
        lines.append(f"- held-out AUC {qr.get('heldout_auc')}, eval AUC {qr.get('eval_auc')}")
        lines += [f"- kept fraction, {k}: {v} of {qr['judged_by_source'][k]}" for k, v in qr.get("kept_fraction_by_source", {}).items()]
    if r.get("bad_input"):
        lines += ["", "## Bad input", ""] + [f"- {k}: {v}" for k, v in sorted(r["bad_input"].items())]
    if r.get("classifiers"):
        lines += ["", "## Classifiers", ""] + [f"- {k}: {json.dumps(v)}" for k, v in r["classifiers"].items()]
    for c in r.get("largest_near_duplicate_clusters", [])[:5]:
        lines.append(f"- near-dup cluster {c['cluster']} (size {c['size']}): removed {c['removed'][:3]}")
    lines += ["", "Plots: " + ", ".join(f"![{k}]({v})" for k, v in r.get("plots", {}).items())]
    return "\n".join(lines) + "\n"


def _to_wandb(cfg: dict, report: dict, folder: Path) -> None:
    import wandb

    w = cfg["report"]
    run = wandb.init(
        project=w.get("wandb_project", "xiulian-data"),
        name=cfg["name"],
        dir=str(folder),
        config={k: v for k, v in cfg.items() if k != "executor"},
        reinit=True,
    )
    table = wandb.Table(
        columns=["stage", "block", "docs_in", "docs_out", "bytes_out", "seconds"],
        data=[[b["stage"], b["block"], b["docs_in"], b["docs_out"], b["bytes_out"], b["seconds"]] for b in report["blocks"]],
    )
    run.log(
        {
            "blocks": table,
            **{f"removed/{k}": v for k, v in report["removed_by_reason"].items()},
            **{f"plots/{k}": wandb.Image(str(folder / v)) for k, v in report.get("plots", {}).items()},
        }
    )
    run.finish()
