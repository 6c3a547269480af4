"""Fine-tuning tasks beyond single-text classification: entities (CoNLL / JSONL), sentence pairs,
regression; LoRA / AdaLoRA; seeds; augmentation. Tiny model and data, one process."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
from test_finetune import BAD, FILLER, GOOD, SHARED_DATA, SPECIAL, base, build_tokenizer, sentence, write  # noqa: F401
from test_tag_schemes import write_tags

from benchmarks.synthetic_shards import local_bert_tokenizer
from data_prep.typed_config import ConfigError, load_config
from finetune import InputError
from finetune.config import FinetuneConfig
from finetune.data import encode, read_table
from finetune.metrics import entity_report, regression_report, summarize_seeds
from finetune.tokens import IGNORE, encode_tokens, read_token_file, word_predictions
from finetune.train import read_splits, run, setup


def config(**values) -> FinetuneConfig:
    defaults = {"lr": 1e-3, "batch_size": 16, "epochs": 2}
    return load_config(
        FinetuneConfig, None, [f"{key}={value}" for key, value in {**defaults, **values}.items()]
    )


# ---- entity metrics -------------------------------------------------------------------------


def test_entity_scores_match_conlleval_counts():
    """Counted by conlleval's rules: exact type + span; an I- after O opens an entity."""
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],
        ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
        ["O", "I-MISC", "O"],  # conlleval reads I-MISC after O as an entity
    ]
    predicted = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # PER right; LOC missed, ORG spurious
        ["B-ORG", "I-ORG", "O", "O", "B-PER"],  # ORG span wrong (2 of 3 words); PER right
        ["O", "B-MISC", "O"],  # the same span and type: counts as right
    ]
    report = entity_report(gold, predicted)
    # gold entities 6 (PER x2, LOC, ORG, MISC... PER, LOC, ORG, PER, MISC = 5); found 5; correct 3
    assert report["entities"] == 5
    assert report["precision"] == pytest.approx(3 / 5)
    assert report["recall"] == pytest.approx(3 / 5)
    assert report["f1"] == pytest.approx(0.6)
    assert report["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert report["per_type"]["ORG"]["precision"] == pytest.approx(0.0)  # 2 found, neither exact
    assert report["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_type"]["MISC"]["f1"] == pytest.approx(1.0)
    assert report["accuracy"] == pytest.approx(10 / 13)


def test_regression_report_pearson_spearman():
    gold = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    predicted = np.array([1.0, 4.0, 9.0, 16.0, 25.0])  # monotone, not linear
    report = regression_report(gold, predicted)
    assert report["spearman"] == pytest.approx(1.0)
    assert report["pearson"] == pytest.approx(np.corrcoef(gold, predicted)[0, 1])
    assert report["mse"] == pytest.approx(np.mean((predicted - gold) ** 2))
    ties = regression_report(np.array([1.0, 1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0, 4.0]))
    # average ranks: gold 1.5 1.5 3 4, predicted 3 1 2 4 -> Pearson of those
    assert ties["spearman"] == pytest.approx(np.corrcoef([1.5, 1.5, 3, 4], [3, 1, 2, 4])[0, 1])


def test_seed_summary_is_mean_and_sample_std_of_every_number():
    reports = [
        {"accuracy": 0.5, "per_class": {"a": {"f1": 0.2}}, "confusion_matrix": [[1]]},
        {"accuracy": 0.7, "per_class": {"a": {"f1": 0.4}}, "confusion_matrix": [[2]]},
    ]
    summary = summarize_seeds(reports)
    assert summary["accuracy"] == pytest.approx({"mean": 0.6, "std": np.std([0.5, 0.7], ddof=1)})
    assert summary["per_class"]["a"]["f1"]["mean"] == pytest.approx(0.3)
    assert "confusion_matrix" not in summary


# ---- token files, alignment, windows --------------------------------------------------------


def wordpiece_tokenizer():
    """Splits 'berlin' into 'ber ##lin' and 'washington' into 'wash ##ing ##ton'."""
    pieces = SPECIAL + ["the", "in", "ber", "##lin", "wash", "##ing", "##ton", "lives", "x"]
    return local_bert_tokenizer(pieces, wordpiece=True)


def test_conll_reader_skips_docstart_and_picks_the_configured_columns(tmp_path):
    path = write(
        tmp_path / "train.txt",
        "-DOCSTART- -X- -X- O\n\nwashington NNP B-NP B-LOC\nlives VBZ B-VP O\n\n\nthe DT B-NP O\nberlin NNP I-NP B-LOC\n",
    )
    table = read_token_file(path, "train_file", 0, -1, "tokens", "tags")
    assert table.words == [["washington", "lives"], ["the", "berlin"]]
    assert table.tags == [["B-LOC", "O"], ["O", "B-LOC"]]
    assert table.lines == [3, 7]
    chunks = read_token_file(path, "train_file", 0, 2, "tokens", "tags")
    assert chunks.tags[0] == ["B-NP", "B-VP"]
    jsonl = write(
        tmp_path / "t.jsonl", json.dumps({"tokens": ["the", "berlin"], "tags": ["O", "B-LOC"]}) + "\n"
    )
    assert read_token_file(jsonl, "train_file", 0, -1, "tokens", "tags").tags == [["O", "B-LOC"]]


def test_first_subword_labels_and_windows_cover_every_word_once(tmp_path):
    tokenizer = wordpiece_tokenizer()
    words = ["washington", "lives", "in", "berlin", "the", "x", "washington", "berlin"]  # 13 subwords
    tags = ["B-LOC", "O", "O", "B-LOC", "O", "O", "B-LOC", "B-LOC"]
    table = read_token_file(
        write(tmp_path / "t.txt", "".join(f"{w} {t}\n" for w, t in zip(words, tags))),
        "test_file",
        0,
        -1,
        "tokens",
        "tags",
    )
    vocabulary = ["O", "B-LOC"]
    data, stats = encode_tokens(table, tokenizer, vocabulary, max_len=8)  # 6 subwords per window
    assert stats.sentences_split == 1 and stats.windows == len(data) == 3
    assert all(len(row) <= 8 for row in data.input_ids)
    first = tokenizer.convert_ids_to_tokens(data.input_ids[0])
    assert first == ["[CLS]", "wash", "##ing", "##ton", "lives", "in", "[SEP]"]
    assert data.labels[0] == [IGNORE, 1, IGNORE, IGNORE, 0, 0, IGNORE]
    scored = sorted((data.origin[r], w) for r, row in enumerate(data.words) for w in row if w >= 0)
    assert scored == [(0, w) for w in range(len(words))]  # every word once, none cut
    # one-hot outputs from the gold labels map back to the gold tags, word by word
    outputs = np.zeros((len(data), 8, 2), dtype=np.float32)
    for r, labels in enumerate(data.labels):
        for position, label in enumerate(labels):
            outputs[r, position, max(label, 0)] = 1
    assert word_predictions(table, data, outputs, vocabulary) == [tags]


def test_pairs_truncate_the_longer_side_first():
    tokenizer = build_tokenizer(SPECIAL + GOOD + BAD + FILLER)
    from finetune.data import Table

    table = Table("t", "a", [" ".join(GOOD[:10])], [" ".join(BAD[:3])], ["0"], [2])
    data = encode(table, tokenizer, np.array([0]), max_len=10)
    tokens = tokenizer.convert_ids_to_tokens(data.input_ids[0])
    assert tokens == ["[CLS]", *GOOD[:4], "[SEP]", *BAD[:3], "[SEP]"]  # 10 -> 4; the short side intact
    assert data.token_type_ids[0] == [0] * 6 + [1] * 4


# ---- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, message",
    [
        ("column count", "train_file '{tmp}/train.txt' line 3 has 3 columns but line 1 has 2"),
        (
            "unseen tag",
            "valid_file '{tmp}/valid.txt' line 2: tag 'B-XYZ' is not among the training tags (O, B-PER",
        ),
        (
            "no pair column",
            "train_file '{tmp}/pairs.tsv' has no column 'hypothesis' (its columns: label, premise); set text_pair_column=",
        ),
        (
            "not a number",
            "train_file '{tmp}/scores.tsv' line 3: label 'high' is not a number; task=regression",
        ),
        (
            "mixed schemes",
            "train_file '{tmp}/train.txt' mixes the tag prefixes of different schemes (B, I, M): none of",
        ),
        (
            "jsonl lengths",
            "train_file '{tmp}/train.jsonl' line 1 has 2 tokens but 1 tags; give one tag per word",
        ),
    ],
)
def test_bad_task_input_is_one_line_naming_file_and_line(base, tmp_path, case, message):  # noqa: F811
    values = {"model": base, "out_dir": tmp_path / "out"}
    ner = "good1 B-PER\nthe1 O\n\nbad1 B-LOC\ngood2 B-PER\n"
    if case == "column count":
        values.update(
            task="token_classification",
            train_file=write(tmp_path / "train.txt", "good1 B-PER\nthe1 O\nbad1 X B-LOC\n"),
        )
    elif case == "unseen tag":
        values.update(
            task="token_classification",
            train_file=write(tmp_path / "train.txt", ner),
            valid_file=write(tmp_path / "valid.txt", "good1 B-PER\nbad1 B-XYZ\n"),
        )
    elif case == "mixed schemes":
        values.update(
            task="token_classification",
            train_file=write(tmp_path / "train.txt", "good1 B-PER\ngood2 M-PER\n\nbad1 B-LOC\nbad2 I-LOC\n"),
            valid_file=write(tmp_path / "valid.txt", "good1 B-PER\n"),
            test_file=write(tmp_path / "test.txt", "good1 B-PER\n"),
        )
    elif case == "no pair column":
        values.update(
            train_file=write(tmp_path / "pairs.tsv", "label\tpremise\n0\tgood1\n"),
            text_column="premise",
            text_pair_column="hypothesis",
        )
    elif case == "not a number":
        values.update(
            task="regression",
            train_file=write(
                tmp_path / "scores.tsv", "label\ttext\n0.5\tgood1\nhigh\tbad1\n" + "1\tthe1\n" * 20
            ),
        )
    elif case == "jsonl lengths":
        values.update(
            task="token_classification",
            train_file=write(
                tmp_path / "train.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n"
            ),
        )
    with pytest.raises(InputError) as err:
        setup(config(**values))
    assert str(err.value).startswith(message.format(tmp=tmp_path)), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_config_refuses_a_metric_of_another_task():
    with pytest.raises(ConfigError, match="metric=accuracy does not apply to task=regression"):
        config(model="m", train_file="t", out_dir="o", task="regression", metric="accuracy")


