"""Fine-tuning stage: a tiny BERT pretrained here for a few MLM steps, fine-tuned on a generated task.

The task's label is a real property of the text: class "good" sentences draw their topic words
from one word set, class "bad" from another, both padded with shared filler words.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from benchmarks.synthetic_shards import local_bert_tokenizer
from data_prep.typed_config import ConfigError, load_config
from finetune import InputError
from finetune.config import FinetuneConfig
from finetune.data import read_table, seeded_split
from finetune.train import read_splits, run, setup
from pretrain.distributed import STRICT_ENV, free_port

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GOOD = [f"good{i}" for i in range(20)]
BAD = [f"bad{i}" for i in range(20)]
FILLER = [f"the{i}" for i in range(20)]


def sentence(rng: random.Random, label: int) -> str:
    topic = GOOD if label == 0 else BAD
    return " ".join(
        rng.choice(topic) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(rng.randint(6, 14))
    )


def write_tsv(path: Path, rows: int, seed: int, text_column: str = "sentence") -> Path:
    rng = random.Random(seed)
    lines = [f"label\t{text_column}"]
    for _ in range(rows):
        label = rng.randrange(2)
        lines.append(f"{label}\t{sentence(rng, label)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def build_tokenizer(vocabulary: list[str]):
    return local_bert_tokenizer(vocabulary)


@pytest.fixture(scope="session")  # also test_finetune_tasks.py's base: built once
def base(tmp_path_factory) -> Path:
    """A BertForPreTraining export (2 layers, hidden 64) after 40 MLM steps on the task's text."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    path = tmp_path_factory.mktemp("base")
    tokenizer = build_tokenizer(SPECIAL + GOOD + BAD + FILLER)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    model = BertForPreTraining(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = random.Random(1)
    for _ in range(40):
        batch = tokenizer(
            [sentence(rng, rng.randrange(2)) for _ in range(32)], padding=True, return_tensors="pt"
        )
        labels = batch["input_ids"].clone()
        masked = (torch.rand(labels.shape) < 0.15) & (labels > len(SPECIAL) - 1)
        labels[~masked] = -100
        batch["input_ids"][masked] = tokenizer.mask_token_id
        logits = model(**batch).prediction_logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    """SST-2-shaped files: train.tsv names its text column 'sentence', dev/test name it 'content'."""
    path = tmp_path_factory.mktemp("task")
    return {
        "train": write_tsv(path / "train.tsv", 400, seed=10),
        "valid": write_tsv(path / "dev.tsv", 100, seed=11, text_column="content"),
        "test": write_tsv(path / "test.tsv", 200, seed=12, text_column="content"),
    }


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def make_config(base: Path, task: dict[str, Path], out: Path, **overrides) -> FinetuneConfig:
    values = {
        "model": base,
        "train_file": task["train"],
        "valid_file": task["valid"],
        "test_file": task["test"],
        "text_column": ["sentence", "content"],
        "out_dir": out,
        "lr": 1e-3,
        "batch_size": 16,
        "epochs": 3,
        **overrides,
    }
    return load_config(
        FinetuneConfig, None, [f"{key}={'null' if value is None else value}" for key, value in values.items()]
    )


def test_finetune_beats_chance_and_writes_contract_3(base, task, tmp_path):
    out = tmp_path / "out"
    result = run(make_config(base, task, out, label_names="{0: good, 1: bad}"))

    assert result["splits"]["test"]["accuracy"] >= 0.9
    assert result["splits"]["valid"]["accuracy"] >= 0.9
    assert json.loads((out / "eval.json").read_text()) == result
    test = result["splits"]["test"]
    assert sum(map(sum, test["confusion_matrix"]["rows_gold_columns_predicted"])) == 200
    assert set(test["per_class"]) == {"good", "bad"}
    evals = [row for row in metrics(out) if row["kind"] == "eval"]
    assert [row["step"] for row in evals] == [25, 50, 75]  # once per epoch
    assert result["selected"]["accuracy"] == max(row["accuracy"] for row in evals)
    final = {row["split"]: row for row in metrics(out) if row["kind"] == "final"}
    assert (
        final["test"]["accuracy"] == test["accuracy"] and final["valid"]["step"] == result["selected"]["step"]
    )
    predictions = (out / "predictions.tsv").read_text().splitlines()
    assert predictions[0].split("\t") == ["line", "text", "gold", "predicted", "probability"]
    assert len(predictions) == 201
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "good", "1": "bad"}
    assert (out / "model" / "tokenizer.json").is_file() and not (out / "model.tmp").exists()


