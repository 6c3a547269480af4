"""The Hugging Face Trainer doing MLM pretraining, as a user of transformers would: the side of
``benchmarks.time_to_quality`` that this project is measured against.

``python -m benchmarks.hf_trainer_mlm --data DIR --out DIR --model tiny --steps N [--batch 64] [--lr 2e-3]
[--warmup-steps K] [--seed S] [--save-steps K] [--precision bf16] [--threads T]``

It is ``run_mlm.py``'s recipe with the data dir's token sequences in place of its text pipeline:
``BertForMaskedLM`` from the same model preset (vocabulary and special ids from the manifest),
``DataCollatorForLanguageModeling(mlm_probability=0.15)`` (Bernoulli masking, 80/10/10),
``TrainingArguments`` with AdamW, linear warm-up and decay, clipping, bf16 autocast, and
``Trainer.train()``: no hand-written loop. Checkpoints (model only) every ``--save-steps`` go to
``OUT/checkpoint-N``; ``OUT/result.json`` holds the run's timings.
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
    args = parser.parse_args(argv)

    from transformers import (
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        PreTrainedTokenizerFast,
        Trainer,
        TrainingArguments,
        set_seed,
    )

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
        save_only_model=True,
        logging_steps=max(1, (args.save_steps or args.steps) // 4),
        report_to=[],
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
    trainer = Trainer(model=model, args=training, train_dataset=train, data_collator=collator)
    output = trainer.train()
    mean_length = sum(len(row["input_ids"]) for row in train) / len(train)
    result = {
        "side": "hf-trainer",
        "started_at": started,
        "finished_at": time.time(),
        "steps": output.global_step,
        "train_runtime_s": output.metrics["train_runtime"],
        "tokens": round(output.global_step * args.batch * mean_length),  # real tokens, padding excluded
        "train_sequences": len(train),
        "versions": versions(),
    }
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