# ---- end to end -------------------------------------------------------------------------------


def ner_sentences(rng: random.Random, count: int, scheme: str) -> list[tuple[list[str], list[str]]]:
    """Entities are runs of 1-3 good* words (PER) or bad* words (LOC) between filler words, tagged
    in ``scheme``; a word's number says its part (0-4 first, 5-9 inside, 10-14 last, 15-19 alone),
    so that the test's tiny model learns the spans in a few epochs."""
    sentences = []
    for _ in range(count):
        words: list[str] = []
        spans = []
        for _ in range(rng.randint(2, 5)):
            words.extend(rng.choice(FILLER) for _ in range(rng.randint(1, 2)))
            kind = rng.random()
            if kind < 0.6:
                pool, label = (GOOD, "PER") if kind < 0.35 else (BAD, "LOC")
                length = rng.randint(1, 3)
                parts = [3] if length == 1 else [0, *[1] * (length - 2), 2]
                spans.append((label, len(words), len(words) + length))
                words.extend(rng.choice(pool[5 * part : 5 * part + 5]) for part in parts)
        sentences.append((words, write_tags(len(words), spans, scheme)))
    return sentences


def write_conll(path: Path, sentences, line_end: str = "\n") -> Path:
    blocks = ["\n".join(f"{w} {t}" for w, t in zip(words, tags)) for words, tags in sentences]
    text = "-DOCSTART- O\n\n" + "\n\n".join(blocks) + "\n"
    path.write_bytes(text.replace("\n", line_end).encode())
    return path


