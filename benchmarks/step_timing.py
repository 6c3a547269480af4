"""Timing training steps and counting what each one processed: shared by our trainer and the baseline.

Both sides time the same thing: one whole training step from fetching the next collated batch
to the optimizer update (the loader prefetches in its worker processes, so a fast loader costs
the step almost nothing and a slow one shows up in the step time, as it would in training).
Warm-up steps are run first and not recorded: they include one-off costs (optimizer state
allocation, kernel selection, the loader workers starting and reading their first shard).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pretrain.flops import BertShape, hardware_flops, model_flops


@dataclass(frozen=True)
class StepRecord:
    """One timed step of one process."""

    seconds: float
    samples: int
    tokens: int  # real (non-pad) tokens
    padded_tokens: int  # B * L: every position the encoder ran on, padding included
    masked: int  # MLM targets
    model_flops: float  # what the objective needs (MFU)
    hardware_flops: float  # what was executed (HFU)


def count_step(
    shape: BertShape, batch: dict[str, Any], seconds: float, *, full_vocab_head: bool
) -> StepRecord:
    """The counts of one step on ``batch``.

    Model FLOPs take each sequence at its real length and the MLM head on the masked positions;
    hardware FLOPs take every sequence at the padded length L and the MLM head where it ran: on the
    masked positions for our sparse head, on all B*L positions for a stock ``BertForPreTraining``
    (``full_vocab_head``). Formulas in ``pretrain/flops.py``.
    """
    batch_size, padded_length = batch["input_ids"].shape
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    masked = int(batch["mlm_positions"].numel())
    head_positions = batch_size * padded_length if full_vocab_head else masked
    return StepRecord(
        seconds=seconds,
        samples=batch_size,
        tokens=int(batch["num_tokens"]),
        padded_tokens=batch_size * padded_length,
        masked=masked,
        model_flops=model_flops(shape, lengths, masked),
        hardware_flops=hardware_flops(shape, batch_size, padded_length, head_positions),
    )


def time_steps(
    step: Callable[[], dict[str, Any]],
    *,
    warmup: int,
    steps: int,
    shape: BertShape,
    full_vocab_head: bool,
    synchronize: Callable[[], None],
) -> list[StepRecord]:
    """Run ``warmup`` untimed and ``steps`` timed calls of ``step`` (which returns the batch it trained on).

    ``synchronize`` waits for queued device work (a no-op on CPU): GPU kernels run asynchronously,
    and a step is only over when its update has been applied.
    """
    for _ in range(warmup):
        step()
    synchronize()
    records = []
    for _ in range(steps):
        started = time.perf_counter()
        batch = step()
        synchronize()
        records.append(
            count_step(shape, batch, time.perf_counter() - started, full_vocab_head=full_vocab_head)
        )
    return records


def synchronizer(device_type: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device_type == "cuda" else (lambda: None)


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OOM error on accelerators; on CPU the allocator raises a plain RuntimeError."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )
