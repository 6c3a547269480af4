"""Serving a fine-tuned model dir: the shared inference code (serve.engine) against
a plain transformers forward, and the real HTTP server (a subprocess on a free loopback port) for
predictions, bad input, overload (503), dynamic batching and SIGTERM with a request in flight."""

import json
import os
import signal
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from test_tag_schemes import write_tags

from benchmarks.load_test import free_port, make_model_dir, request, start_server
from finetune import InputError
from serve.engine import Predictor

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NER_WORDS = ["john", "smith", "lives", "in", "paris", "dog", "##s", "the", "walks"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    # A fine-tune out_dir of today's layout (no finetune.json): what the model is gets inferred,
    # the summary comes from eval.json and max_len from config.yaml beside model/.
    run = root / "sst"
    cls = make_model_dir(run / "model", labels=["neg", "pos"], max_len=512, seed=1)
    (run / "config.yaml").write_text("model: runs/x/export\nmax_len: 48\ntext_column: [sentence]\n")
    (run / "eval.json").write_text(
        json.dumps(
            {"metric": "accuracy", "steps": 30, "splits": {"test": {"accuracy": 0.9, "per_class": {}}}}
        )
    )
    ner = make_model_dir(
        root / "ner" / "model",
        task="token_classification",
        labels=NER_LABELS,
        vocabulary=NER_WORDS,
        finetune_json={
            "task": "token_classification",
            "text_columns": ["tokens"],
            "pair": False,
            "max_len": 32,
            "labels": NER_LABELS,
            "base_model": "runs/x/export",
            "method": "lora",
            "merged": True,
            "summary": {"test_f1": 0.5},
        },
        seed=2,
    )
    return {"cls": cls, "ner": ner, "reg": make_model_dir(root / "reg" / "model", task="regression", seed=3)}


def direct_logits(model_dir: Path, model_class, *args, **kwargs) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = model_class.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(**tokenizer(*args, padding=True, return_tensors="pt", **kwargs)).logits


def test_classification_and_pairs_match_a_plain_forward(models):
    from transformers import AutoModelForSequenceClassification

    predictor = Predictor(models["cls"], dtype="fp32")
    texts = ["w1 w2 w3 w4", "w10 w20", "w5 w6 w7 w8 w9 w11"]
    pairs = [("w1 w2", "w3 w4 w5"), ("w7", "w8 w9")]
    got = predictor.predict([texts[0], pairs[0], texts[1], texts[2], pairs[1]])  # mixed kinds, one forward
    expected = torch.cat(
        [
            torch.softmax(direct_logits(models["cls"], AutoModelForSequenceClassification, texts), -1),
            torch.softmax(
                direct_logits(
                    models["cls"],
                    AutoModelForSequenceClassification,
                    [a for a, _ in pairs],
                    [b for _, b in pairs],
                ),
                -1,
            ),
        ]
    )
    order = [got[0], got[2], got[3], got[1], got[4]]
    for result, row in zip(order, expected):
        assert result["label"] == ["neg", "pos"][int(row.argmax())]
        assert [result["probabilities"]["neg"], result["probabilities"]["pos"]] == pytest.approx(
            row.tolist(), abs=1e-5
        )
    # bf16 inference: the same labels, probabilities within bf16 rounding.
    bf16 = Predictor(models["cls"], dtype="bf16").predict(texts)
    for low, high in zip(bf16, [got[0], got[2], got[3]]):
        assert low["probabilities"]["pos"] == pytest.approx(high["probabilities"]["pos"], abs=0.02)


def test_inferred_metadata_comes_from_config_and_the_run_dir(models):
    info = Predictor(models["cls"], dtype="fp32").info
    assert info.source == "inferred" and info.task == "sequence_classification"
    assert info.labels == ["neg", "pos"] and info.max_len == 48  # config.yaml's, not the tokenizer's 512
    assert info.text_columns == ["sentence"] and info.base_model == "runs/x/export"
    assert info.summary == {"test": {"accuracy": 0.9}}
    reg = Predictor(models["reg"], dtype="fp32")
    assert reg.info.task == "regression" and reg.info.labels == []


def test_regression_value_matches_a_plain_forward(models):
    from transformers import AutoModelForSequenceClassification

    got = Predictor(models["reg"], dtype="fp32").predict(["w3 w4 w5", "w9"])
    expected = direct_logits(models["reg"], AutoModelForSequenceClassification, ["w3 w4 w5", "w9"])[:, 0]
    assert [row["value"] for row in got] == pytest.approx(expected.tolist(), abs=1e-5)


def test_token_classification_labels_words_by_their_first_subtoken(models):
    from transformers import AutoModelForTokenClassification

    predictor = Predictor(models["ner"], dtype="fp32")
    assert predictor.info.source == "finetune.json" and predictor.info.method == "lora"
    words = ["john", "smith", "walks", "the", "dogs", "in", "paris"]
    [result] = predictor.predict([words])
    logits = direct_logits(models["ner"], AutoModelForTokenClassification, [words], is_split_into_words=True)[
        0
    ]
    # tokens: [CLS] john smith walks the dog ##s in paris [SEP]: "dogs" is word 4, at positions 5 and 6
    first = [1, 2, 3, 4, 5, 7, 8]
    assert result["labels"] == [NER_LABELS[int(logits[p].argmax())] for p in first]
    assert result["tokens"] == words and result["truncated_words"] == 0
    # Texts are split on whitespace for token classification.
    assert predictor.predict([" ".join(words)])[0]["labels"] == result["labels"]


@pytest.mark.parametrize("scheme", ["bio", "bmes", "bilou"])
def test_spans_follow_the_scheme_of_the_labels(models, scheme):
    predictor = Predictor(models["ner"], dtype="fp32")
    assert predictor.info.tag_scheme == "bio"  # found from the labels: this finetune.json predates the key
    words = ["john", "smith", "lives", "in", "paris"]
    tags = write_tags(len(words), [("PER", 0, 2), ("LOC", 4, 5)], scheme)
    predictor.info.labels, predictor.info.tag_scheme = ["O", *sorted(set(tags) - {"O"})], scheme
    rows = torch.full((8, len(predictor.info.labels)), -10.0)
    for position, tag in enumerate(tags, start=1):
        rows[position, predictor.info.labels.index(tag)] = 10.0
    word_ids = [None, 0, 1, 2, 3, 4, None, None]
    result = predictor._tagging(words, word_ids, torch.softmax(rows, -1).numpy())
    assert result["spans"] == [
        {"label": "PER", "start": 0, "end": 2, "text": "john smith"},
        {"label": "LOC", "start": 4, "end": 5, "text": "paris"},
    ]


def test_labels_of_no_scheme_are_served_without_spans(tmp_path):
    """A tagger from elsewhere whose labels are LABEL_0, LABEL_1: its labels, no spans, no refusal."""
    model_dir = make_model_dir(
        tmp_path / "model", task="token_classification", labels=["LABEL_0", "LABEL_1"], vocabulary=NER_WORDS
    )
    predictor = Predictor(model_dir, dtype="fp32")
    assert predictor.info.tag_scheme is None
    [result] = predictor.predict([["john", "smith", "walks"]])
    assert len(result["labels"]) == 3 and set(result["labels"]) <= {"LABEL_0", "LABEL_1"}
    assert result["spans"] == []


def test_a_model_dir_that_is_not_one_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"has no config.json"):
        Predictor(tmp_path)