def test_token_classification_end_to_end(base, tmp_path):  # noqa: F811
    """A Chinese-style set as distributed: BMES tags, CRLF line ends; scored and written in BMES."""
    rng = random.Random(3)
    train = write_conll(tmp_path / "train.txt", ner_sentences(rng, 300, "bmes"), "\r\n")
    valid = write_conll(tmp_path / "valid.txt", ner_sentences(rng, 60, "bmes"), "\r\n")
    test_sentences = ner_sentences(rng, 60, "bmes") + [
        (["good16", "the1"] * 10, ["S-PER", "O"] * 10)
    ]  # needs 2 windows
    test = write_conll(tmp_path / "test.txt", test_sentences, "\r\n")
    out = tmp_path / "out"
    result = run(
        config(
            model=base,
            task="token_classification",
            train_file=train,
            valid_file=valid,
            test_file=test,
            out_dir=out,
            epochs=3,
            max_len=16,
            lr=5e-3,
        )
    )
    assert result["metric"] == "f1" and result["splits"]["test"]["f1"] >= 0.8
    assert set(result["splits"]["test"]["per_type"]) == {"PER", "LOC"}
    lines = (out / "predictions.tsv").read_text().split("\n\n")
    assert len([block for block in lines if block.strip()]) == 61
    assert all(len(line.split()) == 3 for line in lines[0].splitlines())
    assert len(lines[60].splitlines()) == 20  # the long sentence comes back whole
    rows = [line.split() for block in lines for line in block.splitlines()]
    assert [row[1] for row in rows] == [tag for _, tags in test_sentences for tag in tags]
    assert {row[2][:2] for row in rows} <= {"O", "B-", "M-", "E-", "S-"}  # written in the input's scheme
    info = json.loads((out / "model" / "finetune.json").read_text())
    assert info["task"] == "token_classification" and info["labels"][0] == "O" and info["merged"]
    assert info["tag_scheme"] == "bmes"
    assert info["summary"]["test"]["f1"] == result["splits"]["test"]["f1"]


