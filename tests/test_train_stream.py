"""The training stream: every sample once per epoch for any shard and rank count, equal batches
per rank, deterministic, resumable without replay, loader workers reading disjoint shards."""

import itertools
import os
import shutil

import pytest
import torch
from synthetic_data import make_data_dir, train_stream

from data_prep.manifest import read_shard
from pretrain.data import train_loader

SPS = 16  # samples per shard


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(
        tmp_path_factory.mktemp("stream") / "data",
        train_shards=5,
        samples_per_shard=SPS,
        valid_samples=16,
        seq_len=48,
    )


def _stream(data_dir, rank=0, world=1, start=0, micro=4, budget=0, **kwargs):
    return train_stream(
        data_dir, seed=7, micro_batch_size=micro, rank=rank, world_size=world, start=start,
        skip_budget=budget, **kwargs,
    )  # fmt: skip


def _take(iterable, n):
    return list(itertools.islice(iter(iterable), n))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_once_per_epoch_with_equal_batches_on_any_rank_count(data_dir, world):
    # 5 shards x 16 = 80 samples in 8 lanes of 10; 2 batches of 5 per lane and epoch, so
    # 16 global batches are one epoch, dealt to 1, 2 or 3 ranks (3 divides neither 5 nor 8).
    streams = [_stream(data_dir, rank, world, micro=5, lanes=8) for rank in range(world)]
    per_rank = -(-32 // world)  # two epochs, rounded up to whole rounds of the ranks
    taken = [_take(s.batches(), per_rank) for s in streams]
    by_index = {b["batch_index"]: b["keys"] for batches in taken for b in batches}
    assert sorted(by_index)[:32] == list(range(32))
    for epoch in range(2):
        keys = [k for j in range(16 * epoch, 16 * epoch + 16) for k in by_index[j]]
        assert len(keys) == len(set(keys)) == 80  # every sample, once
    assert [b["keys"] for b in taken[0][:3]] == [by_index[j] for j in range(0, 3 * world, world)]
    # the global batches do not depend on the rank count: same keys, same masks
    single = {b["batch_index"]: b for b in _take(_stream(data_dir, micro=5, lanes=8).batches(), 36)}
    for batch in taken[-1]:
        assert batch["keys"] == single[batch["batch_index"]]["keys"]
        assert torch.equal(batch["input_ids"], single[batch["batch_index"]]["input_ids"])


def test_fewer_shards_than_ranks_still_feed_every_rank(tmp_path):
    small = make_data_dir(tmp_path / "d", train_shards=3, samples_per_shard=8, valid_samples=8, seq_len=32)
    streams = [_stream(small, rank, 4, micro=3) for rank in range(4)]  # 16 lanes of 1-2 samples
    batches = [_take(s.batches(), 4) for s in streams]
    assert all(len(b) == 4 and all(len(x["keys"]) == 3 for x in b) for b in batches)
    first_epoch = [k for rank in batches for b in rank for k in b["keys"]]  # the 16 lanes' first batches
    assert set(first_epoch) >= {f"{shard:06d}_{i:06d}" for shard in range(3) for i in range(8)}


def _positions_after(batches, stream):
    positions = list(stream.lane_positions)
    for batch in batches:
        positions[batch["lane"]] = max(positions[batch["lane"]], batch["lane_end"])
    return positions


def test_resume_at_a_position_continues_the_exact_batch_sequence(data_dir):
    epoch = 16  # global batches of 5 per epoch: 80 samples
    fresh = _stream(data_dir, micro=5)
    full = _take(fresh.batches(), 40)  # into the third epoch, across shard ends
    # resumed mid-shard in epoch 0 (across two epoch ends), and resumed in a later epoch (batch 20)
    for after in (7, 20):
        resumed = _stream(
            data_dir, micro=5, start=after, lane_positions=_positions_after(full[:after], fresh)
        )
        got = _take(resumed.batches(), 40 - after)
        assert len(got) == 40 - after  # a resumed stream that yields nothing fails here
        for expected, batch in zip(full[after:], got, strict=True):
            assert expected["keys"] == batch["keys"]
            assert torch.equal(expected["input_ids"], batch["input_ids"])  # same masks too
            assert torch.equal(expected["mlm_positions"], batch["mlm_positions"])
    keys = [key for batch in full for key in batch["keys"]]
    first, second = keys[: epoch * 5], keys[epoch * 5 : 2 * epoch * 5]
    assert sorted(first) == sorted(second) and first != second  # each epoch: every sample, a new order


def test_loader_workers_split_the_reading_and_keep_the_sequence(data_dir, tmp_path):
    reads = tmp_path / "reads"
    reads.mkdir()

    def counting_reader(stream):
        def read(spec):
            with open(reads / str(os.getpid()), "a") as log:
                log.write(spec.name + "\n")
            return read_shard(spec, stream.layout.rules)

        return read

    sequences = {}
    for workers in (0, 2, 4):
        stream = _stream(data_dir)
        stream.read = counting_reader(stream)
        sequences[workers] = _take(train_loader(stream, workers=workers, prefetch_batches=1), 12)
        if workers:
            # 4 lanes of 20 samples over 5 shards of 16; 12 batches of 4 (+ prefetched ones) stay in
            # epoch 0. Each worker reads only its lanes' shards, each once (a lane reaches at most
            # 2 shards here); before lanes, every worker read every shard (5 each).
            read = [path.read_text().split() for path in reads.iterdir()]
            assert len(read) == workers and all(len(names) == len(set(names)) for names in read)
            assert all(len(names) <= 2 * 4 // workers for names in read)
            assert sum(len(names) for names in read) <= 5 + 3
        for path in reads.iterdir():
            path.unlink()
    for workers in (2, 4):
        assert [b["keys"] for b in sequences[0]] == [b["keys"] for b in sequences[workers]]
        assert all(
            torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(sequences[0], sequences[workers])
        )


def test_corrupt_shard_stops_without_budget_and_is_skipped_within_it(tmp_path, data_dir):
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    stream = _stream(broken)
    first, _ = stream.order.locate(0, 0)  # lane 0 starts with this shard, then the next slot's
    second, _ = stream.order.locate(0, SPS)
    path = stream.specs[first].path
    payload = bytearray(path.read_bytes())
    payload[700] ^= 0xFF
    path.write_bytes(bytes(payload))

    (stopped,) = _take(_stream(broken).batches(), 5)
    assert path.name in stopped["error"] and "sha256" in stopped["error"]
    assert "skip_bad_samples=0" in stopped["error"]

    batches = _take(_stream(broken, budget=SPS).batches(), 2)
    assert batches[0]["skipped"] == SPS and path.name in batches[0]["skip_reason"]
    assert all(key.startswith(f"{second:06d}_") for key in batches[0]["keys"])
    assert batches[1]["skipped"] == 0 and batches[1]["lane"] == 1
