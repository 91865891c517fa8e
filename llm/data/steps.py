"""The step-planning data module every fine-tuning stage shares.

A subclass says what the units of an epoch are (packed rows for SFT, preference pairs for the
reward model and DPO, prompts for PPO) and how a step's units become tensors; this class deals
whole steps to ranks, exactly once per epoch, and resumes mid-epoch:

* each epoch's units come in an order fixed by ``seed`` and the epoch (``units``);
* a step is ``grad_accum * micro_batch_size`` units; rank ``r`` of ``W`` takes steps
  ``r, r + W, ...`` of the global sequence of units, and the last step is completed with
  ``empty_unit`` (no loss), so every rank runs the same number of steps and nothing is dropped
  or repeated;
* ``state_dict`` is ``(epoch, step_in_epoch)``; after a resume the epoch restarts at that step
  of the same order.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

log = logging.getLogger(__name__)


def source_file(origin: str) -> str:
    """The file part of a record's origin: ``data/a.jsonl:12`` -> ``data/a.jsonl``,
    ``builtin:python-qa#3`` -> ``builtin:python-qa``."""
    head, sep, tail = origin.rpartition(":")
    if sep and tail.isdigit():
        return head
    return origin.split("#", 1)[0] or "?"


def warn_truncated(kind: str, unit: str, split: str, total: int, truncated: int, files: dict[str, int], seq_len: int, limit: float) -> bool:
    """Warn (and return True) when more than ``limit`` of a split's ``total`` units were cut at
    ``seq_len``, naming the count, the share and the files with the most cut units."""
    if not total or truncated / total <= limit:
        return False
    top = sorted(files.items(), key=lambda kv: -kv[1])
    named = ", ".join(f"{f} ({n})" for f, n in top[:3]) + (f" and {len(top) - 3} more file(s)" if len(top) > 3 else "")
    log.warning(
        "%s data: %d of %d %s %s (%.0f%%) were cut at data.seq_len=%d, more than data.warn_truncated_share=%g: %s; "
        "the model learns from the cut text only (raise data.seq_len, or shorten the records)",
        kind,
        truncated,
        total,
        split,
        unit,
        100 * truncated / total,
        seq_len,
        limit,
        named,
    )
    return True


class _StepStream(IterableDataset):
    def __init__(self, dm: StepDataModule, split: str, epoch: int, start_step: int, max_steps: int | None) -> None:
        self.dm, self.split, self.epoch, self.start, self.max_steps = dm, split, epoch, start_step, max_steps
        self.steps = dm.plan(split, epoch)
        n = len(self.steps)
        if max_steps is not None:
            n = min(n, max_steps)
        self.n = n

    def __len__(self) -> int:
        return max(0, self.n - self.start)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for s in range(self.start, self.n):
            yield self.dm.collate_step(self.split, self.steps[s])


class StepDataModule(L.LightningDataModule):
    """Subclasses implement :meth:`units`, :meth:`collate_step` and :meth:`has_split`."""

    empty_unit: Any = None
    kind = "data"
    report_name = "data_report.json"

    def __init__(self, micro_batch_size: int, grad_accum: int = 1, seed: int = 0, val_batches: int | None = None) -> None:
        super().__init__()
        self.mb, self.grad_accum, self.seed, self.val_batches = micro_batch_size, grad_accum, seed, val_batches
        self._epoch = 0
        self._step_in_epoch = 0
        self._resume: tuple[int, int] | None = None
        self._plans: dict[tuple[str, int], list] = {}

    # ------------------------------------------------------------ subclass API
    def units(self, split: str, epoch: int) -> list[Any]:
        raise NotImplementedError

    def collate_step(self, split: str, step_units: list[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        raise NotImplementedError

    def report(self) -> dict:
        raise NotImplementedError

    def write_report(self, run_dir: str | Path) -> Path:
        """``report()`` as JSON in the run directory, written atomically."""
        path = Path(run_dir) / self.report_name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report(), indent=2, ensure_ascii=False))
        tmp.replace(path)
        return path

    # ---------------------------------------------------------------- planning
    def _rank_world(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        if t is not None:
            from llm.strategy import data_rank_world

            return data_rank_world(t)
        return 0, 1

    def plan(self, split: str, epoch: int) -> list[list[Any]]:
        """This rank's steps of ``epoch``: each a list of ``grad_accum * micro_batch_size`` units
        (``grad_accum`` is 1 for validation)."""
        key = (split, epoch)
        if key not in self._plans:
            rank, world = self._rank_world()
            units = self.units(split, epoch)
            per_step = self.mb * (self.grad_accum if split == "train" else 1)
            steps = []
            for s in range(math.ceil(len(units) / (per_step * world))):
                lo = (s * world + rank) * per_step
                chunk = list(units[lo : lo + per_step])
                steps.append(chunk + [self.empty_unit for _ in range(per_step - len(chunk))])
            self._plans = {k: v for k, v in self._plans.items() if k[0] != split}
            self._plans[key] = steps
        return self._plans[key]

    def steps_per_epoch(self, epoch: int = 0) -> int:
        return len(self.plan("train", epoch))

    def micro_batches(self, split: str, step_units: list[Any]) -> list[list[Any]]:
        n = self.grad_accum if split == "train" else 1
        return [step_units[i * self.mb : (i + 1) * self.mb] for i in range(n)]

    # ---------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        t = getattr(self, "trainer", None)
        epoch = int(t.current_epoch) if t is not None else self._epoch
        start = 0
        if self._resume is not None and self._resume[0] == epoch:
            start = self._resume[1]
        self._resume = None
        self._epoch, self._step_in_epoch = epoch, start
        ds = _StepStream(self, "train", epoch, start, None)
        if start:
            log.info("resuming %s epoch %d at step %d of %d", self.kind, epoch, start, ds.n)
        return DataLoader(ds, batch_size=None, num_workers=0)

    def val_dataloader(self) -> Any:
        if not self.has_split("val"):
            return []
        return DataLoader(_StepStream(self, "val", 0, 0, self.val_batches), batch_size=None, num_workers=0)

    def on_train_step_done(self) -> None:
        self._step_in_epoch += 1

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "step_in_epoch": self._step_in_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = (int(state_dict["epoch"]), int(state_dict["step_in_epoch"]))
        self._epoch, self._step_in_epoch = self._resume


def stack_micro(micro: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Micro-batch dicts -> one dict with a leading ``grad_accum`` axis."""
    return {k: torch.stack([m[k] for m in micro]) for k in micro[0]}
