"""Overfit one batch: the first training batch, repeated (a debugging aid, `debug=overfit`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset


class _Repeat(IterableDataset):
    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.batch


class OverfitDataModule(L.LightningDataModule):
    def __init__(self, inner: L.LightningDataModule) -> None:
        super().__init__()
        self.inner = inner
        self._batch = None

    def train_dataloader(self) -> DataLoader:
        if self._batch is None:
            self.inner.trainer = self.trainer
            loader = self.inner.train_dataloader()
            self._batch = next(iter(loader))
        return DataLoader(_Repeat(self._batch), batch_size=None)

    def val_dataloader(self) -> list:
        return []