# ---- the real server ----------------------------------------------------------------------------


def post(port: int, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request("127.0.0.1", port, "POST", "/predict", data)


@pytest.fixture(scope="module")
def cls_server(models):
    port = free_port()
    process = start_server(models["cls"], port, "--max-items", "4", "--max-chars", "200", "--threads", "1")
    yield port
    process.terminate()
    process.wait(30)


def test_server_predicts_texts_and_pairs_like_the_engine(models, cls_server):
    status, body = post(cls_server, {"texts": ["w1 w2 w3 w4", "w10 w20"]})
    assert status == 200
    expected = Predictor(models["cls"]).predict(["w1 w2 w3 w4", "w10 w20"])  # same dtype choice (auto)
    assert [row["label"] for row in body["predictions"]] == [row["label"] for row in expected]
    assert body["predictions"][0]["probabilities"]["pos"] == pytest.approx(
        expected[0]["probabilities"]["pos"], abs=1e-3
    )
    status, body = post(cls_server, {"pairs": [["w1 w2", "w3 w4 w5"]]})
    assert status == 200 and set(body["predictions"][0]["probabilities"]) == {"neg", "pos"}
    status, health = request("127.0.0.1", cls_server, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    status, meta = request("127.0.0.1", cls_server, "GET", "/metadata")
    assert meta["labels"] == ["neg", "pos"] and meta["max_len"] == 48
    assert meta["summary"] == {"test": {"accuracy": 0.9}}  # eval.json's numbers per split
    status, schema = request("127.0.0.1", cls_server, "GET", "/openapi.json")
    assert status == 200 and "/predict" in schema["paths"]


BAD_INPUT = [
    (b"{not json", 400, "request body is not valid JSON"),
    (b"", 422, "request body must be a JSON object"),
    (b"[1, 2]", 422, "request body must be a JSON object"),
    ({"texts": "w1 w2"}, 422, "texts: Input should be a valid list"),
    ({"texts": [1, 2]}, 422, "texts.0: Input should be a valid string"),
    ({"texts": []}, 422, "texts is empty; send at least one input"),
    ({}, 422, "send exactly one of texts, pairs, tokens (got none)"),
    (
        {"texts": ["a"], "pairs": [["a", "b"]]},
        422,
        "send exactly one of texts, pairs, tokens (got texts, pairs)",
    ),
    ({"text": ["w1"]}, 422, "unknown field 'text'; send one of texts, pairs, tokens"),
    ({"pairs": [["only one"]]}, 422, "pairs.0.1: Field required"),
    ({"texts": ["w1 " * 100]}, 422, "texts[0] has 300 characters; at most 200"),
    ({"texts": ["w1"] * 5}, 422, "texts has 5 inputs; at most 4 per request"),
    ({"texts": ["   "]}, 422, "texts[0] is empty"),
    (
        {"tokens": [["w1"]]},
        422,
        "tokens are for token classification; this model does sequence_classification",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "message"), BAD_INPUT, ids=[str(case[0])[:30] for case in BAD_INPUT]
)
def test_bad_input_gets_a_4xx_with_one_line(cls_server, body, status, message):
    got_status, got = post(cls_server, body)
    assert got_status == status
    assert got["error"].startswith(message) and "\n" not in got["error"]
    assert request("127.0.0.1", cls_server, "GET", "/health")[0] == 200  # and the server lives on


def test_ner_server_batches_refuses_overload_and_drains_on_sigterm(models):
    """One request waits up to 1 s for company (max_wait); meanwhile the bounded queue (2) fills."""
    port = free_port()
    process = start_server(
        models["ner"], port, "--max-queue", "2", "--max-wait-ms", "1000", "--max-batch-size", "8"
    )
    try:
        results: list = [None] * 4

        def send(index: int) -> None:
            results[index] = post(port, {"tokens": [["john", "smith", "walks", "the", "dogs"]]})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 200, 503, 503]
        assert all(body["error"].startswith("server busy") for status, body in results if status == 503)
        answer = next(body for status, body in results if status == 200)["predictions"][0]
        assert answer["tokens"] == ["john", "smith", "walks", "the", "dogs"] and len(answer["labels"]) == 5
        batching = request("127.0.0.1", port, "GET", "/metadata")[1]["batching"]
        assert batching["requests"] == 2 and batching["forwards"] == 1  # the two shared one forward

        # SIGTERM while a request waits in the batcher: it is answered, then the server exits 0.
        thread = threading.Thread(target=send, args=(0,))
        thread.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        thread.join()
        assert results[0][0] == 200 and len(results[0][1]["predictions"]) == 1
        assert process.wait(30) == 0
        assert "server stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()


# ---- the file predictor -------------------------------------------------------------------------


def test_predict_file_gives_the_engines_predictions_in_file_order(models, tmp_path, capsys):
    from serve.predict import main as predict_main

    texts = [f"w{i} " * (1 + (i * 7) % 13) for i in range(150)]  # lengths out of order: batches get sorted
    source = tmp_path / "in.tsv"
    source.write_text("id\tsentence\n" + "".join(f"{i}\t{text}\n" for i, text in enumerate(texts)))
    predict_main(
        [str(models["cls"]), str(source), "--out", str(tmp_path / "out.jsonl"), "--batch-size", "16"]
    )
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = Predictor(models["cls"]).predict(texts)  # one batch, same dtype choice
    assert [row["line"] for row in rows] == list(range(2, 152)) and [row["input"] for row in rows] == texts
    assert [row["label"] for row in rows] == [row["label"] for row in expected]
    assert [row["score"] for row in rows] == pytest.approx([row["score"] for row in expected], abs=0.01)

    # NER from JSONL word lists, as a TSV table.
    (tmp_path / "ner.jsonl").write_text(json.dumps({"tokens": ["john", "smith", "walks"]}) + "\n")
    predict_main([str(models["ner"]), str(tmp_path / "ner.jsonl"), "--out", str(tmp_path / "ner.tsv")])
    header, row = (tmp_path / "ner.tsv").read_text().splitlines()
    assert header == "line\ttext\tlabels\tspans" and row.startswith("1\tjohn smith walks\t")

    with pytest.raises(SystemExit) as stop:
        predict_main([str(models["cls"]), str(tmp_path / "ner.jsonl")])
    assert stop.value.code == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("has no text field 'sentence' or 'text' or 'content'; name the text column so")
    )


