"""A resumable stream of training batches for one process.

Batch ``n`` of a process depends only on (data set, seed, n, rank, world size), never on how many
DataLoader workers read it or on where a run was interrupted, so a resumed run sees exactly the
batches an uninterrupted one would have. Three kinds of data set:

- map-style (``len`` and ``[i]``: openmoji, embeddings): global position ``g = j·world + rank``
  of local position ``j``; epoch ``g // N`` walks a permutation seeded by (seed, epoch);
- iterable with ``item(i)`` (the shapes set: sample i is a pure function of i): sample
  ``j·world + rank``, the same samples the set itself would give this rank;
- other iterables (image folders, webdataset shards): read in order, restarted when exhausted;
  resuming skips the consumed batches by reading them (slow for a long run, but exact with the
  same number of DataLoader workers).

Empty data sets raise ``ValueError`` instead of hanging.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

Batch = dict[str, Any]


class _Positions(IterableDataset):
    """Samples ``fetch(j)`` from position ``start`` on, in batches 0, 1, …; DataLoader worker w of W
    produces batches w, w + W, … so that the loader's round-robin restores the order."""

    def __init__(self, fetch: Callable[[int], dict], start: int, batch_size: int):
        self.fetch, self.start, self.batch_size = fetch, start, batch_size

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for b in itertools.count(worker, workers):
            first = self.start + b * self.batch_size
            for j in range(first, first + self.batch_size):
                yield self.fetch(j)


class _ItemAt:
    """``fetch`` for an iterable with ``item(i)``: position j of this rank → sample j·world + rank
    (the shapes set's own sharding, so the same samples it would yield itself)."""

    def __init__(self, dataset: IterableDataset, rank: int, world_size: int):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size

    def __call__(self, j: int) -> dict:
        return self.dataset.item(j * self.world_size + self.rank)


class _EpochPermutation:
    """``fetch`` for a map-style data set: position j of this rank → an item, reshuffled per epoch."""

    def __init__(self, dataset: Dataset, seed: int, rank: int, world_size: int):
        self.dataset, self.seed, self.rank, self.world_size = dataset, seed, rank, world_size
        self.size = len(dataset)
        self._epoch, self._order = -1, None

    def __call__(self, j: int) -> dict:
        epoch, k = divmod(j * self.world_size + self.rank, self.size)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=g)
        return self.dataset[int(self._order[k])]


def batch_stream(dataset: Dataset | IterableDataset, batch_size: int, *, start_sample: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """Endless batches (dicts of stacked tensors and lists of strings), from this rank's position
    ``start_sample`` (a resumed run: the samples each rank has consumed, whatever batch size it
    consumed them in; read-in-order data skip whole batches, exact when it divides); ``pin_memory``
    (for a GPU) puts each batch in page-locked memory, so that copying it to the GPU does not wait
    for the host."""
    loader_args = {"batch_size": batch_size, "num_workers": num_workers, "persistent_workers": num_workers > 0,
                   "pin_memory": pin_memory}
    if isinstance(dataset, IterableDataset) and not callable(getattr(dataset, "item", None)):
        return _sequential(dataset, start_sample // batch_size, loader_args)
    if isinstance(dataset, IterableDataset):
        fetch = _ItemAt(dataset, rank, world_size)
    else:
        if len(dataset) == 0:
            raise ValueError("the training data set is empty: it yields nothing")
        fetch = _EpochPermutation(dataset, seed, rank, world_size)
    return iter(DataLoader(_Positions(fetch, start_sample, batch_size), **loader_args))


def _sequential(dataset: IterableDataset, start_batch: int, loader_args: dict) -> Iterator[Batch]:
    consumed = 0
    while True:  # a data set that ends is read again
        empty = True
        for batch in DataLoader(dataset, **loader_args):
            empty, consumed = False, consumed + 1
            if consumed > start_batch:
                yield batch
        if empty:
            raise ValueError("the training data set yielded nothing: check data.path and its contents")
