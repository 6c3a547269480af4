"""Fine-tuning: ``setup`` (data, labels, tokenizer, model) and ``run`` (the DeepSpeed loop, model
selection on the validation metric, the final evaluation and the reports).

The same code runs on one rank (plain ``python``) and on N (``deepspeed --module``, ``torchrun``):
every rank trains on a disjoint, equal slice of each global batch, evaluation shards rows across
ranks and gathers the predictions to all of them (so every rank takes the same early-stopping
decision), and only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.typed_config import ConfigError
from pretrain.finetune import InputError
from pretrain.finetune.config import FinetuneConfig
from pretrain.finetune.data import (
    Encoded,
    Table,
    check_known_labels,
    collate,
    encode,
    label_vocabulary,
    read_table,
    seeded_split,
)
from pretrain.finetune.metrics import classification_report, format_reports
from pretrain.finetune.model import check_base_dir, check_compatible, load_classifier, load_tokenizer
from pretrain.finetune.outputs import (
    MetricsLog,
    report_run,
    save_model,
    start_out_dir,
    write_eval_report,
    write_predictions,
)
from pretrain.tracking import Tracker

EVAL_FORMAT = "bert-finetune-eval/1"
# Named streams of np.random.default_rng([seed, STREAM, ...]): each use of the seed draws from its own.
SUBSAMPLE_STREAM = 1  # the max_train_samples subset
EPOCH_ORDER_STREAM = 2  # each epoch's permutation of the training rows
# AdamW as in BERT's reference optimization.py: betas (0.9, 0.999), epsilon 1e-6.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-6


@dataclass
class Split:
    """One split as read (texts, raw labels, source lines) and as tokenized."""

    table: Table
    data: Encoded


@dataclass
class Job:
    """Everything ``run`` needs, built without touching the output dir or the process group."""

    config: FinetuneConfig
    class_names: list[str]  # index = class id; saved as the model's id2label
    tokenizer: object
    model: object
    splits: dict[str, Split]  # "train", "valid", and "test" unless there is no test data
    notes: list[str]  # one-line facts for the console: rows per split, dropped rows, what was loaded


@dataclass
class Selection:
    """Model selection on the validation metric: the best so far, and early stopping once
    ``patience`` evaluations in a row (0: never) brought no improvement."""

    patience: int
    best_value: float = -math.inf
    best_step: int = 0
    evals_since_best: int = 0

    def improves(self, value: float, step: int) -> bool:
        if value > self.best_value:
            self.best_value, self.best_step, self.evals_since_best = value, step, 0
            return True
        self.evals_since_best += 1
        return False

    @property
    def exhausted(self) -> bool:
        return bool(self.patience) and self.evals_since_best >= self.patience


@dataclass(frozen=True)
class Place:
    """Where this process runs: its rank among ``world`` and its device."""

    rank: int
    world: int
    device: object  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_splits(config: FinetuneConfig) -> dict[str, Table]:
    """Train/valid/test tables: the given files, else seeded parts of train_file (no test split when
    neither test_file nor split.test_fraction is set)."""

    def read(role: str, path: str) -> Table:
        return read_table(
            path, role, config.text_column, config.label_column, config.text_pair_column, config.drop_empty
        )

    tables = {"train": read("train_file", config.train_file)}
    held_out: dict[str, float] = {}
    for name, fraction in (("valid", config.split.valid_fraction), ("test", config.split.test_fraction)):
        path = getattr(config, f"{name}_file")
        if path:
            tables[name] = read(f"{name}_file", path)
        elif fraction > 0:
            held_out[name] = fraction
        elif name == "valid":
            raise ConfigError("no validation data: set valid_file, or split.valid_fraction above 0")
    if held_out:
        rest, *parts = seeded_split(tables["train"], list(held_out.values()), config.seed, list(held_out))
        tables.update(train=rest, **dict(zip(held_out, parts)))
    return {name: tables[name] for name in ("train", "valid", "test") if name in tables}


def class_names_for(config: FinetuneConfig, vocabulary: list[str], source: str) -> list[str]:
    """Display names per class id: ``label_names`` where given, else the raw label value."""
    unknown = sorted(set(config.label_names) - set(vocabulary))
    if unknown:
        raise InputError(
            f"label_names has {', '.join(map(repr, unknown))}, which {source} never has as a label "
            f"(its labels: {', '.join(map(repr, vocabulary))})"
        )
    names = [config.label_names.get(value, value) for value in vocabulary]
    if len(set(names)) < len(names):
        raise InputError(f"label_names gives two labels the same name ({names}); make the names unique")
    return names


def setup(config: FinetuneConfig) -> Job:
    """Check the base checkpoint, read and tokenize the splits, build the classifier.

    Every user-caused problem surfaces here as an ``InputError`` (or ``ConfigError``), before the
    output dir is touched.
    """
    base = check_base_dir(config.model, need_weights=config.init == "pretrained")
    tables = read_splits(config)
    vocabulary = label_vocabulary(tables["train"])
    for name in ("valid", "test"):
        if name in tables:
            check_known_labels(tables[name], vocabulary)
    class_names = class_names_for(config, vocabulary, tables["train"].source)
    notes = [
        f"{name}: {len(table):,} rows from {table.source}"
        + (f", {table.dropped_empty} empty rows dropped" if table.dropped_empty else "")
        for name, table in tables.items()
    ]
    if config.max_train_samples and config.max_train_samples < len(tables["train"]):
        # Subsample after the split so that valid/test are the same as in the full run.
        chosen = np.random.default_rng([config.seed, SUBSAMPLE_STREAM]).choice(
            len(tables["train"]), config.max_train_samples, replace=False
        )
        tables["train"] = tables["train"].subset(sorted(chosen))
        notes.append(f"train: using a seeded subset of {config.max_train_samples:,} rows (max_train_samples)")

    import torch

    tokenizer = load_tokenizer(base)
    splits = {
        name: Split(table, encode(table, tokenizer, vocabulary, config.max_len))
        for name, table in tables.items()
    }
    torch.manual_seed(config.seed)  # the new classifier head (and with init=random, every weight)
    model, summary = load_classifier(base, config.init, class_names, config.dropout)
    check_compatible(base, tokenizer, model, config.max_len)
    notes.append(summary)
    return Job(
        config=config, class_names=class_names, tokenizer=tokenizer, model=model, splits=splits, notes=notes
    )


def epoch_order(rows: int, global_batch: int, seed: int, epoch: int) -> np.ndarray:
    """This epoch's seeded permutation, wrapped around to a whole number of global batches so that
    every rank runs the same number of steps (as torch's DistributedSampler pads)."""
    order = np.random.default_rng([seed, EPOCH_ORDER_STREAM, epoch]).permutation(rows)
    padding = -rows % global_batch
    return np.concatenate([order, order[:padding]]) if padding else order


def predict(model, data: Encoded, batch_size: int, pad_id: int, place: Place) -> np.ndarray:
    """Class probabilities [rows, classes] for every row of ``data``, on every rank.

    Rows are sorted by length (batches of similar lengths pad little) and dealt round-robin to the
    ranks; each rank gets the same count (the last rows repeat) because under ZeRO-3 a forward pass
    is a collective that all ranks must join equally often.
    """
    import torch

    from pretrain.distributed import all_gather, to_device

    rank, world = place.rank, place.world
    order = np.argsort([len(ids) for ids in data.input_ids], kind="stable")
    per_rank = math.ceil(len(order) / world)
    dealt = np.resize(order, per_rank * world)  # np.resize repeats from the start to fill
    mine = dealt[rank::world]
    was_training = model.training
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, per_rank, batch_size):
            batch = collate(data, mine[start : start + batch_size], pad_id)
            batch.pop("labels")
            logits = model(**to_device(batch, place.device)).logits
            chunks.append(torch.softmax(logits.float(), dim=-1))
    model.train(was_training)
    local = torch.cat(chunks)  # [per_rank, classes]
    if world > 1:  # row j * world + r = rank r's j-th = dealt[j * world + r]
        local = torch.stack(all_gather(local), dim=1).flatten(0, 1)
    probabilities = np.empty((len(order), local.shape[1]), dtype=np.float32)
    probabilities[dealt] = local.cpu().numpy()
    return probabilities


