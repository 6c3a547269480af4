"""Streaming the prepared shards to every rank, with exact, replay-free resume.

Order of the training stream (all of it a pure function of seed, epoch, rank and world size):

* Each epoch permutes the train shards (seeded by ``(seed, epoch)``) and deals them to ranks round
  robin (``order[rank::world]``), dropping the ``num_shards % world`` left over so that every
  rank holds the same number of shards; a different permutation each epoch uses them later.
  Train shards hold equal sample counts (Contract 1), so every rank sees the same number of samples
  and batches: no rank runs out first and leaves the others waiting in a collective.
* Within a shard the samples are permuted (seeded by ``(seed, epoch, shard)``); a shard is read
  whole, so this is a full shuffle without a shuffle buffer whose state would need saving.
* The per-rank stream is the concatenation of epochs, and its position is one integer: how many
  stream entries this rank has consumed (good and skipped). Resuming at position ``p`` computes
  the epoch and shard from the manifest's counts and opens that shard directly, so nothing is
  replayed (the Megatron / Mosaic Streaming approach).
* Masks are drawn from a generator seeded by ``(seed, rank, stream position of the batch)``, so a
  resumed run sees exactly the batches, and the masks, of an uninterrupted one.

Loader workers each walk the rank's stream and collate every ``workers``-th batch, which is the
order in which ``torch.utils.data.DataLoader`` collects them: the sequence is the same for any
number of workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep.manifest import shard_paths
from pretrain.masking import mask_tokens
from pretrain.shards import WHOLE_SHARD, BadSample, Sample, SampleRules, ShardError, ShardSpec, read_shard

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
        )

    @property
    def rules(self) -> SampleRules:
        return SampleRules(nsp=self.nsp, vocab_size=self.vocab_size, seq_len=self.seq_len, cls_id=self.cls_id)


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


def _generator(*seed_parts: int) -> torch.Generator:
    seed = int(
        np.random.SeedSequence([abs(int(p)) for p in seed_parts]).generate_state(1, dtype=np.uint64)[0] >> 1
    )
    return torch.Generator().manual_seed(seed)


def shard_specs(data_dir: str | Path, manifest: dict[str, Any], split: str) -> list[ShardSpec]:
    entries = manifest["splits"].get(split, {}).get("shards", [])
    return [
        ShardSpec(path=path, sha256=entry["sha256"], samples=int(entry["samples"]))
        for path, entry in zip(shard_paths(data_dir, manifest, split), entries)
    ]


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
        skip_budget: int = 0,
    ):
        counts = {spec.samples for spec in specs}
        if len(counts) != 1:
            raise DataError(
                f"train shards hold unequal sample counts {sorted(counts)[:5]}; regenerate the data dir with data_prep"
            )
        if len(specs) < world_size:
            raise DataError(
                f"{len(specs)} train shard(s) cannot feed {world_size} ranks; regenerate with a smaller samples_per_shard"
            )
        self.specs, self.layout = specs, layout
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.micro_batch_size, self.mlm_probability = micro_batch_size, mlm_probability
        self.start, self.skip_budget = start, skip_budget
        self.samples_per_shard = counts.pop()
        self.shards_per_rank = len(specs) // world_size

    @property
    def epoch_length(self) -> int:
        """Stream entries per rank per epoch."""
        return self.shards_per_rank * self.samples_per_shard

    def rank_shards(self, epoch: int) -> list[int]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.specs))
        return [int(i) for i in order[: self.shards_per_rank * self.world_size][self.rank :: self.world_size]]

    def entries(self, start: int) -> Iterator[tuple[int, Sample | BadSample]]:
        """(stream position, sample) from ``start`` on, opening the right shard directly."""
        first_epoch, offset = divmod(start, self.epoch_length)
        first_shard, first_sample = divmod(offset, self.samples_per_shard)
        for epoch in itertools.count(first_epoch):
            for slot, shard in enumerate(self.rank_shards(epoch)):
                if slot < first_shard:
                    continue
                try:
                    samples = read_shard(self.specs[shard], self.layout.rules)
                except ShardError as err:
                    samples = [
                        BadSample(self.specs[shard].path.name, WHOLE_SHARD, str(err))
                    ] * self.samples_per_shard
                order = np.random.default_rng([self.seed, epoch, shard]).permutation(len(samples))
                base = epoch * self.epoch_length + slot * self.samples_per_shard
                for index in range(first_sample, len(samples)):
                    yield base + index, samples[order[index]]
                first_sample = 0
            first_shard = 0

    def batches(self) -> Iterator[dict[str, Any]]:
        """Batches in stream order; each carries ``stream_end`` (the position to resume from) and
        ``skipped`` (bad samples passed so far, the last one described in ``skip_reason``). A bad sample beyond the budget ends the stream
        with ``{"error": message}``."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skipped, pending, first_position = 0, [], self.start
        batch_number, last_reason = 0, ""
        for position, sample in self.entries(self.start):
            if isinstance(sample, BadSample):
                skipped += 1
                last_reason = sample.describe()
                if skipped > self.skip_budget:
                    # Handed to the trainer as a batch, not raised: it reaches the training process
                    # in stream order with its one-line message, also from a loader worker.
                    budget = (
                        f"the skip_bad_samples budget ({self.skip_budget})"
                        if self.skip_budget
                        else "skip_bad_samples=0"
                    )
                    yield {
                        "error": f"{sample.describe()} -- stopping: {skipped} bad sample(s) exceed {budget}"
                    }
                    return
                continue
            if not pending:
                first_position = position
            pending.append(sample)
            if len(pending) < self.micro_batch_size:
                continue
            if batch_number % workers == worker:
                generator = _generator(self.seed, self.rank, first_position)
                batch = collate(pending, self.layout, self.mlm_probability, generator)
                batch.update(stream_end=position + 1, skipped=skipped, skip_reason=last_reason)
                yield batch
            pending, batch_number = [], batch_number + 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches()


def train_loader(stream: TrainStream, workers: int, prefetch_batches: int) -> DataLoader:
    """Batches come ready from the stream; a private generator keeps the global RNG untouched."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
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
) -> list[dict[str, Any]]:
    """This rank's share of the first ``max_samples`` valid samples, masked the same way every time.

    Every rank gets the same number of batches (ZeRO-3 forwards are collective); a rank whose share
    ran out repeats its first batch with ``weight`` 0.
    """
    samples: list[Sample] = []
    for spec in specs:
        for sample in read_shard(spec, layout.rules):
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
            _generator(seed, 7919, rank, index),
        )
        batch["weight"] = weight
        batches.append(batch)
    return batches
