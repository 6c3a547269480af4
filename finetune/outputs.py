"""The fine-tune dir (contract 3 in docs/contracts.md), written by rank 0 only:

<out_dir>/config.yaml       the resolved config of the run
          metrics.jsonl     training, validation and final rows
          model/            the selected model + tokenizer (save_pretrained) + finetune.json, swapped in
                            whole; LoRA/AdaLoRA: the adapter (merge=false) or the merged plain model
                            with the adapter in model/adapter/ (merge=true)
          predictions.tsv   the test split's predictions (token_classification: CoNLL columns)
          seed-N/           with seeds: one such dir per seed
          eval.json         written last: its presence means the run finished
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np

from data_prep.atomic import atomic_path, open_atomic, write_json_atomic, write_text_atomic
from data_prep.typed_config import Section, to_yaml
from finetune import InputError
from finetune.data import Table


class MetricsLog:
    """metrics.jsonl: one JSON object per training log step (kind "train"), per validation (kind "eval")
    and per split for the selected model (kind "final"), as in the pretraining run dir."""

    def __init__(self, path: Path, enabled: bool, started: float, tracker=None):
        self.path = path
        self.enabled = enabled
        self.started = started
        self.tracker = tracker  # pretrain.tracking.Tracker: the report_to backends

    def write(self, row: dict) -> None:
        if self.enabled:
            row = {**row, "elapsed_s": round(time.time() - self.started, 2)}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            if self.tracker is not None:
                self.tracker.log(row)


def report_run(tracker, out: Path, result: dict) -> None:
    """The eval report and the loss plot (out/loss.png) to the report_to trackers, then close them."""
    from pretrain.plot import plot_losses
    from pretrain.run_log import read_metrics

    if tracker.backends:
        tracker.summary(result)
        rows = read_metrics(out)
        if rows:
            tracker.image("loss_plot", plot_losses(rows, out / "loss.png", title="fine-tuning loss"))
    tracker.close()


def write_eval_report(out: Path, report: dict) -> None:
    """eval.json, last and atomically: its presence means the run finished and everything is there."""
    write_json_atomic(out / "eval.json", report)


def start_out_dir(out: Path, config: Section) -> None:
    """Clear what a previous run left and record this run's resolved config (rank 0 only)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        # The old report goes first: until the new one is written, the dir must not look finished.
        (out / "eval.json").unlink(missing_ok=True)
        (out / "predictions.tsv").unlink(missing_ok=True)
        for stale in ("model", *(p.name for p in out.glob("seed-*"))):
            shutil.rmtree(out / stale, ignore_errors=True)
        (out / "config.yaml").write_text(to_yaml(config), encoding="utf-8")
        (out / "metrics.jsonl").write_text("", encoding="utf-8")
    except OSError as err:
        raise InputError(f"out_dir {str(out)!r} cannot be written: {err.strerror or err}") from None


def save_model(engine, tokenizer, out: Path, zero_stage: int, is_main: bool, info: dict) -> None:
    """Write model + tokenizer + finetune.json to a temporary dir, then swap it in as out/model:
    never half a model. ``info`` is finetune.json (see README, "The fine-tune dir").

    Saved in the training dtype: these are exactly the weights the selection evaluated. A collective:
    under ZeRO-3 every rank contributes its shard of the weights. A peft model saves its adapter
    (the low-rank matrices and the head); with ``info["merged"]`` a merged copy is the plain model.
    """
    import copy

    import deepspeed

    from pretrain.distributed import wait_for_main

    module = engine.module

    # rank 0, while the others wait outside dist_timeout_s (a large model, a slow filesystem)
    def write() -> bool:
        with atomic_path(out / "model") as staging:
            if hasattr(module, "peft_config") and info["merged"]:
                module.save_pretrained(staging / "adapter")
                tokenizer.save_pretrained(staging / "adapter")
                # merge a copy: the training model keeps its adapter layers
                copy.deepcopy(module).merge_and_unload().save_pretrained(staging)
            else:
                module.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            write_finetune_json(staging, info)
        return True

    with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=zero_stage == 3):
        if not wait_for_main(write) and not is_main:
            raise RuntimeError("rank 0 failed to write the model (its message says why)")


def write_finetune_json(model_dir: Path, info: dict) -> None:
    """model/finetune.json: what a server needs to use model/ (task, columns, labels, how it loads)."""
    from finetune.model import FINETUNE_JSON

    write_text_atomic(model_dir / FINETUNE_JSON, json.dumps(info, indent=2) + "\n")


def write_conll_predictions(
    path: Path, words: list[list[str]], gold: list[list[str]], predicted: list[list[str]]
) -> None:
    """CoNLL form, as conlleval reads it: ``word gold predicted`` per line, a blank line after each sentence."""
    with open_atomic(path, "w", encoding="utf-8") as handle:
        for sentence in zip(words, gold, predicted):
            handle.writelines(f"{word} {tag} {guess}\n" for word, tag, guess in zip(*sentence))
            handle.write("\n")


def write_regression_predictions(path: Path, table: Table, gold: np.ndarray, predicted: np.ndarray) -> None:
    """One row per test row: its line, the text (and pair), the gold and the predicted value."""
    with open_atomic(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["line", "text", *(["text_pair"] if table.pairs else []), "gold", "predicted"])
        for row in range(len(table)):
            pair = [table.pairs[row]] if table.pairs else []
            writer.writerow(
                [table.lines[row], table.texts[row], *pair, f"{gold[row]:g}", f"{predicted[row]:.4f}"]
            )


def write_predictions(
    path: Path, table: Table, gold: np.ndarray, probabilities: np.ndarray, class_names: list[str]
) -> None:
    """One row per test row: its line in the source file, the text, gold and predicted class, P(predicted)."""
    predicted = probabilities.argmax(axis=1)
    with open_atomic(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(
            ["line", "text", *(["text_pair"] if table.pairs else []), "gold", "predicted", "probability"]
        )
        for row in range(len(table)):
            pair = [table.pairs[row]] if table.pairs else []
            writer.writerow(
                [
                    table.lines[row],
                    table.texts[row],
                    *pair,
                    class_names[gold[row]],
                    class_names[predicted[row]],
                    f"{probabilities[row, predicted[row]]:.4f}",
                ]
            )