def evaluate(model, split: Split, job: Job, place: Place) -> tuple[dict, np.ndarray]:
    """The classification report (plus mean cross-entropy) of ``model`` on ``split``, and its probabilities."""
    probabilities = predict(model, split.data, job.config.eval_batch_size, job.tokenizer.pad_token_id, place)
    gold = split.data.labels
    report = classification_report(gold, probabilities.argmax(axis=1), job.class_names)
    report["loss"] = float(-np.log(np.maximum(probabilities[np.arange(len(gold)), gold], 1e-12)).mean())
    return report, probabilities


def _engine(model, config: FinetuneConfig, micro_batch: int, total_steps: int, device_type: str):
    import deepspeed
    import torch

    from pretrain.ds_config import build_deepspeed_config
    from pretrain.optim import build_optimizer, param_groups, warmup_decay_schedule

    optimizer = build_optimizer(
        "adamw", param_groups(model, config.weight_decay), config.lr, ADAM_BETAS, ADAM_EPS, device_type
    )
    warmup_steps = round(config.warmup_ratio * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_decay_schedule(warmup_steps, total_steps))
    ds_config = build_deepspeed_config(
        micro_batch_size=micro_batch,
        grad_accum=1,
        precision=config.precision,
        zero_stage=config.zero_stage,
        grad_clip=config.grad_clip,
    )
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config
    )
    return engine


