"""Mini-batches of cells over named input views, without per-item collation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


def as_tensor(x) -> torch.Tensor:
    """A float32 CPU tensor sharing memory with ``x`` where possible."""
    if isinstance(x, torch.Tensor):
        return x.float()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class ViewsDataset(Dataset):
    """Rows ``indices`` of several aligned arrays (and labels), indexed a whole batch at a time."""

    def __init__(
        self,
        views: Mapping[str, torch.Tensor],
        y: torch.Tensor | None = None,
        indices: np.ndarray | None = None,
    ):
        self.views = dict(views)
        self.y = y
        n = len(next(iter(self.views.values())))
        self.indices = torch.as_tensor(np.arange(n) if indices is None else indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, batch: list[int]) -> dict:
        rows = self.indices[torch.as_tensor(batch)]
        out: dict = {"views": {k: v[rows] for k, v in self.views.items()}}
        if self.y is not None:
            out["y"] = self.y[rows]
        return out


def batch_loader(
    dataset: ViewsDataset, *, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """A loader yielding whole batches (one indexing operation per batch, not per cell)."""
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None
    )
