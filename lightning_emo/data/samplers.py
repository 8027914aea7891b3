"""Samplers: training batches of clips of similar length; evaluation under DDP seeing each clip once.

A padded batch costs its longest clip times its size; random batches of variable-length clips
waste much of that on padding (a CHEAVD-sized corpus: more than half of the frames of a random
batch of 32 are padding). :class:`LengthBucketSampler` orders clips so that each run of
``batch_size`` indices (what ``DataLoader``'s batch sampler cuts) holds clips of similar length,
while batches still change from epoch to epoch.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler


class LengthBucketSampler(Sampler[int]):
    """Indices whose consecutive runs of ``batch_size`` have similar lengths.

    Each epoch: draw an order (a permutation, or with ``weights`` ``len(lengths)`` draws with
    replacement, as ``WeightedRandomSampler``); cut it into pools of ``pool`` batches; sort each
    pool by length multiplied by a random factor in ``[1 / (1 + jitter), 1 + jitter]`` (so clips
    of close lengths land in different batches each epoch); cut the pools into batches and
    shuffle the batches (a short last batch stays last).

    Under DDP, Lightning wraps this sampler in a ``DistributedSamplerWrapper``, which gives rank
    ``r`` every ``world_size``-th index: pass ``batch_size * world_size`` so that every rank's
    batch still comes from one bucket (``FeatureDataModule`` does). Every rank draws the same
    order: the epoch counter advances on each iteration, or is set by :meth:`set_epoch`.

    Args:
        lengths: frames per clip (what a padded batch pays for).
        batch_size: the indices per bucket (the DataLoader's batch size times the world size).
        weights: per-clip sampling weights (draws with replacement); ``None`` = a permutation.
        pool: batches sorted together (larger: less padding, batches less random).
        jitter: the relative randomisation of the sort key.
        seed: with the epoch, seeds every draw.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, weights: Sequence[float] | None = None,
                 pool: int = 64, jitter: float = 0.1, seed: int = 0):
        if batch_size < 1 or pool < 1:
            raise ValueError(f"batch_size and pool must be at least 1, got {batch_size} and {pool}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.float64)
        if weights is not None:
            weights = torch.as_tensor(list(weights), dtype=torch.float64)
            if weights.shape != self.lengths.shape:
                raise ValueError(f"weights has {weights.numel()} entries for {self.lengths.numel()} clips")
        self.weights = weights
        self.batch_size, self.pool, self.jitter, self.seed = batch_size, pool, jitter, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = len(self.lengths)
        if self.weights is None:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g)
        scale = torch.empty(n, dtype=torch.float64).uniform_(-1, 1, generator=g).mul_(torch.log1p(
            torch.tensor(self.jitter, dtype=torch.float64))).exp_()
        keys = self.lengths[order] * scale
        span = self.batch_size * self.pool
        batches = []
        for start in range(0, n, span):
            chunk = order[start:start + span]
            chunk = chunk[torch.argsort(keys[start:start + span], stable=True)]
            batches += list(chunk.split(self.batch_size))
        # only the last pool can end with a short batch: it stays last so the DataLoader's cuts line up
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield from batches[b].tolist()
        if short is not None:
            yield from short.tolist()


class EvalDistributedSampler(DistributedSampler):
    """Rank ``r`` of ``w`` evaluates clips ``r, r + w, r + 2w, ...``: every clip exactly once over the processes.

    ``DistributedSampler`` (what Lightning gives validation and test loaders) pads the last round
    with repeated clips so every rank gets as many: 7 validation clips on 2 processes were scored
    as 8. Ranks may here differ by one clip. A rank that would get none (fewer clips than ranks)
    gets index ``len(dataset) + r``: the datasets answer such an index with a copy of clip
    ``r % len`` labelled ``-1``, which losses, metrics and ``predictions.csv`` leave out (every DDP
    rank must run at least one batch: the first evaluation forward synchronises buffers).
    Lightning keeps a loader's sampler when it is a ``DistributedSampler`` already.
    """

    def __init__(self, dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        n = len(dataset)
        self.indices = list(range(rank, n, num_replicas)) or ([n + rank] if n else [])
        self.num_samples = len(self.indices)
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


def eval_sampler(dataset, trainer) -> EvalDistributedSampler | None:
    """The evaluation sampler for ``dataset`` under a multi-process ``trainer``; None for one process."""
    world = getattr(trainer, "world_size", 1) if trainer is not None else 1
    if world <= 1:
        return None
    return EvalDistributedSampler(dataset, num_replicas=world, rank=trainer.global_rank)


def padding_item(dataset, index: int) -> dict | None:
    """For an index past the end (see :class:`EvalDistributedSampler`): a labelled-out copy of a clip, else None."""
    n = len(dataset)
    if index < n:
        return None
    item = dict(dataset[index % n])
    item["label"] = -1
    return item


__all__ = ["LengthBucketSampler", "EvalDistributedSampler", "eval_sampler", "padding_item"]
