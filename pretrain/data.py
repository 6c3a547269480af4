"""Streaming the prepared shards to every rank: every sample once per epoch, exact resume on any
number of ranks, loader workers that split the reading.

The order (all of it a pure function of the seed and the data, never of the rank count):

* **Epoch order.** Each epoch permutes the train shards (seeded by ``(seed, epoch)``) and, within
  each shard, its samples (``(seed, epoch, shard)``); concatenated, that is the epoch's order of
  all N samples. A shard is read whole (its sha256 needs all of it), so this is a full shuffle
  without a shuffle buffer whose state would need saving.
* **Lanes.** The epoch order is cut into ``lanes`` contiguous slices of N/lanes samples (lengths
  differ by at most one). Lane ``l``'s stream is its slice of epoch 0, then of epoch 1, and so on:
  every sample is used once per epoch, whatever the shard count (fewer shards than ranks too).
  The number of lanes is fixed when a run starts (``loader.lanes``, default 4 per rank) and kept
  by its checkpoints.
* **Global batches.** Global batch ``j`` is the next ``micro_batch_size`` good samples of lane
  ``j % lanes``; its masks come from a generator seeded by ``(seed, j)``. Rank ``r`` of ``W`` trains
  on ``j = start + r, start + r + W, ...``, so every rank gets the same number of batches (no rank
  runs out first and leaves the others waiting in a collective), and with ``W`` dividing the lane
  count each rank reads only its own lanes' shards. (Any ``W`` works: a lane shared by ranks is
  read by each of them, which costs reading, never correctness.)
* **Position.** A checkpoint stores ``start`` (global batches consumed) and each lane's sample
  position. Resuming opens each lane's shard at its position directly, nothing is replayed, and
  the continuation does not depend on the new rank count: a run saved on 2 ranks resumes on 1 (with
  grad_accum doubled) training the same samples per step, masks included.
* **Bad samples** (within ``skip_bad_samples``) are passed over: their lane takes the next good one,
  and the batch reports how many it skipped.

Loader workers: ``torch.utils.data.DataLoader`` collects a rank's batches from its workers in turn,
so worker ``w`` of ``K`` makes the rank's batches ``w, w + K, ...``. Each worker walks only the lanes
of its batches; with ``K`` dividing the lanes per rank (1, 2 or 4 workers by default) the workers
read disjoint lanes, so each shard once per epoch, or twice when a lane boundary cuts it (at most
``lanes - 1`` extra reads per epoch). The sequence is the same for any number of workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep.manifest import (
    WHOLE_SHARD,
    BadSample,
    Sample,
    SampleRules,
    ShardError,
    ShardSpec,
    read_shard,
)
from data_prep.storage import DataSource, FetchError
from pretrain.masking import mask_tokens

PAD_TO_MULTIPLE = 8  # pad batches to a multiple of 8 tokens: aligned GEMM shapes (tensor cores, AMX)


class DataError(RuntimeError):
    """A data problem that stops the run (corrupt shard, bad-sample budget exceeded)."""


@dataclass(frozen=True)
class TokenLayout:
    """The special ids and sizes the collate needs, from the manifest."""

    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int
    seq_len: int
    nsp: bool
    rules: SampleRules  # what the reader checks every sample against
    word_starts: torch.Tensor | None = None  # [V] bool for whole-word masking (masking.word_start_table)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> TokenLayout:
        ids = manifest["tokenizer"]["special_ids"]
        return cls(
            pad_id=ids["pad"],
            cls_id=ids["cls"],
            sep_id=ids["sep"],
            mask_id=ids["mask"],
            vocab_size=int(manifest["tokenizer"]["vocab_size"]),
            seq_len=int(manifest["seq_len"]),
            nsp=manifest["objective"] == "mlm+nsp",
            rules=SampleRules.from_manifest(manifest),
        )


def collate(
    samples: list[Sample], layout: TokenLayout, mlm_probability: float, generator: torch.Generator
) -> dict[str, Any]:
    """Pad to the longest sequence (rounded up to a multiple of 8), derive masks, apply MLM masking.

    Returns input_ids / attention_mask / token_type_ids [B, L], mlm_positions / mlm_labels [M],
    next_sentence_label [B] (mlm+nsp only), keys (sample ids) and num_tokens (real tokens).
    """
    lengths = torch.tensor([s.tokens.size for s in samples])
    width = min(layout.seq_len, -(-int(lengths.max()) // PAD_TO_MULTIPLE) * PAD_TO_MULTIPLE)
    ids = torch.full((len(samples), width), layout.pad_id, dtype=torch.long)
    for row, sample in enumerate(samples):
        ids[row, : sample.tokens.size] = torch.from_numpy(sample.tokens)
    positions = torch.arange(width).unsqueeze(0)  # [1, L]
    attention_mask = positions < lengths.unsqueeze(1)  # [B, L]
    if layout.nsp:
        # Segment B starts after the first [SEP] and includes the closing [SEP] (BERT's layout).
        first_sep = (ids == layout.sep_id).int().argmax(dim=1, keepdim=True)  # [B, 1]
        token_type_ids = ((positions > first_sep) & attention_mask).long()
    else:
        token_type_ids = torch.zeros_like(ids)
    maskable = attention_mask & (ids != layout.cls_id) & (ids != layout.sep_id) & (ids != layout.pad_id)
    masked_ids, mlm_positions, mlm_labels = mask_tokens(
        ids,
        maskable,
        probability=mlm_probability,
        mask_id=layout.mask_id,
        vocab_size=layout.vocab_size,
        generator=generator,
        word_starts=layout.word_starts,
    )
    batch: dict[str, Any] = {
        "input_ids": masked_ids,
        "attention_mask": attention_mask.long(),
        "token_type_ids": token_type_ids,
        "mlm_positions": mlm_positions,
        "mlm_labels": mlm_labels,
        "keys": [s.key for s in samples],
        "num_tokens": int(lengths.sum()),
    }
    if layout.nsp:
        batch["next_sentence_label"] = torch.tensor([s.nsp_label for s in samples], dtype=torch.long)
    return batch


# The tag of the evaluation masks' random stream, (seed, EVAL_MASK_STREAM, rank, batch): apart from
# the training masks' (seed, rank, position), so evaluation never repeats a training draw.
EVAL_MASK_STREAM = 7919


def _generator(*seed_parts: int) -> torch.Generator:
    seed = int(
        np.random.SeedSequence([abs(int(p)) for p in seed_parts]).generate_state(1, dtype=np.uint64)[0] >> 1
    )
    return torch.Generator().manual_seed(seed)


LANES_PER_RANK = 4  # default loader.lanes = 4 x ranks: 1, 2 or 4 loader workers split them evenly


def lanes_positions_without_skips(start: int, lanes: int, micro_batch_size: int) -> list[int]:
    """Each lane's sample position after ``start`` global batches, had no sample been bad."""
    return [max(0, -(-(start - lane) // lanes)) * micro_batch_size for lane in range(lanes)]


class EpochOrder:
    """Where each position of an epoch's sample order lies: (shard index, index within the shard)."""

    def __init__(self, specs: list[ShardSpec], seed: int):
        self.specs, self.seed = specs, seed
        self.counts = np.array([spec.samples for spec in specs], dtype=np.int64)
        self.total = int(self.counts.sum())
        self._cached: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def shard_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's shard permutation and the first epoch position of each slot."""
        if epoch not in self._cached:
            if len(self._cached) >= 4:  # lanes are at most an epoch apart: a few epochs suffice
                del self._cached[min(self._cached)]
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.specs))
            starts = np.concatenate([[0], np.cumsum(self.counts[order])[:-1]])
            self._cached[epoch] = (order, starts)
        return self._cached[epoch]

    def locate(self, epoch: int, index: int) -> tuple[int, int]:
        order, starts = self.shard_order(epoch)
        slot = int(np.searchsorted(starts, index, side="right")) - 1
        return int(order[slot]), index - int(starts[slot])

    def within_shard(self, epoch: int, shard: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, shard]).permutation(int(self.counts[shard]))


