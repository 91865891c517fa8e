"""The SFT data module: conversations -> assistant-only labels -> packed (or padded) rows ->
step batches ``[grad_accum, micro_batch_size, L]``, the same shape the pretraining reader gives.

Every conversation is tokenised once at set-up. Each epoch shuffles the conversations with
``seed + epoch``, packs them into ``seq_len`` rows (or one per row), and deals whole steps to
ranks. The last step of an epoch is completed with empty rows (no loss), so every rank runs the
same number of steps and no conversation is dropped or repeated. Resume restores
``(epoch, step_in_epoch)`` and starts at that step of the same shuffle.

A data report (``sft_data_report.json`` in the run directory) counts what was read, skipped
(by reason), truncated, dropped because truncation left no assistant token, and how full the
packed rows are.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from llm.data.chat import (
    ChatDataError,
    Conversation,
    Encoded,
    collate_rows,
    encode_conversation,
    pack,
)
from llm.data.steps import StepDataModule, source_file, stack_micro, warn_truncated

log = logging.getLogger(__name__)


def encode_all(
    convs: Sequence[Conversation],
    tokenizer: Any,
    seq_len: int,
    on_truncated: str = "skip",
    desc: str = "tokenising",
    progress: bool = True,
    truncated_files: Counter | None = None,
) -> tuple[list[Encoded], Counter]:
    """Encode conversations, cut to ``seq_len``; drop (count or raise) those left with no
    assistant token. Returns (examples, counts); ``truncated_files`` (if given) gets the
    conversations cut at ``seq_len`` per source file."""
    counts: Counter = Counter()
    files = truncated_files if truncated_files is not None else Counter()
    out: list[Encoded] = []
    it: Any = convs
    if progress and len(convs) > 2000:
        try:
            from rich.progress import track

            it = track(convs, description=desc, transient=True)
        except ImportError:  # pragma: no cover
            pass
    for c in it:
        try:
            ex = encode_conversation(tokenizer, c.messages, max_tokens=seq_len)
        except ChatDataError as e:
            raise ChatDataError(f"{c.origin}: {e}") from None
        counts["conversations"] += 1
        n_loss = sum(1 for x in ex.labels if x != -100)
        if ex.truncated:
            counts["truncated"] += 1
            files[source_file(c.origin)] += 1
        if n_loss == 0:
            if on_truncated == "error":
                raise ChatDataError(
                    f"{c.origin}: truncation to seq_len={seq_len} leaves no assistant token "
                    f"({len(tokenizer(c.messages[0]['content']).input_ids)}+ tokens before the answer); "
                    "raise data.seq_len or set data.on_truncated=skip"
                )
            counts["dropped_no_assistant_tokens"] += 1
            continue
        counts["assistant_tokens"] += n_loss
        counts["tokens"] += len(ex.input_ids)
        out.append(ex)
    return out, counts


class SFTDataModule(StepDataModule):
    """Step batches of encoded conversations, exactly once per epoch on every rank."""

    empty_unit: list[int] = []  # an empty row: padding only, no loss
    kind = "SFT"
    report_name = "sft_data_report.json"

    def __init__(
        self,
        train: Sequence[Conversation],
        val: Sequence[Conversation],
        tokenizer: Any,
        seq_len: int,
        micro_batch_size: int,
        grad_accum: int = 1,
        packing: bool = True,
        seed: int = 0,
        on_truncated: str = "skip",
        val_batches: int | None = None,
        read_report: dict | None = None,
        warn_truncated_share: float = 0.1,
    ) -> None:
        super().__init__(micro_batch_size, grad_accum, seed, val_batches)
        if on_truncated not in ("skip", "error"):
            raise ValueError(f"data.on_truncated must be skip or error, got {on_truncated!r}")
        self.tokenizer = tokenizer
        self.seq_len, self.packing = seq_len, packing
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.examples: dict[str, list[Encoded]] = {}
        self.counts: dict[str, Counter] = {}
        self.truncated_files: dict[str, Counter] = {}
        for split, convs in (("train", train), ("val", val)):
            files: Counter = Counter()
            self.examples[split], self.counts[split] = encode_all(
                convs, tokenizer, seq_len, on_truncated, f"tokenising {split}", True, files
            )
            c, self.truncated_files[split] = self.counts[split], files
            warn_truncated("SFT", "conversations", split, c["conversations"], c["truncated"], files, seq_len, warn_truncated_share)
        if not self.examples["train"]:
            raise ChatDataError("SFT: no training conversation has an assistant token left (see the data report)")
        self.read_report = read_report or {}

    # ---------------------------------------------------------------- planning
    def rows(self, split: str, epoch: int) -> list[list[int]]:
        """Example indices of each row for ``epoch`` (shuffled for train)."""
        exs = self.examples[split]
        order = list(range(len(exs)))
        if split == "train":
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        if not self.packing:
            return [[i] for i in order]
        ordered = [exs[i] for i in order]
        rows = [[order[j] for j in row] for row in pack(ordered, self.seq_len)]
        if split == "train":  # packing groups by length: shuffle the rows again
            random.Random(self.seed * 1_000_003 + epoch + 1).shuffle(rows)
        return rows

    def units(self, split: str, epoch: int) -> list[list[int]]:
        return self.rows(split, epoch)

    def has_split(self, split: str) -> bool:
        return bool(self.examples.get(split))

    def collate_step(self, split: str, step_rows: list[list[int]]) -> dict[str, torch.Tensor]:
        exs = self.examples[split]
        if self.packing:
            length = self.seq_len
        else:
            longest = max((len(exs[r[0]].input_ids) for r in step_rows if r), default=1)
            length = min(self.seq_len, int(math.ceil(longest / 8) * 8))
        return stack_micro([collate_rows(exs, rows, self.pad_id, self.packing, length) for rows in self.micro_batches(split, step_rows)])

    # ---------------------------------------------------------------- report
    def report(self) -> dict:
        rep: dict[str, Any] = {"read": self.read_report}
        for split in ("train", "val"):
            c = dict(self.counts[split])
            c["truncated"] = c.get("truncated", 0)
            c["truncated_share"] = round(c["truncated"] / c["conversations"], 4) if c.get("conversations") else 0.0
            c["truncated_files"] = dict(self.truncated_files[split])
            rows = self.rows(split, 0)
            used = sum(len(self.examples[split][i].input_ids) for r in rows for i in r)
            c["rows"] = len(rows)
            c["row_fill"] = round(used / max(1, len(rows) * self.seq_len), 4) if self.packing else None
            rep[split] = c
        rep["packing"] = self.packing
        rep["seq_len"] = self.seq_len
        return rep
