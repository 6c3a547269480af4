"""The per-rank training stream: disjoint, equal, deterministic, resumable without replay."""

import itertools
import shutil

import pytest
import torch
from synthetic_data import make_data_dir

from data_prep.manifest import load_manifest
from pretrain.data import TokenLayout, TrainStream, shard_specs, train_loader

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


def _stream(data_dir, rank=0, world=1, start=0, micro=4, budget=0):
    manifest = load_manifest(data_dir)
    return TrainStream(
        shard_specs(data_dir, manifest, "train"),
        TokenLayout.from_manifest(manifest),
        rank=rank,
        world_size=world,
        seed=7,
        micro_batch_size=micro,
        mlm_probability=0.15,
        start=start,
        skip_budget=budget,
    )


def _take(iterable, n):
    return list(itertools.islice(iter(iterable), n))


def test_ranks_get_disjoint_equal_shares_of_each_epoch(data_dir):
    per_rank = [_stream(data_dir, rank, 2) for rank in range(2)]
    assert all(s.epoch_length == 2 * SPS for s in per_rank)  # 5 shards / 2 ranks: 2 each, 1 left out
    keys = [[sample.key for _, sample in _take(s.entries(0), s.epoch_length)] for s in per_rank]
    assert len(keys[0]) == len(keys[1]) == 2 * SPS
    assert not set(keys[0]) & set(keys[1])
    # the shard left out differs between epochs, so every shard is used over a few epochs
    left_out = {
        frozenset(range(5)) - frozenset(per_rank[0].rank_shards(e) + per_rank[1].rank_shards(e))
        for e in range(6)
    }
    assert len(left_out) > 1


def test_resume_at_a_position_continues_the_exact_batch_sequence(data_dir):
    epoch = 5 * SPS  # one rank reads all 5 shards
    full = _take(_stream(data_dir, micro=7).batches(), 30)  # 210 samples: into the third epoch
    assert full[-1]["stream_end"] == 210 > 2 * epoch
    # resumed mid-shard in epoch 0, across two epoch ends (and batches that straddle them);
    # resumed in a later epoch (position 133 is in epoch 1)
    for after in (6, 18):
        start = full[after]["stream_end"]
        resumed = _take(_stream(data_dir, micro=7, start=start).batches(), 30 - after - 1)
        assert len(resumed) == 30 - after - 1  # a resumed stream that yields nothing fails here
        for expected, got in zip(full[after + 1 :], resumed, strict=True):
            assert expected["keys"] == got["keys"] and expected["stream_end"] == got["stream_end"]
            assert torch.equal(expected["input_ids"], got["input_ids"])  # same masks too
            assert torch.equal(expected["mlm_positions"], got["mlm_positions"])
    assert full[18]["stream_end"] // epoch == 1
    keys = [key for batch in full for key in batch["keys"]]
    assert sorted(keys[:epoch]) == sorted(keys[epoch : 2 * epoch]) and keys[:epoch] != keys[epoch : 2 * epoch]


def test_loader_workers_do_not_change_the_sequence(data_dir):
    inline = _take(train_loader(_stream(data_dir), workers=0, prefetch_batches=2), 9)
    workers = _take(train_loader(_stream(data_dir), workers=2, prefetch_batches=2), 9)
    assert [b["keys"] for b in inline] == [b["keys"] for b in workers]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(inline, workers))


def test_corrupt_shard_stops_without_budget_and_is_skipped_within_it(tmp_path, data_dir):
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    stream = _stream(broken)
    first_shard = stream.specs[stream.rank_shards(0)[0]].path
    payload = bytearray(first_shard.read_bytes())
    payload[700] ^= 0xFF
    first_shard.write_bytes(bytes(payload))

    (stopped,) = _take(_stream(broken).batches(), 5)
    assert first_shard.name in stopped["error"] and "sha256" in stopped["error"]
    assert "skip_bad_samples=0" in stopped["error"]

    batches = _take(_stream(broken, budget=SPS).batches(), 2)
    assert batches[0]["skipped"] == SPS
    assert batches[0]["keys"][0].startswith(f"{stream.rank_shards(0)[1]:06d}_")
