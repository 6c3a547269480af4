"""The plain transformers training loop the trainer is measured against, one process.

``python -m benchmarks.baseline --out FILE --global-batch N --ranks R [--initial-weights F] key=value ...``
takes the same ``PretrainConfig`` overrides as the step worker, so model config, precision, seed,
learning rate, clipping, loader and masking are the trainer's by construction. The loop is what a
user writes with stock tools:

    loss = BertForPreTraining(input_ids, attention_mask, token_type_ids, labels, next_sentence_label).loss
    loss.backward(); clip_grad_norm_(grad_clip); AdamW.step(); zero_grad()

* the stock model computes its own loss: the full-vocabulary MLM head over all B*L positions, with
  labels -100 where nothing was masked;
* ``torch.optim.AdamW`` with its default implementation and weight decay, no LR schedule (the
  schedule costs nothing and changes no shapes);
* bf16/fp16 through ``torch.autocast`` over fp32 weights (fp16 with a ``GradScaler``), fp32 without;
* the batches are the trainer's collated, masked batches (``TrainStream`` + ``train_loader``).

It trains on the trainer's global batch (micro batch x ranks) with all the cores the trainer's
ranks used, so one baseline step does the work of one trainer step on all ranks. The initial loss
is measured on the very batch and weights rank 0 of the trainer started from, with dropout off.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.step_timing import is_out_of_memory, synchronizer, time_steps
from data_prep.manifest import load_manifest, shard_specs
from pretrain.config import PretrainConfig, load_pretrain_config, resolve_model_config_path
from pretrain.data import TokenLayout, TrainStream, train_loader
from pretrain.distributed import peak_memory_bytes, set_threads, to_device
from pretrain.flops import BertShape
from pretrain.model import bert_config_from_preset, build_hf_model, set_tf32

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
STOCK_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def stock_labels(batch: dict[str, Any]) -> torch.Tensor:
    """[B, L] MLM labels as transformers takes them: the original id at each masked position, -100 elsewhere."""
    ids = batch["input_ids"]
    labels = torch.full((ids.numel(),), -100, dtype=torch.long)
    labels[batch["mlm_positions"]] = batch["mlm_labels"]
    return labels.view_as(ids)


def _stream(
    cfg: PretrainConfig,
    manifest: dict[str, Any],
    layout: TokenLayout,
    *,
    world_size: int,
    micro_batch_size: int,
) -> TrainStream:
    """Rank 0's stream among ``world_size`` ranks: with ``world_size`` 1 and the trainer's batch size,
    the very batches the trainer's single rank trains on."""
    return TrainStream(
        shard_specs(cfg.data_dir, manifest, "train"),
        layout,
        rank=0,
        world_size=world_size,
        seed=cfg.seed,
        micro_batch_size=micro_batch_size,
        mlm_probability=cfg.mlm_probability,
    )


def measure(
    cfg: PretrainConfig,
    *,
    global_batch: int,
    ranks: int,
    warmup: int,
    steps: int,
    initial_weights: Path | None,
) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_tf32(cfg.tf32)  # the trainer's fp32 matmul mode, so both run against the same peak
    set_threads(cfg.threads)
    manifest = load_manifest(cfg.data_dir)
    layout = TokenLayout.from_manifest(manifest)
    hf_config = bert_config_from_preset(
        resolve_model_config_path(cfg.model),
        layout.vocab_size,
        manifest["tokenizer"]["special_ids"],
        cfg.seq_len,
        cfg.attn_implementation,
    )
    torch.manual_seed(cfg.seed)  # prepare_run's initialisation, should no weights file be given
    model = build_hf_model(hf_config, nsp=layout.nsp)
    if initial_weights is not None:
        model.load_state_dict(torch.load(initial_weights, weights_only=True))
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optimizer.lr,
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
        weight_decay=cfg.optimizer.weight_decay,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    dtype = AUTOCAST_DTYPES.get(cfg.precision)

    def loss_of(batch: dict[str, Any]) -> torch.Tensor:
        inputs = to_device(batch, device, STOCK_INPUTS + (("next_sentence_label",) if layout.nsp else ()))
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            return model(**inputs, labels=stock_labels(batch).to(device)).loss

    first = next(
        iter(_stream(cfg, manifest, layout, world_size=ranks, micro_batch_size=cfg.micro_batch_size))
    )
    model.eval()  # dropout off, as in the trainer's check
    with torch.no_grad():
        initial_loss = float(loss_of(first))
    model.train()

    stream = _stream(cfg, manifest, layout, world_size=1, micro_batch_size=global_batch)
    batches = iter(train_loader(stream, cfg.loader.workers, cfg.loader.prefetch_batches))

    def step() -> dict[str, Any]:
        batch = next(batches)
        scaler.scale(loss_of(batch)).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return batch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    records = time_steps(
        step,
        warmup=warmup,
        steps=steps,
        shape=BertShape.from_config(hf_config, layout.nsp),
        full_vocab_head=True,
        synchronize=synchronizer(device.type),
    )
    return {
        "status": "ok",
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "initial_loss": initial_loss,
        "peak_memory_bytes": peak_memory_bytes(),
        "steps": [asdict(record) for record in records],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="result JSON file")
    parser.add_argument(
        "--global-batch", required=True, type=int, help="samples per step (trainer micro batch x ranks)"
    )
    parser.add_argument(
        "--ranks", type=int, default=1, help="the trainer's ranks (whose rank 0 batch the loss check uses)"
    )
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--initial-weights", type=Path, help="state dict saved by the step worker")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="PretrainConfig keys, as for the step worker"
    )
    args = parser.parse_args(argv)
    cfg = load_pretrain_config(None, args.overrides)
    try:
        result = measure(
            cfg,
            global_batch=args.global_batch,
            ranks=args.ranks,
            warmup=args.warmup_steps,
            steps=args.steps,
            initial_weights=args.initial_weights,
        )
    except Exception as err:  # recorded in the sweep's point, which keeps our numbers
        status = "oom" if is_out_of_memory(err) else "error"
        args.out.write_text(json.dumps({"status": status, "error": f"{type(err).__name__}: {err}"}) + "\n")
        raise SystemExit(f"baseline {status}: {type(err).__name__}: {err}") from err
    args.out.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