def pair_rows(rng: random.Random, count: int) -> str:
    """The label is the word set of the second text (the first is noise): the pair must reach the model."""
    lines = ["label\tpremise\thypothesis"]
    for _ in range(count):
        a, b = rng.randrange(2), rng.randrange(2)
        lines.append(f"{b}\t{sentence(rng, a)}\t{sentence(rng, b)}")
    return "\n".join(lines) + "\n"


def test_pairs_with_seeds(base, tmp_path):  # noqa: F811
    rng = random.Random(4)
    train = write(tmp_path / "train.tsv", pair_rows(rng, 400))
    out = tmp_path / "out"
    result = run(
        config(
            model=base,
            train_file=train,
            text_column="premise",
            text_pair_column="hypothesis",
            out_dir=out,
            seeds="[1, 2]",
            epochs=3,
        )
    )
    assert result["seeds"] == [1, 2] and {row["seed"] for row in result["per_seed"]} == {1, 2}
    accuracy = result["splits"]["test"]["accuracy"]
    values = [row["splits"]["test"]["accuracy"] for row in result["per_seed"]]
    assert accuracy["mean"] == pytest.approx(np.mean(values))
    assert accuracy["std"] == pytest.approx(np.std(values, ddof=1))
    assert accuracy["mean"] > 0.8  # the label is in the second text: pairs reach the model
    info = json.loads((out / "model" / "finetune.json").read_text())
    assert info["pair"] and info["text_columns"] == ["premise", "hypothesis"] and info["merged"]
    assert info["summary"]["test"]["accuracy"] == pytest.approx(accuracy["mean"])
    assert (out / "seed-1" / "eval.json").is_file() and (out / "seed-2" / "eval.json").is_file()
    assert json.loads((out / "eval.json").read_text()) == result