def step_counts(rows: int, batch_size: int, epochs: float) -> tuple[int, int]:
    """(steps per epoch, total steps): the last batch of an epoch is filled up by ``epoch_order``."""
    steps_per_epoch = math.ceil(rows / batch_size)
    return steps_per_epoch, max(1, math.ceil(epochs * steps_per_epoch))


def _eval_points(total_steps: int, steps_per_epoch: int, eval_every: int) -> set[int]:
    """Steps (counted from 1) after which to evaluate; always including the last."""
    every = eval_every or steps_per_epoch
    return set(range(every, total_steps + 1, every)) | {total_steps}


def train_loop(engine, job: Job, place: Place, log: MetricsLog, out: Path, say) -> tuple[Selection, int]:
    """Train for ``epochs``, evaluating at the eval points and saving every new best model.

    Returns the selection state and the number of steps taken (fewer when stopped early).
    """
    import torch
    from tqdm import tqdm

    from pretrain.distributed import all_reduce_sum, to_device

    config, train = job.config, job.splits["train"].data
    micro_batch = config.batch_size // place.world
    steps_per_epoch, total_steps = step_counts(len(train), config.batch_size, config.epochs)
    eval_points = _eval_points(total_steps, steps_per_epoch, config.eval_every)
    selection = Selection(config.patience)
    say(
        f"training: {total_steps} steps of {config.batch_size} rows ({steps_per_epoch} per epoch) on {place.world} "
        f"rank(s), {place.device}, {config.precision}, ZeRO {config.zero_stage}"
    )

    loss_sum, loss_count, last_log = torch.zeros((), device=place.device), 0, time.time()
    bar = tqdm(total=total_steps, unit="step", desc="fine-tune", disable=None if place.is_main else True)
    for step in range(1, total_steps + 1):
        epoch, position = divmod(step - 1, steps_per_epoch)
        if position == 0:
            order = epoch_order(len(train), config.batch_size, config.seed, epoch)
        start = (
            position * config.batch_size + place.rank * micro_batch
        )  # this rank's slice of the global batch
        batch = collate(train, order[start : start + micro_batch], job.tokenizer.pad_token_id)
        loss = engine(**to_device(batch, place.device)).loss
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float()
        loss_count += 1
        bar.update()
        epochs_done = round(step / steps_per_epoch, 4)

        if step % config.log_every == 0 or step == total_steps:
            mean_loss = all_reduce_sum(loss_sum).item() / (loss_count * place.world)
            now = time.time()
            log.write(
                {
                    "kind": "train",
                    "step": step,
                    "epoch": epochs_done,
                    "loss": mean_loss,
                    "lr": engine.get_lr()[0],
                    "samples_per_s": loss_count * config.batch_size / (now - last_log),
                }
            )
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            loss_sum.zero_()
            loss_count, last_log = 0, now

        if step in eval_points:
            report, _ = evaluate(engine, job.splits["valid"], job, place)
            improved = selection.improves(report[config.metric], step)
            if improved:
                save_model(engine, job.tokenizer, out, config.zero_stage, place.is_main)
            log.write(
                {
                    "kind": "eval",
                    "step": step,
                    "epoch": epochs_done,
                    "split": "valid",
                    **{key: report[key] for key in ("loss", "accuracy", "macro_f1")},
                }
            )
            say(
                f"step {step}/{total_steps} (epoch {epochs_done:.2f})  valid loss {report['loss']:.4f}  "
                f"accuracy {report['accuracy']:.4f}  macro_f1 {report['macro_f1']:.4f}  "
                + (
                    "[best, saved]"
                    if improved
                    else f"(best {selection.best_value:.4f} at step {selection.best_step})"
                )
            )
            if selection.exhausted:
                say(f"early stop: valid {config.metric} did not improve in {config.patience} evaluations")
                break
            last_log = time.time()  # evaluation time is not training throughput
    bar.close()
    return selection, step


