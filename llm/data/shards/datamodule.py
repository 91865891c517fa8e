"""Token shards: the Lightning data module (train/val loaders with exact mid-epoch resume).

Imports Lightning; the writer and the stream (``llm.data.shards``) do not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from llm.data.shards.stream import PackedTokenStream, validate_shards

log = logging.getLogger("llm.data.shards")


class TokenDataModule(L.LightningDataModule):
    """A ``lightning.LightningDataModule``: train/val loaders over a shard directory, with
    exact mid-epoch resume.

    Requirements on the Trainer: ``reload_dataloaders_every_n_epochs=1`` (so every epoch gets
    a new loader, hence a new shuffle; checked in :meth:`setup`) and
    ``accumulate_grad_batches=1`` (a batch already holds all ``grad_accum`` micro-batches of
    one optimizer step: tensors are ``[grad_accum, micro_batch_size, seq_len]``).

    Resume protocol (state is saved in checkpoints by Lightning via ``state_dict``):

    * the LightningModule calls :meth:`on_train_step_done` once per optimizer step, *before*
      a checkpoint of that step can be written (e.g. at the end of ``training_step``; note
      that ModelCheckpoint's ``on_train_batch_end`` runs before the module's);
    * :meth:`state_dict` is ``{"epoch": e, "step_in_epoch": n}``;
    * after :meth:`load_state_dict`, the next :meth:`train_dataloader` for epoch ``e`` starts
      at step ``n`` (for any other epoch the restored step is ignored), then resets it.

    :meth:`train_dataloader` itself sets the counters to ``(epoch, start_step)``;
    :meth:`on_epoch_start` only resets them when called for a different epoch, so calling it
    after a resumed loader was built keeps the resumed count.

    Validation uses ``split="val"``, no shuffle, ``grad_accum=1`` (tensors
    ``[1, micro_batch_size, seq_len]``), in the main process (``num_workers=0``: val sets are
    small and one stream per rank needs the fewest tokens), at most ``val_batches`` steps.
    """

    def __init__(
        self,
        shards_dir: str | os.PathLike,
        seq_len: int,
        micro_batch_size: int,
        grad_accum: int = 1,
        num_workers: int = 1,
        seed: int = 0,
        shuffle_block: int = 64,
        skip_corrupt: bool = False,
        val_batches: int | None = None,
    ):
        super().__init__()
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.shards_dir = Path(shards_dir)
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle_block = shuffle_block
        self.skip_corrupt = skip_corrupt
        self.val_batches = val_batches
        self._epoch = 0
        self._step_in_epoch = 0
        self._resume_epoch: int | None = None
        self._resume_step = 0
        self._known_bad: dict[str, list[tuple[str, str]]] = {}
        #: (split, shard name, reason) of every shard left out because of skip_corrupt
        self.skipped_shards: list[tuple[str, str, str]] = []

    # -- helpers -----------------------------------------------------------------------------

    def _attached_trainer(self):
        return getattr(self, "trainer", None)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self._attached_trainer()
        if trainer is not None:
            from llm.strategy import data_rank_world

            return data_rank_world(trainer)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _bad(self, split: str):
        if not self.skip_corrupt:
            return None
        if split not in self._known_bad:
            self._known_bad[split] = validate_shards(self.shards_dir, split)
            for name, reason in self._known_bad[split]:
                self.skipped_shards.append((split, name, reason))
        return self._known_bad[split]

    def _stream(self, split: str, **kw) -> PackedTokenStream:
        rank, world = kw.pop("rank_world", self._rank_world())
        return PackedTokenStream(
            self.shards_dir,
            split,
            self.seq_len,
            self.micro_batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world,
            shuffle_block=self.shuffle_block,
            skip_corrupt=self.skip_corrupt,
            known_bad=self._bad(split),
            **kw,
        )

    def steps_per_epoch(self, world_size: int = 1, num_workers: int | None = None) -> int:
        """Optimizer steps per epoch on each rank for ``world_size`` ranks and ``num_workers``
        DataLoader workers (default: this module's ``num_workers``)."""
        nw = self.num_workers if num_workers is None else num_workers
        ds = self._stream("train", rank_world=(0, world_size), grad_accum=self.grad_accum, num_workers_hint=max(1, nw))
        return ds.steps_per_epoch()

    # -- Lightning hooks ---------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        trainer = self._attached_trainer()
        if trainer is not None and stage in (None, "fit"):
            if trainer.reload_dataloaders_every_n_epochs != 1:
                raise ValueError(
                    "TokenDataModule needs Trainer(reload_dataloaders_every_n_epochs=1) so that each epoch "
                    f"gets its own shuffle; got {trainer.reload_dataloaders_every_n_epochs}"
                )
            if trainer.accumulate_grad_batches != 1:
                raise ValueError(
                    "TokenDataModule batches already hold grad_accum micro-batches; use "
                    f"Trainer(accumulate_grad_batches=1), got {trainer.accumulate_grad_batches}"
                )

    def _loader(self, ds: PackedTokenStream, num_workers: int) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=False,
            pin_memory=False,
            prefetch_factor=2 if num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self._attached_trainer()
        epoch = int(trainer.current_epoch) if trainer is not None else self._epoch
        start = self._resume_step if self._resume_epoch == epoch else 0
        self._resume_epoch, self._resume_step = None, 0
        ds = self._stream(
            "train",
            grad_accum=self.grad_accum,
            epoch=epoch,
            start_step=start,
            shuffle=True,
            num_workers_hint=max(1, self.num_workers),
        )
        self._epoch, self._step_in_epoch = epoch, start
        if start:
            log.info("resuming epoch %d of %s at step %d of %d", epoch, self.shards_dir, start, len(ds))
        return self._loader(ds, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        ds = self._stream("val", grad_accum=1, epoch=0, shuffle=False, num_workers_hint=1, max_steps=self.val_batches)
        return self._loader(ds, 0)

    # -- resume state ------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int) -> None:
        """Start counting steps of ``epoch`` (no-op if the counters are already on ``epoch``)."""
        if epoch != self._epoch:
            self._epoch, self._step_in_epoch = int(epoch), 0

    def on_train_step_done(self) -> None:
        """Count one finished optimizer step of the current epoch."""
        self._step_in_epoch += 1

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "step_in_epoch": self._step_in_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_epoch = int(state_dict["epoch"])
        self._resume_step = int(state_dict["step_in_epoch"])
        self._epoch, self._step_in_epoch = self._resume_epoch, self._resume_step