class Lane:
    """One lane's samples from a position on, one shard in memory at a time."""

    def __init__(self, stream: TrainStream, lane: int, position: int):
        order = stream.order
        self.stream, self.lane, self.position = stream, lane, position
        self.first = lane * order.total // stream.lanes  # the lane's slice of every epoch
        self.length = (lane + 1) * order.total // stream.lanes - self.first
        self._shard: tuple[int, int] | None = None  # (epoch, shard) held in memory
        self._samples: list[Sample | BadSample] = []
        self._within: np.ndarray | None = None

    def _sample(self, position: int) -> Sample | BadSample:
        epoch, offset = divmod(position, self.length)
        shard, index = self.stream.order.locate(epoch, self.first + offset)
        if self._shard != (epoch, shard):
            spec = self.stream.specs[shard]
            try:
                self._samples = self.stream.read(spec)
            except ShardError as err:
                self._samples = [BadSample(spec.name, WHOLE_SHARD, str(err))] * spec.samples
            self._within = self.stream.order.within_shard(epoch, shard)
            self._shard = (epoch, shard)
        return self._samples[self._within[index]]

    def next_group(self, size: int) -> tuple[list[Sample], list[BadSample]]:
        """The next ``size`` good samples, and the bad ones passed over on the way."""
        good: list[Sample] = []
        bad: list[BadSample] = []
        while len(good) < size:
            sample = self._sample(self.position)
            self.position += 1
            if isinstance(sample, BadSample):
                bad.append(sample)
                if len(bad) > self.stream.skip_budget:
                    break  # the whole budget is gone: stop reading, the caller stops the stream
            else:
                good.append(sample)
        return good, bad


