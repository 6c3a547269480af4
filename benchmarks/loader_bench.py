"""The input pipeline alone: samples/s that one rank's ``TrainStream`` + ``train_loader`` deliver.

The same stream and DataLoader the trainer uses (shard reads with sha256 checks, collate, dynamic
masking in ``loader.workers`` worker processes), drained as fast as possible with no model. The
first batch is not timed (worker start-up and the first shard read). Comparing the rate with the
samples/s one trainer rank consumes says whether the loader could ever be the bottleneck: it
must deliver comfortably more than the trainer takes.
"""

from __future__ import annotations

import time

from data_prep.manifest import load_manifest, shard_specs
from pretrain.config import PretrainConfig
from pretrain.data import TokenLayout, TrainStream, train_loader

MIN_BATCHES = 30
MIN_SECONDS = 2.0


def loader_samples_per_s(cfg: PretrainConfig, world_size: int) -> float:
    """Samples/s of rank 0's loader among ``world_size`` ranks, with ``cfg``'s batch size and loader settings."""
    manifest = load_manifest(cfg.data_dir)
    stream = TrainStream(
        shard_specs(cfg.data_dir, manifest, "train"),
        TokenLayout.from_manifest(manifest),
        rank=0,
        world_size=world_size,
        seed=cfg.seed,
        micro_batch_size=cfg.micro_batch_size,
        mlm_probability=cfg.mlm_probability,
    )
    batches = iter(train_loader(stream, cfg.loader.workers, cfg.loader.prefetch_batches))
    next(batches)
    started, count, samples = time.perf_counter(), 0, 0
    while count < MIN_BATCHES or time.perf_counter() - started < MIN_SECONDS:
        samples += next(batches)["input_ids"].shape[0]
        count += 1
    return samples / (time.perf_counter() - started)
