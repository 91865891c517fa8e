"""Mixture: sources with weights and maximum repeats -> the foundation's tokenizer and shards.

Each source ``s`` has a ``weight`` w_s and ``max_repeats`` r_s (epochs). With S_s the source's
characters and T the total budget (``total_chars``; default: all sources once), the source is
read ``e_s = min(r_s, w_s / sum(w) * T / S_s)`` times: whole copies, plus the fraction of a
copy drawn by a hash of (document id, copy), so the draw is reproducible. High-quality sources
(weight above their share) are thus repeated up to ``max_repeats`` times, as GPT-3 and The
Pile did; low-weight sources are subsampled. Documents of all copies are interleaved by a
seeded shuffle and written with ``llm.data.shards.write_shards`` (atomic shards, manifest
last), tokenised with a tokenizer given by path or trained here on one copy of every document
(``llm.data.tokenizer.train_tokenizer``). ``python -m llm.train data=shards
data.shards=<out>/shards`` trains on the result.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from llm.data.shards import atomic_write_json
from llm.pipeline.text import unit_hash
from llm.pipeline.writers import read_jsonl_gz


def plan_mixture(sizes: dict[str, int], sources: dict[str, dict], total_chars: int | None = None) -> dict[str, float]:
    """Epochs per source (see the module docstring)."""
    unknown = set(sources) - set(sizes)
    if unknown:
        logger.warning(f"mixture: sources {sorted(unknown)} have no documents left")
    present = {s: sizes[s] for s in sizes if sizes[s] > 0}
    weights = {s: float(sources.get(s, {}).get("weight", 1.0)) for s in present}
    total_w = sum(weights.values()) or 1.0
    budget = total_chars or sum(present.values())
    out = {}
    for s, size in present.items():
        cap = float(sources.get(s, {}).get("max_repeats", 1.0))
        out[s] = min(cap, weights[s] / total_w * budget / size)
    return out


class MixtureWriter(PipelineStep):
    name = "mixture"
    type = "🧪 - MIXTURE"

    def __init__(
        self,
        input_folder,
        out_dir: str,
        sources: dict | None = None,
        total_chars: int | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 8192,
        shard_max_tokens: int = 1 << 20,
        val_fraction: float = 0.01,
        seed: int = 0,
    ):
        super().__init__()
        self.input_folder = str(input_folder)
        self.out_dir = out_dir
        self.sources = {k: dict(v or {}) for k, v in (sources or {}).items()}
        self.total_chars, self.tokenizer = total_chars, tokenizer
        self.vocab_size, self.shard_max_tokens = vocab_size, shard_max_tokens
        self.val_fraction, self.seed = val_fraction, seed

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from llm.data.shards import write_shards
        from llm.data.tokenizer import load_tokenizer, train_tokenizer

        docs: dict[str, list[tuple[str, str]]] = {}
        for rec in read_jsonl_gz(self.input_folder):
            docs.setdefault(rec.get("metadata", {}).get("source", ""), []).append((rec["id"], rec["text"]))
        if not docs:
            raise RuntimeError(f"mixture: no documents in {self.input_folder}: every document was filtered out")
        sizes = {s: sum(len(t) for _, t in v) for s, v in docs.items()}
        epochs = plan_mixture(sizes, self.sources, self.total_chars)
        chosen: list[tuple[str, int]] = []  # (source, index)
        plan = {}
        for s in sorted(epochs):
            e = epochs[s]
            n_before = len(chosen)
            for copy in range(math.ceil(e)):
                part = e - copy
                for i, (doc_id, _) in enumerate(docs[s]):
                    if part >= 1 or unit_hash(f"{self.seed}:{copy}:{doc_id}") < part:
                        chosen.append((s, i))
            plan[s] = {
                "documents": len(docs[s]),
                "chars": sizes[s],
                "epochs": round(e, 4),
                "documents_written": len(chosen) - n_before,
                "weight": self.sources.get(s, {}).get("weight", 1.0),
                "max_repeats": self.sources.get(s, {}).get("max_repeats", 1.0),
            }
            self.stat_update(f"written_{s}", value=len(chosen) - n_before)
        order = np.random.default_rng(self.seed).permutation(len(chosen))
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.tokenizer:
            tok = load_tokenizer(self.tokenizer)
        else:
            tok = train_tokenizer((t for s in sorted(docs) for _, t in docs[s]), self.vocab_size, out / "tokenizer", show_progress=False)
        manifest = write_shards(
            (docs[chosen[j][0]][chosen[j][1]][1] for j in order),
            tok,
            out / "shards",
            shard_max_tokens=self.shard_max_tokens,
            val_fraction=self.val_fraction,
            seed=self.seed,
        )
        atomic_write_json(out / "mixture.json", {"sources": plan, "documents": len(chosen), "shards": manifest["totals"]})
        self.stat_update("documents", value=len(chosen))
        return
        yield