def test_lora_merged_model_predicts_as_the_adapter(base, tmp_path):  # noqa: F811
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rng = random.Random(5)
    train = write(tmp_path / "train.tsv", pair_rows(rng, 200))
    out = tmp_path / "out"
    result = run(
        config(
            model=base,
            train_file=train,
            text_column="premise",
            text_pair_column="hypothesis",
            out_dir=out,
            method="lora",
            merge="true",
            lr=1e-2,
            epochs=1,
            precision="fp32",
            **{"lora.r": 4, "lora.target_modules": "[query, value, dense]"},
        )
    )
    parameters = result["parameters"]
    assert 0 < parameters["trainable_share"] < 0.5 and parameters["trainable"] < parameters["total"]
    merged = AutoModelForSequenceClassification.from_pretrained(out / "model", local_files_only=True)
    assert not any("lora" in name for name, _ in merged.named_parameters())  # a plain model
    head = {"num_labels": 2, "id2label": merged.config.id2label, "label2id": merged.config.label2id}
    adapted = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base, local_files_only=True, **head),
        out / "model" / "adapter",
    )
    assert any(
        float(p.abs().max()) > 0 for n, p in adapted.named_parameters() if "lora_B" in n
    )  # trained (lora_B starts at 0)
    tokenizer = AutoTokenizer.from_pretrained(out / "model", local_files_only=True)
    batch = tokenizer(
        [sentence(rng, 0) for _ in range(8)],
        [sentence(rng, 1) for _ in range(8)],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        assert torch.allclose(merged.eval()(**batch).logits, adapted.eval()(**batch).logits, atol=1e-4)
    info = json.loads((out / "model" / "finetune.json").read_text())
    assert info["method"] == "lora" and info["merged"]


@pytest.fixture(scope="module")
def mlm_only_base(base, tmp_path_factory) -> Path:  # noqa: F811
    """``base`` saved as BertForMaskedLM, as an MLM-only pretraining exports it: no pooler."""
    from transformers import AutoTokenizer, BertForMaskedLM

    path = tmp_path_factory.mktemp("mlm_only_base")
    BertForMaskedLM.from_pretrained(base, local_files_only=True).save_pretrained(path)
    AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(path)
    return path


def test_lora_trains_and_saves_the_pooler_an_mlm_only_base_lacks(mlm_only_base, tmp_path):
    """The sequence head's pooler is random when the base has none: under LoRA it must train and be
    saved with the adapter. Frozen (before), it was a fixed random layer, and at every reload of the
    adapter a different one, so the reloaded model's valid accuracy was not the one selected."""
    import torch
    from safetensors.torch import load_file

    from finetune.model import load_finetuned

    rng = random.Random(9)
    rows = "label\ttext\n" + "".join(f"{label}\t{sentence(rng, label)}\n" for label in [0, 1] * 100)
    out = tmp_path / "out"
    job = setup(
        config(model=mlm_only_base, train_file=write(tmp_path / "d.tsv", rows), out_dir=out, method="lora")
    )
    trainable = [name for name, p in job.model.named_parameters() if p.requires_grad]
    assert any(".pooler.modules_to_save." in name for name in trainable)
    result = run(job.config.model_copy(update={"precision": "fp32", "eval_every": 0}))
    assert any(".pooler." in key for key in load_file(out / "model" / "adapter_model.safetensors"))
    batch = job.tokenizer([sentence(rng, 0), sentence(rng, 1)], padding=True, return_tensors="pt")
    logits = []
    for seed in (1, 2):  # whatever the RNG draws for the base's missing pooler, the adapter's replaces it
        torch.manual_seed(seed)
        with torch.no_grad():
            logits.append(load_finetuned(out / "model")[0](**batch).logits)
    assert torch.equal(logits[0], logits[1])
    assert result["splits"]["valid"]["accuracy"] == pytest.approx(result["selected"]["accuracy"], abs=1e-6)


def test_regression_with_adalora_adapter(base, tmp_path):  # noqa: F811
    from finetune.model import load_finetuned

    rng = random.Random(6)
    rows = ["score\ttext"]
    for _ in range(300):
        words = [rng.choice(GOOD + FILLER) for _ in range(10)]
        rows.append(f"{sum(w in GOOD for w in words) / 10:.2f}\t{' '.join(words)}")  # share of good* words
    data = write(tmp_path / "scores.tsv", "\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = run(
        config(
            model=base,
            task="regression",
            train_file=data,
            label_column="score",
            out_dir=out,
            method="adalora",
            lr=5e-3,
            epochs=3,
        )
    )
    test = result["splits"]["test"]
    assert set(test) >= {"mse", "pearson", "spearman"} and test["pearson"] > 0.5
    assert result["parameters"]["trainable_share"] < 0.5
    assert (out / "model" / "adapter_config.json").is_file() and not (out / "model" / "config.json").exists()
    model, _, info = load_finetuned(out / "model")
    assert (
        info["merged"] is False
        and info["labels"] == []
        and type(model).__name__ == "PeftModelForSequenceClassification"
    )
    header, first = (out / "predictions.tsv").read_text().splitlines()[:2]
    assert header.split("\t") == ["line", "text", "gold", "predicted"]


# ---- augmentation -----------------------------------------------------------------------------


def test_token_ops_are_seeded_and_keep_the_words():
    from finetune.augment import delete_words, swap_words

    text = " ".join(FILLER[:10])
    swapped = swap_words(text, 0.3, np.random.default_rng(1))
    assert sorted(swapped.split()) == sorted(text.split()) and swapped != text
    assert swapped == swap_words(text, 0.3, np.random.default_rng(1))
    deleted = delete_words(text, 0.3, np.random.default_rng(1)).split()
    assert len(deleted) == 7 and set(deleted) < set(text.split())


def test_augmentation_touches_train_only_and_mlm_fill_keeps_labels(base, tmp_path):  # noqa: F811
    rng = random.Random(8)
    rows = "label\ttext\n" + "".join(f"{label}\t{sentence(rng, label)}\n" for label in [0, 1] * 20)
    data = write(tmp_path / "d.tsv", rows)
    plain = setup(config(model=base, train_file=data, out_dir=tmp_path / "o"))
    job = setup(
        config(model=base, train_file=data, out_dir=tmp_path / "o", **{"augment.methods": "[mlm_fill, swap]"})
    )
    train, original = job.splits["train"].table, plain.splits["train"].table
    assert len(train) == 3 * len(original) and job.augmented == {
        "mlm_fill": len(original),
        "swap": len(original),
    }
    assert train.labels == original.labels * 3
    filled = train.texts[len(original) : 2 * len(original)]
    assert sum(a != b for a, b in zip(filled, original.texts)) > len(original) // 2
    assert all(len(a.split()) == len(b.split()) for a, b in zip(filled, original.texts))
    assert all(word in GOOD + BAD + FILLER for text in filled for word in text.split())
    for name in ("valid", "test"):
        assert job.splits[name].table.texts == plain.splits[name].table.texts


# ---- real data ---------------------------------------------------------------------------------


def test_reads_real_rte_pairs_and_conll():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (it lives beside the project on the dev machine only)")
    rte = read_table(SHARED_DATA / "rte" / "train.tsv", "train_file", ["sentence1"], "label", "sentence2")
    assert len(rte) == 2490 and set(rte.labels) == {"entailment", "not_entailment"} and rte.pairs
    conll = read_splits(
        config(
            model="m",
            task="token_classification",
            out_dir="o",
            **{
                f"{k}_file": SHARED_DATA / "conll2003" / f
                for k, f in (("train", "train.txt"), ("valid", "valid.txt"), ("test", "test.txt"))
            },
        )
    )
    assert {name: len(table) for name, table in conll.items()} == {
        "train": 14041,
        "valid": 3250,
        "test": 3453,
    }
    assert sum(map(len, conll["test"].words)) == 46435
