"""Per-run report: documents and bytes in and out per block, removals by reason, bad input, the
boilerplate lines removed, the largest duplicate clusters with examples, classifier figures and
score histograms (PNG). Written to ``<out>/report/`` (report.json, report.md, *.png) and, when
``report.wandb`` is set, to W&B (respects ``WANDB_MODE=offline``)."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from datatrove.utils.stats import PipelineStats

from llm.data.shards import atomic_write_json
from llm.pipeline.layout import STAGES
from llm.pipeline.layout import paths as _paths
from llm.pipeline.writers import read_jsonl_gz as _jsonl_gz


def _stage_stats(logs: Path) -> list[dict]:
    files = sorted((logs / "stats").glob("*.json")) if (logs / "stats").is_dir() else []
    if not files:
        return []
    total = sum((PipelineStats.from_json(json.loads(f.read_text())) for f in files), start=PipelineStats())
    return [s.to_dict() for s in total.stats]


def _num(v) -> float:
    return v.get("total", 0) if isinstance(v, dict) else (v or 0)


def _hist(values, title: str, path: Path, bins: int = 20) -> str | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    if isinstance(values[0], (list, tuple)):  # (label, values) pairs
        for label, vals in values:
            ax.hist(vals, bins=bins, alpha=0.6, label=f"{label} ({len(vals)})")
        ax.legend(fontsize=7)
    else:
        ax.hist(values, bins=bins)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("documents")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path.name


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
            removed = {k.removeprefix("dropped_"): int(_num(v)) for k, v in stats.items() if k.startswith("dropped_") and _num(v)}
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
    # near-duplicate clusters: removed documents grouped by cluster, largest first
    clusters: dict[int, list] = defaultdict(list)
    for rec in _jsonl_gz(p["removed"] / "near_dedup"):
        m = rec.get("metadata", {})
        clusters[m.get("minhash_cluster_id", -1)].append(rec)
    top = sorted(clusters.items(), key=lambda kv: -len(kv[1]))[:10]
    report["largest_near_duplicate_clusters"] = [
        {
            "cluster": cid,
            "size": recs[0]["metadata"].get("minhash_cluster_size", len(recs) + 1),
            "removed": [r["id"] for r in recs[:5]],
            "example": recs[0]["text"][:300],
        }
        for cid, recs in top
    ]
    exact = sorted(_jsonl_gz(p["filtered"]), key=lambda r: -r.get("metadata", {}).get("duplicate_count", 0))[:10]
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
    # histograms
    final = list(_jsonl_gz(p["final"]))
    q_removed = list(_jsonl_gz(p["removed"] / "quality"))
    plots = {}
    for key, title, series in (
        (
            "quality_score",
            "quality score (kept vs removed)",
            [
                ("kept", [r["metadata"].get("quality_score") for r in final if "quality_score" in r["metadata"]]),
                ("removed", [r["metadata"].get("quality_score") for r in q_removed]),
            ],
        ),
        (
            "harmful_score",
            "harmful classifier score (kept)",
            [r["metadata"].get("harmful_score") for r in final if "harmful_score" in r["metadata"]],
        ),
        ("language_score", "language-id score (kept)", [r["metadata"].get("language_score") for r in final]),
        ("doc_chars", "document length, characters (kept)", [len(r["text"]) for r in final]),
    ):
        if series and isinstance(series[0], tuple):
            series = [(lab, [v for v in vals if v is not None]) for lab, vals in series]
            series = [s for s in series if s[1]]
        png = _hist(series, title, p["report"] / f"{key}.png")
        if png:
            plots[key] = png
    report["plots"] = plots
    report["kept_documents"] = len(final)
    atomic_write_json(p["report"] / "report.json", report)
    (p["report"] / "report.md").write_text(to_markdown(report))
    if cfg.get("report", {}).get("wandb"):
        _to_wandb(cfg, report, p["report"])
    return report


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
