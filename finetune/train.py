"""Fine-tuning: ``setup`` (data, labels, tokenizer, model) and ``run`` (the DeepSpeed loop, model
selection on the validation metric, the final evaluation and the reports).

The same code runs on one rank (plain ``python``) and on N (``deepspeed --module``, ``torchrun``):
every rank trains on a disjoint, equal slice of each global batch, evaluation shards rows across
ranks and gathers the predictions to all of them (so every rank takes the same early-stopping
decision), and only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.atomic import atomic_path
from data_prep.typed_config import ConfigError
from finetune import InputError
from finetune.config import TASK_METRICS, FinetuneConfig
from finetune.data import (
    Encoded,
    Table,
    check_known_labels,
    class_ids,
    collate,
    encode,
    float_labels,
    label_vocabulary,
    read_table,
    seeded_split,
)
from finetune.metrics import (
    classification_report,
    entity_report,
    format_reports,
    regression_report,
    summarize_seeds,
)
from finetune.model import (
    apply_method,
    check_base_dir,
    check_compatible,
    count_parameters,
    load_classifier,
    load_finetuned,
    load_tokenizer,
)
from finetune.outputs import (
    MetricsLog,
    report_run,
    save_model,
    start_out_dir,
    write_conll_predictions,
    write_eval_report,
    write_finetune_json,
    write_predictions,
    write_regression_predictions,
)
from finetune.tag_schemes import detect_scheme
from finetune.tokens import (
    IGNORE,
    TokenTable,
    check_known_tags,
    encode_tokens,
    read_token_file,
    tag_vocabulary,
    word_predictions,
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

    table: Table | TokenTable
    data: Encoded


@dataclass
class Job:
    """Everything ``run`` needs, built without touching the output dir or the process group."""

    config: FinetuneConfig
    class_names: list[str]  # index = class (tag) id; saved as the model's id2label; [] for regression
    tokenizer: object
    model: object
    splits: dict[str, Split]  # "train", "valid", and "test" unless there is no test data
    notes: list[str]  # one-line facts for the console: rows per split, dropped rows, what was loaded
    total_steps: int = 0
    augmented: dict | None = None  # rows added per augmentation method
    tag_scheme: str | None = None  # token_classification: bio, iobes, bmes or bilou (finetune/tag_schemes.py)

    def finetune_info(self, summary: dict | None = None) -> dict:
        """model/finetune.json (README, "The fine-tune dir")."""
        config = self.config
        token_task = config.task == "token_classification"
        pair = config.text_pair_column is not None and not token_task
        text_columns = (
            [config.tokens.tokens_field]
            if token_task
            else [self.splits["train"].table.text_column, *([config.text_pair_column] if pair else [])]
        )
        return {
            "task": config.task,
            "text_columns": text_columns,
            "pair": pair,
            "max_len": config.max_len,
            "labels": self.class_names,
            "base_model": str(Path(config.model).resolve()),
            "init": config.init,
            "method": config.method,
            "merged": config.method == "full" or config.merge,
            "tag_scheme": self.tag_scheme,
            "summary": summary,
        }


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


def read_splits(config: FinetuneConfig) -> dict[str, Table | TokenTable]:
    """Train/valid/test tables: the given files, else seeded parts of train_file (no test split when
    neither test_file nor split.test_fraction is set)."""

    def read(role: str, path: str) -> Table | TokenTable:
        if config.task == "token_classification":
            files = config.tokens
            return read_token_file(
                path, role, files.word_column, files.tag_column, files.tokens_field, files.tags_field
            )
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


def _labels_of(config: FinetuneConfig, tables: dict) -> tuple[list[str], list[str]]:
    """(label vocabulary, display names) from train, after refusing valid/test labels train never has."""
    train = tables["train"]
    if config.task == "regression":
        return [], []
    if config.task == "token_classification":
        vocabulary = tag_vocabulary(train)
        check = check_known_tags
    else:
        vocabulary = label_vocabulary(train)
        check = check_known_labels
    for name in ("valid", "test"):
        if name in tables:
            check(tables[name], vocabulary)
    if config.task == "token_classification":
        return vocabulary, vocabulary
    return vocabulary, class_names_for(config, vocabulary, train.source)


def _encode(
    config: FinetuneConfig, name: str, table, tokenizer, vocabulary: list[str], notes: list[str]
) -> Encoded:
    if config.task == "token_classification":
        data, stats = encode_tokens(table, tokenizer, vocabulary, config.max_len)
        if stats.sentences_split:
            notes.append(
                f"{name}: {stats.sentences_split} sentences longer than max_len={config.max_len} tokens "
                f"split at word boundaries ({stats.windows:,} windows for {len(table):,} sentences)"
            )
        if stats.words_without_tokens:
            notes.append(f"{name}: {stats.words_without_tokens} words have no tokens; predicted O")
        return data
    if config.task == "regression":
        return encode(table, tokenizer, float_labels(table), config.max_len)
    return encode(table, tokenizer, class_ids(table, vocabulary), config.max_len)


def setup(config: FinetuneConfig) -> Job:
    """Check the base checkpoint, read and tokenize the splits, build the model.

    Every user-caused problem surfaces here as an ``InputError`` (or ``ConfigError``), before the
    output dir is touched.
    """
    base = check_base_dir(config.model, need_weights=config.init == "pretrained")
    tables = read_splits(config)
    tag_scheme = None
    if config.task == "token_classification":  # before any other tag check: a set of no scheme is the error
        train_tags = {tag for sentence in tables["train"].tags for tag in sentence}
        tag_scheme = detect_scheme(train_tags, tables["train"].source, config.tokens.tag_scheme)
    vocabulary, class_names = _labels_of(config, tables)
    unit = "sentences" if config.task == "token_classification" else "rows"
    notes = [
        f"{name}: {len(table):,} {unit} from {table.source}"
        + (f", {table.dropped_empty} empty rows dropped" if getattr(table, "dropped_empty", 0) else "")
        for name, table in tables.items()
    ]
    if tag_scheme:
        found = "tokens.tag_scheme" if config.tokens.tag_scheme != "auto" else "found in the training tags"
        notes.append(f"tags: {tag_scheme} scheme ({found}), entity spans read by its rules")
    if config.max_train_samples and config.max_train_samples < len(tables["train"]):
        # Subsample after the split so that valid/test are the same as in the full run.
        chosen = np.random.default_rng([config.seed, SUBSAMPLE_STREAM]).choice(
            len(tables["train"]), config.max_train_samples, replace=False
        )
        tables["train"] = tables["train"].subset(sorted(chosen))
        notes.append(
            f"train: using a seeded subset of {config.max_train_samples:,} {unit} (max_train_samples)"
        )

    import torch

    tokenizer = load_tokenizer(base)
    augmented = None
    if config.augment.methods:
        from finetune.augment import augment_table

        tables["train"], augmented = augment_table(tables["train"], config, base, tokenizer)
        notes.append(
            "augment: "
            + ", ".join(f"{method} +{count:,} rows" for method, count in augmented.items())
            + f" (made once before training; train now {len(tables['train']):,} rows)"
        )
    splits = {
        name: Split(table, _encode(config, name, table, tokenizer, vocabulary, notes))
        for name, table in tables.items()
    }
    torch.manual_seed(config.seed)  # the new head (and with init=random, every weight)
    model, summary, new = load_classifier(base, config.init, class_names, config.dropout, config.task)
    check_compatible(base, tokenizer, model, config.max_len)
    notes.append(summary)
    _, total_steps = step_counts(len(splits["train"].data), config.batch_size, config.epochs)
    if config.method != "full":
        model, summary = apply_method(model, config, total_steps, new)
        notes.append(summary)
    return Job(
        config=config,
        class_names=class_names,
        tokenizer=tokenizer,
        model=model,
        splits=splits,
        notes=notes,
        total_steps=total_steps,
        augmented=augmented,
        tag_scheme=tag_scheme,
    )


def epoch_order(rows: int, global_batch: int, seed: int, epoch: int) -> np.ndarray:
    """This epoch's seeded permutation, wrapped around to a whole number of global batches so that
    every rank runs the same number of steps (as torch's DistributedSampler pads)."""
    order = np.random.default_rng([seed, EPOCH_ORDER_STREAM, epoch]).permutation(rows)
    padding = -rows % global_batch
    return np.concatenate([order, order[:padding]]) if padding else order


def predict(
    model, data: Encoded, batch_size: int, pad_id: int, place: Place, task: str, max_len: int
) -> np.ndarray:
    """Model outputs for every row of ``data``, on every rank: class probabilities [rows, classes],
    the predicted value [rows, 1] (regression), or per-token tag probabilities [rows, max_len, tags]
    (token classification; zero beyond a row's length).

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
            logits = model(**to_device(batch, place.device)).logits.float()
            if task == "regression":
                chunks.append(logits)
            elif task == "token_classification":
                # a fixed width, so that every rank's chunks stack and gather alike
                chunks.append(
                    torch.nn.functional.pad(torch.softmax(logits, -1), (0, 0, 0, max_len - logits.shape[1]))
                )
            else:
                chunks.append(torch.softmax(logits, dim=-1))
    model.train(was_training)
    local = torch.cat(chunks)  # [per_rank, ...]
    if world > 1:  # row j * world + r = rank r's j-th = dealt[j * world + r]
        local = torch.stack(all_gather(local), dim=1).flatten(0, 1)
    probabilities = np.empty((len(order), *local.shape[1:]), dtype=np.float32)
    probabilities[dealt] = local.cpu().numpy()
    return probabilities


def evaluate(model, split: Split, job: Job, place: Place) -> tuple[dict, np.ndarray]:
    """The task's report (plus the mean loss) of ``model`` on ``split``, and its raw outputs."""
    config = job.config
    outputs = predict(
        model,
        split.data,
        config.eval_batch_size,
        job.tokenizer.pad_token_id,
        place,
        config.task,
        config.max_len,
    )
    if config.task == "regression":
        report = regression_report(split.data.labels, outputs[:, 0])
        report["loss"] = report["mse"]
    elif config.task == "token_classification":
        report = entity_report(
            split.table.tags,
            word_predictions(split.table, split.data, outputs, job.class_names),
            job.tag_scheme,
        )
        gold = [
            probs[position, label]
            for probs, labels in zip(outputs, split.data.labels)
            for position, label in enumerate(labels)
            if label != IGNORE
        ]
        report["loss"] = float(-np.log(np.maximum(gold, 1e-12)).mean())
    else:
        gold = split.data.labels
        report = classification_report(gold, outputs.argmax(axis=1), job.class_names)
        report["loss"] = float(-np.log(np.maximum(outputs[np.arange(len(gold)), gold], 1e-12)).mean())
    return report, outputs


def _main_metrics(report: dict, task: str) -> dict:
    return {key: report[key] for key in ("loss", *TASK_METRICS[task])}


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

    config, train = job.config, job.splits["train"].data
    micro_batch = config.batch_size // place.world
    steps_per_epoch, total_steps = step_counts(len(train), config.batch_size, config.epochs)
    eval_points = _eval_points(total_steps, steps_per_epoch, config.eval_every)
    selection = Selection(config.patience)
    say(
        f"training: {total_steps} steps of {config.batch_size} rows ({steps_per_epoch} per epoch) on {place.world} "
        f"rank(s), {place.device}, {config.precision}, ZeRO {config.zero_stage}"
    )

    window = _LossWindow(torch.zeros((), device=place.device))
    bar = tqdm(total=total_steps, unit="step", desc="fine-tune", disable=None if place.is_main else True)
    for step in range(1, total_steps + 1):
        epoch, position = divmod(step - 1, steps_per_epoch)
        if position == 0:
            order = epoch_order(len(train), config.batch_size, config.seed, epoch)
        start = (
            position * config.batch_size + place.rank * micro_batch
        )  # this rank's slice of the global batch
        window.add(_train_step(engine, job, place, order[start : start + micro_batch], step))
        bar.update()
        epochs_done = round(step / steps_per_epoch, 4)
        if step % config.log_every == 0 or step == total_steps:
            mean_loss = window.log(log, engine, step, epochs_done, config.batch_size, place.world)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        if step in eval_points:
            if _evaluate_and_select(
                engine, job, place, log, out, selection, step, total_steps, epochs_done, say
            ):
                break
            window.since = time.time()  # evaluation time is not training throughput
    bar.close()
    return selection, step


def _train_step(engine, job: Job, place: Place, rows, step: int):
    """One optimizer step on this rank's rows of the global batch; returns the loss."""
    from pretrain.distributed import to_device

    batch = collate(job.splits["train"].data, rows, job.tokenizer.pad_token_id)
    loss = engine(**to_device(batch, place.device)).loss
    engine.backward(loss)
    if job.config.method == "adalora":
        # AdaLoRA scores each rank's importance from this step's gradients and prunes on its
        # schedule; before engine.step(), which clears the gradients.
        engine.module.base_model.update_and_allocate(step)
    engine.step()
    return loss


@dataclass
class _LossWindow:
    """The training loss summed since the last log line (on the device: no host sync per step)."""

    total: Any
    count: int = 0
    since: float = field(default_factory=time.time)

    def add(self, loss) -> None:
        self.total += loss.detach().float()
        self.count += 1

    def log(self, log: MetricsLog, engine, step: int, epoch: float, batch_size: int, world: int) -> float:
        """Writes the window's train row (mean loss over all ranks, rows/s) and starts a new window."""
        from pretrain.distributed import all_reduce_sum

        mean_loss = all_reduce_sum(self.total).item() / (self.count * world)
        now = time.time()
        log.write(
            {
                "kind": "train",
                "step": step,
                "epoch": epoch,
                "loss": mean_loss,
                "lr": engine.get_lr()[0],
                "samples_per_s": self.count * batch_size / (now - self.since),
            }
        )
        self.total.zero_()
        self.count, self.since = 0, now
        return mean_loss


def _evaluate_and_select(
    engine,
    job: Job,
    place: Place,
    log: MetricsLog,
    out: Path,
    selection: Selection,
    step: int,
    total_steps: int,
    epochs_done: float,
    say,
) -> bool:
    """Evaluates on valid, saves the model when it is the best so far; True when patience ran out."""
    config = job.config
    report, _ = evaluate(engine, job.splits["valid"], job, place)
    improved = selection.improves(report[config.selection_metric], step)
    if improved:
        save_model(engine, job.tokenizer, out, config.zero_stage, place.is_main, job.finetune_info())
    main = _main_metrics(report, config.task)
    log.write({"kind": "eval", "step": step, "epoch": epochs_done, "split": "valid", **main})
    standing = (
        "[best, saved]" if improved else f"(best {selection.best_value:.4f} at step {selection.best_step})"
    )
    say(
        f"step {step}/{total_steps} (epoch {epochs_done:.2f})  valid "
        + "  ".join(f"{key} {value:.4f}" for key, value in main.items())
        + "  "
        + standing
    )
    if selection.exhausted:
        say(f"early stop: valid {config.selection_metric} did not improve in {config.patience} evaluations")
    return selection.exhausted


def final_evaluation(
    job: Job, place: Place, log: MetricsLog, out: Path, selected_step: int, splits=("valid", "test")
) -> dict[str, dict]:
    """Reports on ``splits`` from the saved model reloaded from disk (as a server loads it), so
    that they describe exactly what a user of out/model gets; writes predictions.tsv for the test split."""
    model, _, _ = load_finetuned(out / "model")
    model.to(place.device)
    reports = {}
    for name in splits:
        if name not in job.splits:
            continue
        reports[name], outputs = evaluate(model, job.splits[name], job, place)
        log.write(
            {
                "kind": "final",
                "step": selected_step,
                "split": name,
                **_main_metrics(reports[name], job.config.task),
            }
        )
        if name == "test" and place.is_main:
            split, path = job.splits[name], out / "predictions.tsv"
            if job.config.task == "token_classification":
                predicted = word_predictions(split.table, split.data, outputs, job.class_names)
                write_conll_predictions(path, split.table.words, split.table.tags, predicted)
            elif job.config.task == "regression":
                write_regression_predictions(path, split.table, split.data.labels, outputs[:, 0])
            else:
                write_predictions(path, split.table, split.data.labels, outputs, job.class_names)
    return reports


def _format(reports: dict[str, dict], job: Job) -> str:
    if job.config.task == "sequence_classification":
        return format_reports(reports, job.class_names)
    lines = [
        f"{split:<6} "
        + "  ".join(f"{key} {value:.4f}" for key, value in _main_metrics(report, job.config.task).items())
        for split, report in reports.items()
    ]
    if job.config.task == "token_classification":
        lines += [
            f"{split:<6} {kind:<6} precision {scores['precision']:.4f}  recall {scores['recall']:.4f}  "
            f"f1 {scores['f1']:.4f}  entities {scores['support']}"
            for split, report in reports.items()
            for kind, scores in report["per_type"].items()
        ]
    return "\n".join(lines)


def run(config: FinetuneConfig) -> dict:
    """Fine-tune, select the best model on the validation metric, evaluate it, write the outputs;
    with ``seeds``, once per seed into out_dir/seed-N/ plus the summary over seeds.

    Returns the ``eval.json`` report (on every rank). Raises ``InputError``/``ConfigError`` for
    user-caused problems, before anything is written.
    """
    if config.seeds:
        return run_seeds(config)
    return run_once(config)


def run_seeds(config: FinetuneConfig) -> dict:
    """One run per seed, then eval.json with every metric's mean and std over the seeds; model/
    and predictions.tsv are the seed with the best validation metric."""
    from pretrain.distributed import main_barrier

    out = Path(config.out_dir)
    started = time.time()
    is_main = os.environ.get("RANK", "0") == "0"
    results = []
    for index, seed in enumerate(config.seeds):
        one = config.model_copy(update={"seed": seed, "seeds": [], "out_dir": str(out / f"seed-{seed}")})
        job = None
        if index == 0:
            job = setup(one)  # bad input stops here, before the out dir is cleared
            if is_main:
                start_out_dir(out, config)
        results.append(run_once(one, job))
    metric = config.selection_metric
    best = max(range(len(results)), key=lambda i: results[i]["selected"][metric])
    summary = {
        name: summarize_seeds([result["splits"][name] for result in results]) for name in results[0]["splits"]
    }
    report = _seeds_report(config, results, best, summary)
    report["wall_time_s"] = round(time.time() - started, 2)
    if is_main:
        _publish_selected_seed(config, config.seeds[best], summary)
        write_eval_report(out, report)
    main_barrier()  # rank 0 copied the chosen seed's model: as long as that takes
    return report


RUN_FIELDS_KEPT_OVER_SEEDS = (
    "format",
    "task",
    "method",
    "model",
    "init",
    "metric",
    "parameters",
    "train_rows",
    "class_names",
    "precision",
    "ranks",
)


def _seeds_report(config: FinetuneConfig, results: list[dict], best: int, summary: dict) -> dict:
    """eval.json of a run over seeds: the runs' common fields, each split's metrics as mean and std
    over the seeds, and each seed's own selection and main metrics."""
    return {
        **{key: results[0][key] for key in RUN_FIELDS_KEPT_OVER_SEEDS},
        "seeds": list(config.seeds),
        "selected_seed": config.seeds[best],
        "splits": summary,  # {split: {metric: {mean, std}}}; std is the sample std (ddof=1)
        "train_time_s": summarize_seeds([result["train_time_s"] for result in results]),
        "per_seed": [
            {
                "seed": seed,
                "selected": result["selected"],
                "splits": {
                    name: _main_metrics(split, config.task) for name, split in result["splits"].items()
                },
                "train_time_s": result["train_time_s"],
                "peak_memory_mb": result["peak_memory_mb"],
            }
            for seed, result in zip(config.seeds, results)
        ],
    }


def _publish_selected_seed(config: FinetuneConfig, seed: int, summary: dict) -> None:
    """The selected seed's model/ and predictions.tsv become the run's, its finetune.json carrying
    the means over seeds; prints them."""
    import shutil

    out, chosen = Path(config.out_dir), Path(config.out_dir) / f"seed-{seed}"
    with atomic_path(out / "model") as staging:
        shutil.copytree(chosen / "model", staging)
    if (chosen / "predictions.tsv").exists():
        shutil.copyfile(chosen / "predictions.tsv", out / "predictions.tsv")
    means = {name: _main_metrics(split, config.task) for name, split in summary.items()}
    info = json.loads((out / "model" / "finetune.json").read_text(encoding="utf-8"))
    info["summary"] = {
        name: {key: value["mean"] for key, value in main.items()} for name, main in means.items()
    }
    info["seeds"] = {"seeds": list(config.seeds), "selected": seed, "summary": "mean over seeds"}
    write_finetune_json(out / "model", info)
    print(
        "over seeds "
        + ", ".join(map(str, config.seeds))
        + ": "
        + "; ".join(
            f"{name} "
            + ", ".join(f"{key} {value['mean']:.4f} ± {value['std']:.4f}" for key, value in main.items())
            for name, main in means.items()
        ),
        flush=True,
    )


def _peak_memory_mb(device) -> float:
    """Peak memory of this process: the accelerator's allocator peak, or on CPU the peak resident set."""
    import resource

    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def run_once(config: FinetuneConfig, job: Job | None = None, read_test: bool = True) -> dict:
    """One fine-tuning run (one seed) into config.out_dir; ``job``: ``setup(config)`` if done already.

    ``read_test=False`` leaves the test split unread, for a caller that selects among several runs on
    the validation metric and then reads the chosen run's test split once (``read_test_once``)."""
    started = time.time()
    job = job or setup(config)  # first: bad input fails fast, before DeepSpeed is even imported

    from tqdm import tqdm

    from pretrain.distributed import barrier, main_barrier

    place = _join_ranks(config)
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
    parameters = count_parameters(job.model)
    engine = _engine(job.model, config, config.batch_size // place.world, total_steps, place.device.type)
    selection, steps = train_loop(engine, job, place, log, out, say)
    train_time = time.time() - train_started
    peak_memory = _peak_memory_mb(place.device)
    reports = final_evaluation(
        job, place, log, out, selection.best_step, ("valid", "test") if read_test else ("valid",)
    )

    result = {
        "format": EVAL_FORMAT,
        "task": config.task,
        "method": config.method,
        "model": config.model,
        "init": config.init,
        "metric": config.selection_metric,
        "parameters": parameters,
        "augmented": job.augmented,
        "selected": {
            "step": selection.best_step,
            "epoch": round(selection.best_step / steps_per_epoch, 4),
            config.selection_metric: selection.best_value,
        },
        "steps": steps,
        "stopped_early": selection.exhausted,
        "train_rows": len(job.splits["train"].data),
        "class_names": job.class_names,
        "precision": config.precision,
        "ranks": place.world,
        "train_time_s": round(train_time, 2),
        "peak_memory_mb": peak_memory,
        "wall_time_s": round(time.time() - started, 2),
        "splits": reports,
    }
    if place.is_main:
        _write_run_outputs(job, out, tracker, result, say)
    main_barrier()  # rank 0 wrote the reports (and a tracker may upload): as long as that takes
    return result


def read_test_once(job: Job) -> dict:
    """The test report of a finished ``run_once(job.config, job, read_test=False)``: its selected
    model (out_dir/model) evaluated on the test split, which eval.json, model/finetune.json and
    predictions.tsv then include. Raises ``InputError`` where the job has no test split."""
    if "test" not in job.splits:
        raise InputError("no test data: set test_file, or split.test_fraction above 0")
    out = Path(job.config.out_dir)
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    if "test" in result["splits"]:
        raise InputError(f"{out}: the test split was read already")
    place = _join_ranks(job.config)
    log = MetricsLog(out / "metrics.jsonl", enabled=place.is_main, started=time.time())
    reports = final_evaluation(job, place, log, out, result["selected"]["step"], ("test",))
    result["splits"].update(reports)
    if place.is_main:
        _write_reports(job, out, result)
    return reports["test"]


def _write_reports(job: Job, out: Path, result: dict) -> None:
    """model/finetune.json with each split's main metrics, then eval.json, last."""
    summary = {name: _main_metrics(report, job.config.task) for name, report in result["splits"].items()}
    write_finetune_json(out / "model", job.finetune_info(summary))
    write_eval_report(out, result)


def _join_ranks(config: FinetuneConfig) -> Place:
    """This process's rank, world and device, once the run's precision and batch fit them."""
    import torch
    from deepspeed.accelerator import get_accelerator

    from pretrain.distributed import init_distributed, precision_problem, set_threads

    info = init_distributed()
    place = Place(info.rank, info.world_size, torch.device(get_accelerator().device_name(info.local_rank)))
    problem = precision_problem(config.precision)
    if problem:
        raise ConfigError(problem)
    if config.batch_size % place.world:
        raise ConfigError(
            f"config key 'batch_size' = {config.batch_size} does not split evenly across "
            f"{place.world} ranks; use a multiple of {place.world}"
        )
    set_threads(config.threads)
    return place


def _write_run_outputs(job: Job, out: Path, tracker, result: dict, say) -> None:
    """Rank 0: the tracker's last records, model/finetune.json with the main metrics, eval.json last."""
    reports = result["splits"]
    say(_format(reports, job))
    report_run(tracker, out, result)
    _write_reports(job, out, result)
    written = ["model/", "metrics.jsonl", *(["predictions.tsv"] if "test" in reports else []), "eval.json"]
    say(f"wrote {out}/: {', '.join(written)} ({result['wall_time_s']:.0f} s)")
