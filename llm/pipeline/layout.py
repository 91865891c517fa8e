"""Where a pipeline run writes: its stages in order and the folders under ``out``."""

from __future__ import annotations

from pathlib import Path

STAGES = ("extract", "prepare", "filter", "buckets", "cluster", "final", "mixture", "report")


def paths(cfg: dict) -> dict[str, Path]:
    """The run's folders: ``out/work/<intermediate>``, ``out/report`` (``out/shards`` is the mixture's)."""
    out = Path(cfg["out"]).resolve()
    work = out / "work"
    return {
        "out": out,
        "work": work,
        "logs": work / "logs",
        "extracted": work / "extracted",
        "line_counts": work / "line_counts",
        "exact_sigs": work / "exact" / "sigs",
        "exact_dups": work / "exact" / "dups",
        "boilerplate": work / "boilerplate",
        "filtered": work / "filtered",
        "removed": work / "removed",
        "minhash": work / "minhash",
        "final": work / "final",
        "models": work / "models",
        "report": out / "report",
    }
