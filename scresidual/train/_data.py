"""Mini-batches of cells over named input views, without per-item collation.

Training reads precomputed per-cell inputs (SIGN-style neighbourhood hops), so every batch is
an independent set of rows: memory per step is bounded by the batch size, and under data
parallelism each process simply draws its own shard of the rows.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (what Lightning's seeding does)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def as_tensor(x) -> torch.Tensor:
    """A float32 CPU tensor sharing memory with ``x`` where possible."""
    if isinstance(x, torch.Tensor):
        return x.float()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class ViewsDataset(Dataset):
    """Rows ``indices`` of several aligned arrays (and labels), indexed a whole batch at a time.

    ``views`` is a mapping of named arrays (a batch's ``"views"`` is then a dict of their
    rows) or one array (then its rows), for networks taking a single input.
    """

    def __init__(
        self,
        views: Mapping[str, torch.Tensor] | torch.Tensor,
        y: torch.Tensor | None = None,
        indices: np.ndarray | None = None,
    ):
        self.views = views if isinstance(views, torch.Tensor) else dict(views)
        self.y = y
        n = len(views) if isinstance(views, torch.Tensor) else len(next(iter(self.views.values())))
        self.indices = torch.as_tensor(np.arange(n) if indices is None else indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, batch: list[int]) -> dict:
        rows = self.indices[torch.as_tensor(batch)]
        views = self.views
        out: dict = {
            "views": views[rows]
            if isinstance(views, torch.Tensor)
            else {k: v[rows] for k, v in views.items()}
        }
        if self.y is not None:
            out["y"] = self.y[rows]
        return out


class EpochBatchSampler(BatchSampler):
    """A :class:`~torch.utils.data.BatchSampler` that forwards ``set_epoch`` to its sampler.

    Lightning calls ``set_epoch`` on a loader's ``sampler`` at the start of every epoch; the
    loaders here pass the batch sampler as ``sampler`` (one indexing operation per batch), so
    the call must reach the :class:`~torch.utils.data.DistributedSampler` underneath for each
    epoch to get a new, seeded, rank-consistent shuffle.
    """

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the underlying sampler (no-op if it has none)."""
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def batch_loader(
    dataset: ViewsDataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    min_batches: int = 1,
) -> DataLoader:
    """A loader yielding whole batches (one indexing operation per batch, not per cell).

    Parameters
    ----------
    dataset
        The rows to iterate over.
    batch_size
        Rows per batch.
    shuffle
        Reshuffle the rows every epoch (seeded).
    seed
        Seed of the shuffle.
    num_replicas
        Number of data-parallel processes. Above 1, each process iterates only its own shard
        (a :class:`~torch.utils.data.DistributedSampler`, padded so that every process gets
        the same number of batches, which keeps the gradient all-reduce in step).
    rank
        This process's rank among ``num_replicas``.
    min_batches
        With ``shuffle``, draw at least this many batches per epoch (successive permutations
        of the rows), so that a few hundred labelled cells still get enough optimiser steps
        per epoch for early stopping to judge progress rather than noise.

    Returns
    -------
    A :class:`~torch.utils.data.DataLoader` whose items are whole batches.

    """
    if num_replicas > 1:
        sampler = DistributedSampler(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
    elif shuffle:
        sampler = RandomSampler(
            dataset,
            num_samples=max(len(dataset), min_batches * batch_size),
            generator=torch.Generator().manual_seed(seed),
        )
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset, sampler=EpochBatchSampler(sampler, batch_size, drop_last=False), batch_size=None
    )