def final_evaluation(
    job: Job, place: Place, log: MetricsLog, out: Path, selected_step: int
) -> dict[str, dict]:
    """Reports on valid and test from the saved model reloaded from disk, so that they describe
    exactly what a user of out/model gets; writes predictions.tsv for the test split."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "model", local_files_only=True)
    model.to(place.device)
    reports = {}
    for name in ("valid", "test"):
        if name not in job.splits:
            continue
        reports[name], probabilities = evaluate(model, job.splits[name], job, place)
        log.write(
            {
                "kind": "final",
                "step": selected_step,
                "split": name,
                **{key: reports[name][key] for key in ("loss", "accuracy", "macro_f1")},
            }
        )
        if name == "test" and place.is_main:
            split = job.splits[name]
            write_predictions(
                out / "predictions.tsv", split.table, split.data.labels, probabilities, job.class_names
            )
    return reports


def run(config: FinetuneConfig) -> dict:
    """Fine-tune, select the best model on the validation metric, evaluate it, write the outputs.

    Returns the ``eval.json`` report (on every rank). Raises ``InputError``/``ConfigError`` for
    user-caused problems, before anything is written.
    """
    started = time.time()
    job = setup(config)  # first: bad input fails fast, before DeepSpeed is even imported

    import torch
    from deepspeed.accelerator import get_accelerator
    from tqdm import tqdm

    from pretrain.distributed import barrier, init_distributed, precision_problem, set_threads

    info = init_distributed()
    accelerator = get_accelerator()
    place = Place(info.rank, info.world_size, torch.device(accelerator.device_name(info.local_rank)))
    problem = precision_problem(config.precision)
    if problem:
        raise ConfigError(problem)
    if config.batch_size % place.world:
        raise ConfigError(
            f"config key 'batch_size' = {config.batch_size} does not split evenly across "
            f"{place.world} ranks; use a multiple of {place.world}"
        )
    set_threads(config.threads)

    say = tqdm.write if place.is_main else (lambda _text: None)
    for note in job.notes:
        say(note)
    out = Path(config.out_dir)
    if place.is_main:
        start_out_dir(out, config)
    barrier()
    tracker = Tracker(
        out, config.report_to, place.is_main, config=config.model_dump(mode="json"), fresh=True, say=say
    )
    log = MetricsLog(out / "metrics.jsonl", enabled=place.is_main, started=started, tracker=tracker)

    train_started = time.time()
    steps_per_epoch, total_steps = step_counts(
        len(job.splits["train"].data), config.batch_size, config.epochs
    )
    engine = _engine(job.model, config, config.batch_size // place.world, total_steps, place.device.type)
    selection, steps = train_loop(engine, job, place, log, out, say)
    train_time = time.time() - train_started
    reports = final_evaluation(job, place, log, out, selection.best_step)

    result = {
        "format": EVAL_FORMAT,
        "model": config.model,
        "init": config.init,
        "metric": config.metric,
        "selected": {
            "step": selection.best_step,
            "epoch": round(selection.best_step / steps_per_epoch, 4),
            config.metric: selection.best_value,
        },
        "steps": steps,
        "stopped_early": selection.exhausted,
        "train_rows": len(job.splits["train"].data),
        "class_names": job.class_names,
        "precision": config.precision,
        "ranks": place.world,
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(time.time() - started, 2),
        "splits": reports,
    }
    if place.is_main:
        say(format_reports(reports, job.class_names))
        report_run(tracker, out, result)
        write_eval_report(out, result)
        written = [
            "model/",
            "metrics.jsonl",
            *(["predictions.tsv"] if "test" in reports else []),
            "eval.json",
        ]
        say(f"wrote {out}/: {', '.join(written)} ({result['wall_time_s']:.0f} s)")
    barrier()
    return result