class TrainStream(IterableDataset):
    """The infinite, resumable per-rank stream of masked training batches (see the module doc)."""

    def __init__(
        self,
        specs: list[ShardSpec],
        layout: TokenLayout,
        *,
        rank: int,
        world_size: int,
        seed: int,
        micro_batch_size: int,
        mlm_probability: float,
        start: int = 0,
        lanes: int | None = None,
        lane_positions: list[int] | None = None,
        skip_budget: int = 0,
        source: DataSource | None = None,
    ):
        self.specs, self.layout = specs, layout
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.micro_batch_size, self.mlm_probability = micro_batch_size, mlm_probability
        self.start, self.skip_budget = start, skip_budget
        self.lanes = lanes or LANES_PER_RANK * world_size
        self.order = EpochOrder(specs, seed)
        if self.order.total < self.lanes:
            raise DataError(
                f"{self.order.total} train sample(s) cannot fill {self.lanes} reading lanes; "
                f"set loader.lanes to at most {self.order.total}, or prepare more data"
            )
        self.lane_positions = (
            list(lane_positions)
            if lane_positions is not None
            else lanes_positions_without_skips(start, self.lanes, micro_batch_size)
        )
        if len(self.lane_positions) != self.lanes:
            raise DataError(f"{len(self.lane_positions)} lane positions for {self.lanes} lanes")
        self.source = source  # where shards come from (a remote data dir: fetched, cached, retried)
        self.read = self._read

    def _read(self, spec: ShardSpec) -> list[Sample | BadSample]:
        data = self.source.read_shard_bytes(spec.path, spec.sha256) if self.source else None
        return read_shard(spec, self.layout.rules, data)

    def batch_indices(self, worker: int = 0, workers: int = 1) -> Iterator[int]:
        """The global batch numbers this rank (and loader worker) makes, in order."""
        first = self.start + self.rank + worker * self.world_size
        return itertools.count(first, workers * self.world_size)

    def batches(self) -> Iterator[dict[str, Any]]:
        """Batches in stream order; each carries ``batch_index`` (its global number), ``lane`` and
        ``lane_end`` (the lane's position after it), and ``skipped`` (bad samples passed over for
        it, the last one described in ``skip_reason``). Bad samples beyond the budget end the
        stream with ``{"error": message}``."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        lanes: dict[int, Lane] = {}
        groups_done: dict[int, int] = {}  # per lane: global batches of it passed so far
        skipped = 0
        retries_reported = self.source.retries if self.source else 0  # counted before this iterator
        for index in self.batch_indices(worker, workers):
            lane_id = index % self.lanes
            lane = lanes.get(lane_id)
            if lane is None:
                lane = lanes[lane_id] = Lane(self, lane_id, self.lane_positions[lane_id])
                groups_done[lane_id] = self._first_of_lane(lane_id)
            try:
                # Batches of this lane that other ranks or workers make: walk past them (shared lanes only).
                while groups_done[lane_id] < index:
                    lane.next_group(self.micro_batch_size)
                    groups_done[lane_id] += self.lanes
                good, bad = lane.next_group(self.micro_batch_size)
            except FetchError as err:  # permanent: no budget applies, every rank stops
                yield {"error": str(err)}
                return
            groups_done[lane_id] += self.lanes
            skipped += len(bad)
            if skipped > self.skip_budget:
                # Handed to the trainer as a batch, not raised: it reaches the training process in
                # stream order with its one-line message, also from a loader worker.
                yield {"error": budget_error(bad[-1].describe(), skipped, self.skip_budget)}
                return
            batch = collate(good, self.layout, self.mlm_probability, _generator(self.seed, index))
            batch.update(
                batch_index=index,
                lane=lane_id,
                lane_end=lane.position,
                skipped=len(bad),
                skip_reason=bad[-1].describe() if bad else "",
                fetch_retries=(self.source.retries if self.source else 0) - retries_reported,
            )
            retries_reported += batch["fetch_retries"]
            yield batch

    def _first_of_lane(self, lane: int) -> int:
        """The first global batch at or after ``start`` that lane ``lane`` makes."""
        return self.start + (lane - self.start) % self.lanes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches()


def budget_error(reason: str, skipped: int, budget: int) -> str:
    limit = f"the skip_bad_samples budget ({budget})" if budget else "skip_bad_samples=0"
    return f"{reason} -- stopping: {skipped} bad sample(s) exceed {limit}"


def train_loader(stream: TrainStream, workers: int, prefetch_batches: int) -> DataLoader:
    """Batches come ready from the stream; a private generator keeps the global RNG untouched.
    On a GPU they come in pinned memory, so the copies to the device do not block the host."""
    from pretrain.distributed import pin_batches

    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_batches(),
        prefetch_factor=prefetch_batches if workers > 0 else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )


def eval_batches(
    specs: list[ShardSpec],
    layout: TokenLayout,
    *,
    rank: int,
    world_size: int,
    seed: int,
    micro_batch_size: int,
    mlm_probability: float,
    max_samples: int,
    source: DataSource | None = None,
) -> list[dict[str, Any]]:
    """This rank's share of the first ``max_samples`` valid samples, masked the same way every time.

    Every rank gets the same number of batches (ZeRO-3 forwards are collective); a rank whose share
    ran out repeats its first batch with ``weight`` 0.
    """
    samples: list[Sample] = []
    for spec in specs:
        data = source.read_shard_bytes(spec.path, spec.sha256) if source else None
        for sample in read_shard(spec, layout.rules, data):
            if isinstance(sample, BadSample):
                raise DataError(f"valid split: {sample.describe()}")
            samples.append(sample)
            if len(samples) >= max_samples:
                break
        if len(samples) >= max_samples:
            break
    mine = samples[rank::world_size]
    per_rank = -(-len(samples) // world_size)
    count = -(-per_rank // micro_batch_size)
    batches = []
    for index in range(count):
        chunk = mine[index * micro_batch_size : (index + 1) * micro_batch_size]
        weight = 1.0 if chunk else 0.0
        batch = collate(
            chunk or mine[:micro_batch_size] or samples[:1],
            layout,
            mlm_probability,
            _generator(seed, EVAL_MASK_STREAM, rank, index),
        )
        batch["weight"] = weight
        batches.append(batch)
    return batches