def test_load_test_point_counts_and_times_requests(cls_server):
    from benchmarks.load_test import run_point, table

    row = run_point(cls_server, 2, 12, 30, ["w1 w2 w3", "w4 w5"])
    assert row["requests"] == 12 and row["failures"] == {} and 0 < row["p50_ms"] <= row["p99_ms"]
    assert row["requests_per_s"] == pytest.approx(12 / row["seconds"], rel=0.05)
    assert "| on | 2 | 12 |" in table([{"batching": "on", **row}])


def test_an_unmerged_lora_adapter_dir_is_merged_at_load(tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = make_model_dir(tmp_path / "base", labels=["a", "b", "c"])
    model = get_peft_model(
        AutoModelForSequenceClassification.from_pretrained(base),
        LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]),
    )
    with torch.no_grad():  # a trained adapter: B is 0 at initialisation, which would merge to nothing
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                parameter.normal_()
    model.eval().save_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.save_pretrained(tmp_path / "model")
    with pytest.raises(InputError, match="holds a LoRA adapter without finetune.json"):
        Predictor(tmp_path / "model")
    info = {
        "task": "sequence_classification",
        "labels": ["a", "b", "c"],
        "max_len": 32,
        "method": "lora",
        "merged": False,
    }
    (tmp_path / "model" / "finetune.json").write_text(json.dumps(info))
    with torch.no_grad():
        expected = torch.softmax(model(**tokenizer(["w1 w2 w3"], return_tensors="pt")).logits, -1)[0]
    [got] = Predictor(tmp_path / "model", dtype="fp32").predict(["w1 w2 w3"])
    assert list(got["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)


def test_pair_models_take_pairs_and_single_text_models_texts():
    from serve.engine import ModelInfo
    from serve.server import Limits, PredictRequest, check_request

    pair_model = ModelInfo(task="sequence_classification", labels=["a", "b"], max_len=16, pair=True)
    assert check_request(PredictRequest(pairs=[["x", "y"]]), pair_model, Limits()) == [("x", "y")]
    with pytest.raises(ValueError, match=r"trained on sentence pairs; send pairs: \[\[a, b\], \.\.\.\]"):
        check_request(PredictRequest(texts=["x"]), pair_model, Limits())
    single = ModelInfo(task="regression", labels=[], max_len=16, pair=False)
    with pytest.raises(ValueError, match="trained on single texts, not pairs; send texts"):
        check_request(PredictRequest(pairs=[["x", "y"]]), single, Limits())
