"""The Hugging Face Trainer doing MLM pretraining, as a user of transformers would: the side of
``benchmarks.time_to_quality`` that this project is measured against.

``python -m benchmarks.hf_trainer_mlm --data DIR --out DIR --model tiny --steps N [--batch 64] [--lr 2e-3]
[--warmup-steps K] [--seed S] [--save-steps K] [--precision bf16] [--threads T]``

It is ``run_mlm.py``'s recipe with the data dir's token sequences in place of its text pipeline:
``BertForMaskedLM`` from the same model preset (vocabulary and special ids from the manifest),
``DataCollatorForLanguageModeling(mlm_probability=0.15)`` (Bernoulli masking, 80/10/10),
``TrainingArguments`` with AdamW, linear warm-up and decay, clipping, bf16 autocast, and
``Trainer.train()``: no hand-written loop. Checkpoints every ``--save-steps`` go to
``OUT/checkpoint-N`` (model, optimizer and scheduler, as this project's do); ``OUT/result.json``,
written when the run is complete, holds its timings.

**In pieces** (``--stop-after-s S``): a callback ends the launch after S seconds with a checkpoint
and the process exits with status 75 (``PIECE_DONE``); the same command again resumes from the
newest checkpoint (``Trainer.train(resume_from_checkpoint=...)``: weights, optimizer, scheduler, RNG
and the place in the data). Every launch is a row of ``OUT/pieces.json``; the result sums them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.machine import versions
from data_prep.manifest import BadSample, load_manifest, read_shard, shard_specs
from pretrain.config import resolve_model_config_path
from pretrain.data import TokenLayout
from pretrain.model import bert_config_from_preset

PRECISIONS = ("bf16", "fp32")
# Exit status of a launch that stopped at --stop-after-s with the run unfinished (EX_TEMPFAIL).
PIECE_DONE = 75


def token_sequences(data_dir: str, manifest: dict, split: str, layout: TokenLayout) -> list[list[int]]:
    """Every good sample's token ids in a split, in shard order (the same sequences the trainer reads)."""
    return [
        sample.tokens.tolist()
        for spec in shard_specs(data_dir, manifest, split)
        for sample in read_shard(spec, layout.rules)
        if not isinstance(sample, BadSample)
    ]


def mlm_only_layout(data_dir: str) -> tuple[dict, TokenLayout]:
    """The data dir's manifest and layout; a data dir with NSP pairs is refused (this recipe is MLM)."""
    manifest = load_manifest(data_dir)
    if manifest["objective"] != "mlm":
        raise SystemExit(
            f"error: {data_dir} holds {manifest['objective']} examples; the Trainer's MLM recipe needs an "
            "mlm data dir (data_prep objective=mlm)"
        )
    return manifest, TokenLayout.from_manifest(manifest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hf_trainer_mlm", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", required=True, help="an mlm data dir written by data_prep")
    parser.add_argument("--out", required=True, help="output dir: checkpoint-N/ and result.json")
    parser.add_argument("--model", default="tiny", help="a preset of configs/model or a BertConfig JSON")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, default=64, help="sequences per optimizer step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, help="default: 10%% of --steps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save-steps", type=int, help="default: --steps (the final model only)")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument(
        "--stop-after-s",
        type=float,
        help="end this launch after so many seconds with a checkpoint (exit 75); run again to resume",
    )
    args = parser.parse_args(argv)

    from transformers import (
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        PreTrainedTokenizerFast,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )
    from transformers.trainer_utils import get_last_checkpoint

    class StopAfter(TrainerCallback):
        """Ends the launch once ``seconds`` have passed since it started, saving a checkpoint first."""

        def __init__(self, seconds: float):
            self.seconds = seconds

        def on_step_end(self, args, state, control, **kwargs):
            if time.time() - started >= self.seconds and state.global_step < state.max_steps:
                control.should_save = control.should_training_stop = True
            return control

    started = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest, layout = mlm_only_layout(args.data)
    train = [{"input_ids": ids} for ids in token_sequences(args.data, manifest, "train", layout)]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(Path(args.data) / "tokenizer"))
    config = bert_config_from_preset(
        resolve_model_config_path(args.model),
        layout.vocab_size,
        manifest["tokenizer"]["special_ids"],
        layout.seq_len,
        "sdpa",
    )
    set_seed(args.seed)
    model = BertForMaskedLM(config)
    training = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else round(0.1 * args.steps),
        lr_scheduler_type="linear",
        weight_decay=0.01,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-6,
        max_grad_norm=1.0,
        bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        save_strategy="steps",
        save_steps=args.save_steps or args.steps,
        logging_steps=max(1, (args.save_steps or args.steps) // 4),
        report_to=[],
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
    callbacks = [StopAfter(args.stop_after_s)] if args.stop_after_s is not None else []
    trainer = Trainer(
        model=model, args=training, train_dataset=train, data_collator=collator, callbacks=callbacks
    )
    resume_from = get_last_checkpoint(args.out) if Path(args.out).is_dir() else None
    output = trainer.train(resume_from_checkpoint=resume_from)

    pieces_path = Path(args.out) / "pieces.json"
    pieces = json.loads(pieces_path.read_text()) if pieces_path.is_file() else []
    pieces.append(
        {
            "started_at": started,
            "finished_at": time.time(),
            "resumed_from": resume_from,
            "steps_to": output.global_step,
            "train_runtime_s": output.metrics["train_runtime"],
        }
    )
    pieces_path.write_text(json.dumps(pieces, indent=2) + "\n")
    if output.global_step < args.steps:
        print(
            f"stopped after {args.stop_after_s:g} s at step {output.global_step} of {args.steps}; run again to resume"
        )
        raise SystemExit(PIECE_DONE)
    mean_length = sum(len(row["input_ids"]) for row in train) / len(train)
    result = {
        "side": "hf-trainer",
        "started_at": pieces[0]["started_at"],
        "finished_at": pieces[-1]["finished_at"],
        "pieces": len(pieces),
        "steps": output.global_step,
        "train_runtime_s": sum(piece["train_runtime_s"] for piece in pieces),
        "tokens": round(output.global_step * args.batch * mean_length),  # real tokens, padding excluded
        "train_sequences": len(train),
        "versions": versions(),
    }
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
