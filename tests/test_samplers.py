"""LengthBucketSampler: every clip once, batches of similar length that change between epochs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lightning_emo.data.samplers import LengthBucketSampler


def _lengths(n: int = 500, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return (torch.empty(n).log_normal_(5.5, 0.6, generator=g).long() + 1).tolist()


def _padded_frames(order: list[int], lengths: list[int], batch_size: int) -> int:
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_each_clip_once_per_epoch_with_less_padding_than_random_batches():
    lengths = _lengths()
    sampler = LengthBucketSampler(lengths, batch_size=32, pool=8)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths))) and len(sampler) == len(lengths)
    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    assert _padded_frames(order, lengths, 32) < 0.7 * _padded_frames(random_order, lengths, 32)


def test_batches_change_between_epochs_and_repeat_for_a_seed():
    lengths = [100] * 64  # equal lengths: the jittered sort is a fresh shuffle every epoch
    sampler = LengthBucketSampler(lengths, batch_size=8)
    first, second = list(sampler), list(sampler)
    assert first != second
    batches = lambda order: {frozenset(order[i:i + 8]) for i in range(0, 64, 8)}  # noqa: E731
    assert batches(first) != batches(second)
    again = LengthBucketSampler(lengths, batch_size=8)
    again.set_epoch(1)
    assert list(again) == second


def test_a_short_batch_comes_last_so_dataloader_cuts_line_up():
    """With pool=1 and no jitter each internal batch is sorted: every DataLoader cut must be sorted too."""
    lengths = list(range(1000, 1203))  # distinct lengths: a cut straddling two batches is (almost surely) unsorted
    sampler = LengthBucketSampler(lengths, batch_size=16, pool=1, jitter=0.0)
    for _ in range(3):
        order = list(sampler)
        cuts = [order[i:i + 16] for i in range(0, len(order), 16)]
        assert [len(c) for c in cuts] == [16] * 12 + [11]
        assert all(c == sorted(c) for c in cuts)


def test_ddp_ranks_each_get_one_bucket_per_step():
    """DistributedSamplerWrapper gives rank r every world-th index: a bucket of batch * world serves all ranks."""
    lengths = _lengths(256)
    world, batch = 2, 16
    order = list(LengthBucketSampler(lengths, batch_size=batch * world, pool=4, jitter=0.0))
    ranks = [order[r::world] for r in range(world)]
    for step in range(len(order) // (batch * world)):
        bucket = order[step * batch * world:(step + 1) * batch * world]
        for r in range(world):
            assert set(ranks[r][step * batch:(step + 1) * batch]) <= set(bucket)


def test_weights_draw_with_replacement():
    weights = [1.0] * 50 + [9.0] * 50
    order = list(LengthBucketSampler([10] * 100, batch_size=10, weights=weights))
    counts = Counter(i >= 50 for i in order)
    assert len(order) == 100 and counts[True] > 2 * counts[False]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="batch_size and pool"):
        LengthBucketSampler([1, 2], batch_size=0)
    with pytest.raises(ValueError, match="weights has 1 entries for 2 clips"):
        LengthBucketSampler([1, 2], batch_size=1, weights=[1.0])
    with pytest.raises(ValueError, match="jitter"):
        LengthBucketSampler([1, 2], batch_size=1, jitter=-1)
