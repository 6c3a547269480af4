"""One sweep point in one rank: the real pretraining step, timed.

``python -m benchmarks.step_worker --out DIR [--warmup-steps N] [--steps N] [--save-initial-weights F] key=value ...``
(under ``deepspeed --num_gpus R --module benchmarks.step_worker`` for R ranks). The ``key=value``
overrides build a ``PretrainConfig`` exactly as ``python -m pretrain`` does; the run is set up by
``pretrain.train.prepare_run`` and every step is ``pretrain.train.optimizer_step``: the same process
group, data checks, DeepSpeed engine, streaming loader, collate and masking as training. Each rank
writes ``DIR/rank<r>.json`` with its step records, peak memory and the initial loss, or the status
``oom`` / ``error`` when it failed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pretrain.distributed import prepare_entry

prepare_entry()


def initial_loss(run, batch: dict[str, Any]) -> float:
    """The loss of ``batch`` at the initial weights with dropout off (eval mode): a deterministic
    function of weights and batch, which the baseline recomputes to show both models agree."""
    import torch

    from pretrain.distributed import to_device
    from pretrain.train import MODEL_INPUTS

    run.engine.eval()
    with torch.no_grad():
        out = run.engine(**to_device(batch, run.engine.device, MODEL_INPUTS))
    run.engine.train()
    return float(out["loss"])


def save_initial_weights(run, path: Path) -> None:
    """Rank 0 writes the stock ``BertForPreTraining`` state dict (fp32) for the baseline to start from.

    Collective: under ZeRO-3 each rank holds a slice of every parameter, gathered here on all ranks
    (``GatheredParameters`` is a no-op for stages 0-2).
    """
    import deepspeed
    import torch

    module = run.engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        if run.dist.is_main:
            state = {
                name: tensor.detach().float().cpu().clone()
                for name, tensor in module.model.state_dict().items()
            }
            torch.save(state, path)


def measure(cfg, warmup: int, steps: int, initial_weights: Path | None) -> dict[str, Any]:
    import torch
    from deepspeed.accelerator import get_accelerator

    from benchmarks.step_timing import synchronizer, time_steps
    from pretrain.data import DataError
    from pretrain.distributed import peak_memory_bytes
    from pretrain.train import optimizer_step, prepare_run, training_loader

    run = prepare_run(cfg)
    device_type = get_accelerator().device_name()
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # count the step, not model set-up spikes
    batches = iter(training_loader(run))
    first = next(batches)
    if "error" in first:  # a corrupt shard: the stream's one-line message names it
        raise DataError(first["error"])
    loss = initial_loss(run, first)
    if initial_weights is not None:
        save_initial_weights(run, initial_weights)
    batches = itertools.chain([first], batches)
    records = time_steps(
        lambda: optimizer_step(run, batches)[0][0],  # grad_accum=1 here: a step is one micro-step
        warmup=warmup,
        steps=steps,
        shape=run.shape,
        full_vocab_head=not cfg.sparse_mlm_head,
        synchronize=synchronizer(device_type),
    )
    return {
        "status": "ok",
        "rank": run.dist.rank,
        "world_size": run.dist.world_size,
        "device_type": device_type,
        "threads": torch.get_num_threads(),
        # ZeRO-3 leaves each rank a slice of every parameter; ds_numel is the whole tensor's size.
        "model_parameters": sum(getattr(p, "ds_numel", p.numel()) for p in run.engine.module.parameters()),
        "shape": asdict(run.shape),
        "initial_loss": loss,
        "peak_memory_bytes": peak_memory_bytes(),
        "steps": [asdict(record) for record in records],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.step_worker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="directory for rank<r>.json")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--save-initial-weights", type=Path, help="where rank 0 saves the initial state dict")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="PretrainConfig keys")
    args = parser.parse_args(argv)

    from benchmarks.step_timing import is_out_of_memory
    from pretrain.config import load_pretrain_config

    cfg = load_pretrain_config(None, args.overrides)
    rank = int(os.environ.get("RANK", "0"))
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / f"rank{rank}.json"
    try:
        result = measure(cfg, args.warmup_steps, args.steps, args.save_initial_weights)
    except Exception as err:  # recorded for the sweep, which ends at the first failed point
        status = "oom" if is_out_of_memory(err) else "error"
        if status == "error":
            traceback.print_exc()
        result_path.write_text(
            json.dumps({"status": status, "rank": rank, "error": f"{type(err).__name__}: {err}"}) + "\n"
        )
        print(f"[rank {rank}] {status}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        os._exit(3)  # the other ranks may be blocked in a collective; the launcher ends them
    result_path.write_text(json.dumps(result) + "\n")
    from pretrain.distributed import shutdown

    shutdown()


if __name__ == "__main__":
    main()