def test_string_labels_round_trip_through_the_saved_model(base, tmp_path):
    """JSONL with string labels, valid/test split off the one file; the reloaded model names its
    predictions with the same strings as predictions.tsv."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rng = random.Random(5)
    rows = [
        {"text": sentence(rng, label), "label": ["negative", "positive"][label]}
        for label in (rng.randrange(2) for _ in range(300))
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    config = load_config(
        FinetuneConfig,
        None,
        [
            f"model={base}",
            f"train_file={data}",
            f"out_dir={out}",
            "lr=1e-3",
            "batch_size=16",
            "epochs=2",
            "split.test_fraction=0.2",
        ],
    )
    result = run(config)
    assert result["class_names"] == ["negative", "positive"]

    model = AutoModelForSequenceClassification.from_pretrained(out / "model", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "model", local_files_only=True)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    header, *lines = [line.split("\t") for line in (out / "predictions.tsv").read_text().splitlines()]
    assert len(lines) == 60
    texts = [line[header.index("text")] for line in lines]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    reloaded = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert reloaded == [line[header.index("predicted")] for line in lines]
    assert {line[header.index("gold")] for line in lines} == {"negative", "positive"}


def test_early_stopping_keeps_the_first_best_model(base, task, tmp_path):
    """With a learning rate too small to change a prediction, no evaluation beats the first one."""
    result = run(
        make_config(
            base,
            task,
            tmp_path / "out",
            lr=1e-12,
            eval_every=2,
            patience=2,
            test_file=None,
            **{"split.test_fraction": 0},
        )
    )
    assert result["stopped_early"] and result["steps"] == 6
    assert result["selected"]["step"] == 2
    assert set(result["splits"]) == {"valid"} and not (tmp_path / "out" / "predictions.tsv").exists()


def test_tsv_csv_and_jsonl_read_the_same_rows(tmp_path):
    rows = [("0", 'he said "fine"'), ("1", "a, b and c")]
    (tmp_path / "d.tsv").write_text("label\ttext\n" + "".join(f"{label}\t{text}\n" for label, text in rows))
    (tmp_path / "d.csv").write_text(
        "label,text\n" + "".join(f'{label},"{text.replace(chr(34), 2 * chr(34))}"\n' for label, text in rows)
    )
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"label": int(label), "text": text}) + "\n" for label, text in rows)
    )
    tables = [
        read_table(tmp_path / f"d.{ext}", "train_file", ["text"], "label") for ext in ("tsv", "csv", "jsonl")
    ]
    for table in tables:
        assert table.texts == [text for _, text in rows]
        assert table.labels == ["0", "1"]
        assert table.lines == [2, 3] or table.lines == [1, 2]  # JSONL has no header line


def test_seeded_split_is_disjoint_complete_and_reproducible(tmp_path):
    table = read_table(write_tsv(tmp_path / "t.tsv", 50, seed=3), "train_file", ["sentence"], "label")
    parts = seeded_split(table, [0.2, 0.1], seed=7, names=["valid", "test"])
    assert [len(part) for part in parts] == [35, 10, 5]
    assert sorted(line for part in parts for line in part.lines) == table.lines
    assert [part.lines for part in seeded_split(table, [0.2, 0.1], 7, ["valid", "test"])] == [
        p.lines for p in parts
    ]


def test_max_train_samples_keeps_valid_and_test_fixed(base, task, tmp_path):
    full = setup(make_config(base, task, tmp_path, valid_file=None, test_file=None))
    small = setup(make_config(base, task, tmp_path, valid_file=None, test_file=None, max_train_samples=50))
    assert len(small.splits["train"].table) == 50
    assert set(small.splits["train"].table.lines) <= set(full.splits["train"].table.lines)
    for name in ("valid", "test"):
        assert small.splits[name].table.lines == full.splits[name].table.lines


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing file", "train_file '{tmp}/nope.tsv' does not exist"),
        ("a directory", "train_file '{tmp}' is not a file"),
        ("bad json", "train_file '{tmp}/train.jsonl' line 2 is not valid JSON"),
        (
            "no label column",
            "train_file '{tmp}/train.tsv' has no column 'label' (its columns: sentiment, sentence); set label_column=",
        ),
        (
            "no text column",
            "train_file '{tmp}/train.tsv' has no text column 'review' or 'body' (its columns: label, sentence)",
        ),
        (
            "empty text",
            "train_file '{tmp}/train.tsv' has 2 rows with empty text in 'sentence' (lines 3, 5); fix them or set drop_empty=true",
        ),
        (
            "empty label",
            "train_file '{tmp}/train.tsv' has 1 row with an empty 'label' (line 3); give every row a label",
        ),
        (
            "unseen label",
            "valid_file '{tmp}/dev.tsv' has labels that the training data never has: '2' (1 row)",
        ),
        ("no tokenizer", "model dir '{tmp}/base' has no tokenizer (tokenizer.json or vocab.txt missing)"),
        ("no config", "model dir '{tmp}/base' has no config.json"),
        ("no weights", "model dir '{tmp}/base' has no weights (model.safetensors missing); use init=random"),
        (
            "ragged row",
            "train_file '{tmp}/train.tsv' line 3 has 3 fields but the header has 2 (a tab inside the text?)",
        ),
        ("not utf-8", "train_file '{tmp}/train.tsv' is not UTF-8 text"),
        (
            "other tokenizer",
            "model dir '{tmp}/base': the tokenizer has 165 tokens but the model's vocab_size is 65",
        ),
        (
            "max_len too long",
            "max_len=512 is longer than the model's max_position_embeddings (128); set max_len=128",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_thing(base, task, tmp_path, case, message):
    import shutil

    model = tmp_path / "base"
    shutil.copytree(base, model)
    train, overrides = task["train"], {}
    if case == "missing file":
        train = tmp_path / "nope.tsv"
    elif case == "a directory":
        train = tmp_path
    elif case == "bad json":
        train = write(
            tmp_path / "train.jsonl", '{"sentence": "good1", "label": 0}\n{"sentence": "bad1", label: 1}\n'
        )
    elif case == "no label column":
        train = write(tmp_path / "train.tsv", "sentiment\tsentence\n0\ta\n")
    elif case == "no text column":
        train, overrides = (
            write(tmp_path / "train.tsv", "label\tsentence\n0\ta\n"),
            {"text_column": "[review, body]"},
        )
    elif case == "empty text":
        train = write(tmp_path / "train.tsv", "label\tsentence\n0\tgood1\n1\t \n0\tgood2\n1\t\n")
    elif case == "empty label":
        train = write(tmp_path / "train.tsv", "label\tsentence\n0\tgood1\n\tbad1\n1\tbad2\n")
    elif case == "unseen label":
        overrides = {"valid_file": write(tmp_path / "dev.tsv", "label\tcontent\n0\tgood1\n2\tbad1\n")}
    elif case == "no tokenizer":
        (model / "tokenizer.json").unlink()
    elif case == "no config":
        (model / "config.json").unlink()
    elif case == "no weights":
        (model / "model.safetensors").unlink()
    elif case == "ragged row":
        train = write(tmp_path / "train.tsv", "label\tsentence\n0\tgood1\n1\tbad1\tbad2\n")
    elif case == "not utf-8":
        train = tmp_path / "train.tsv"
        train.write_bytes(b"label\tsentence\n0\tcaf\xe9\n")
    elif case == "other tokenizer":
        build_tokenizer(SPECIAL + GOOD + BAD + FILLER + [f"new{i}" for i in range(100)]).save_pretrained(
            model
        )
    elif case == "max_len too long":
        overrides = {"max_len": 512}
    config = make_config(model, {**task, "train": train}, tmp_path / "out", **overrides)
    with pytest.raises(InputError) as err:
        setup(config)
    assert str(err.value).startswith(message.format(tmp=tmp_path))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_drop_empty_counts_the_dropped_rows(base, task, tmp_path):
    train = write(
        tmp_path / "train.tsv", "label\tsentence\n0\tgood1 the1\n1\t\n1\tbad1 the2\n0\tgood3\n1\tbad4\n"
    )
    job = setup(make_config(base, {**task, "train": train}, tmp_path / "out", drop_empty="true"))
    assert len(job.splits["train"].table) == 4
    assert any("1 empty rows dropped" in note for note in job.notes)


def test_random_init_needs_no_weights_and_loads_fresh_weights(base, task, tmp_path):
    import shutil

    model = tmp_path / "base"
    shutil.copytree(base, model)
    (model / "model.safetensors").unlink()
    job = setup(make_config(model, task, tmp_path / "out", init="random"))
    assert "randomly initialised" in job.notes[-1]


def test_fp16_where_deepspeed_has_none_is_refused_with_one_line(base, task, tmp_path, monkeypatch):
    from deepspeed.accelerator import get_accelerator

    # Forced to answer no, so that a CPU with native fp16 (AVX512-FP16/AMX) tests the refusal too.
    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: False)
    with pytest.raises(
        ConfigError, match=r"^precision=fp16: DeepSpeed supports no fp16 on this cpu .*; use precision=bf16"
    ):
        run(make_config(base, task, tmp_path / "out", precision="fp16"))
    assert not (tmp_path / "out" / "eval.json").exists()


def test_a_run_that_fails_midway_leaves_no_eval_json(base, task, tmp_path, monkeypatch):
    """A previous run's eval.json is removed first; a crash before the end leaves none."""
    import finetune.train as train

    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.json").write_text("{}")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while saving")

    monkeypatch.setattr(train, "save_model", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_config(base, task, out, eval_every=1, max_train_samples=32))
    assert not (out / "eval.json").exists()
    assert (out / "config.yaml").is_file()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "finetune", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_input_exits_1_with_one_line(base, task, tmp_path):
    train = write(tmp_path / "train.tsv", "label\tsentence\n0\tgood1\n")
    result = cli(
        f"model={base}",
        f"train_file={train}",
        "text_column=sentence",
        "label_column=stars",
        f"out_dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: train_file '{train}' has no column 'stars' (its columns: label, sentence); set label_column="
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_ranks_under_deepspeed_match_one_rank(base, task, tmp_path):
    """Each rank takes its half of every global batch, so with dropout off and fp32 the two-rank
    run follows the one-rank run step for step; only rank 0 writes."""
    same = {"precision": "fp32", "dropout": 0, "eval_every": 25, "log_every": 5}
    single = run(make_config(base, task, tmp_path / "one", **same))

    config = make_config(base, task, tmp_path / "two", **same)
    overrides = [
        f"{key}={value}"
        for key, value in config.model_dump(mode="json").items()
        if key not in ("split", "label_names", "text_column")
    ] + ["text_column=[sentence, content]"]
    launcher = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run(
        [
            str(launcher),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "finetune",
            *[o for o in overrides if not o.endswith("=None")],
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", STRICT_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "eval.json").read_text())

    assert double["ranks"] == 2 and single["ranks"] == 1
    assert result.stdout.count("training: ") == 1  # rank 1 prints nothing
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [(row["kind"], row["step"]) for row in two] == [(row["kind"], row["step"]) for row in one]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4), (a, b)
    assert double["splits"]["test"]["accuracy"] == pytest.approx(
        single["splits"]["test"]["accuracy"], abs=0.01
    )
    assert len((tmp_path / "two" / "predictions.tsv").read_text().splitlines()) == 201


def test_cli_config_error_exits_2(tmp_path):
    config = write(tmp_path / "ft.yaml", "model: m\ntrain_file: t.tsv\nout_dir: o\n")
    result = cli("--config", str(config), "learning_rate=1e-3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'learning_rate'")


def test_presets_load(tmp_path):
    for preset in sorted((REPO / "configs" / "finetune").glob("*.yaml")):
        config = load_config(FinetuneConfig, preset)
        assert config.train_file


def test_reads_the_real_sst2_columns():
    sst2 = SHARED_DATA / "sst2"
    if not sst2.is_dir():
        pytest.skip(f"{sst2} is absent (it lives beside the project on the dev machine only)")
    config = load_config(
        FinetuneConfig,
        REPO / "configs" / "finetune" / "sst2.yaml",
        [
            f"train_file={sst2 / 'train.tsv'}",
            f"valid_file={sst2 / 'dev.tsv'}",
            f"test_file={sst2 / 'test.tsv'}",
        ],
    )
    tables = read_splits(config)
    assert {name: len(table) for name, table in tables.items()} == {
        "train": 67349,
        "valid": 872,
        "test": 1821,
    }
    assert {name: table.text_column for name, table in tables.items()} == {
        "train": "sentence",
        "valid": "content",
        "test": "content",
    }
    assert all(set(table.labels) == {"0", "1"} for table in tables.values())
    assert np.mean([label == "1" for label in tables["valid"].labels]) == pytest.approx(444 / 872)
