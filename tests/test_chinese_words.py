"""Chinese words in fine-tuning: a Han character is a word, as Chinese NER corpora label them. A raw
text sent to the server or to predict for token classification is split that way (it was split at
spaces only, so a Chinese sentence was one word with one label), encoded as fine-tuning encodes its
training words, and entity spans are joined back without spaces. Augmentation swaps, deletes and
refills characters (a Chinese row was one "word": swap and delete left it as it was, and mlm_fill
replaced the whole sentence by one sampled token, label kept).

The tokenizer is this project's own export (data_prep's SentencePiece training and HF conversion)
over generated Chinese text (jieba's dictionary, no network)."""

import json
import os

import numpy as np
import pytest

from benchmarks.corpus import chinese_words, document
from data_prep.config import TokenizerConfig
from data_prep.tokenizer import save_trained_tokenizer, train_sentencepiece
from finetune.augment import MlmFiller, delete_words, swap_words
from finetune.tokens import (
    IGNORE,
    TokenTable,
    encode_tokens,
    join_words,
    split_words,
    tag_vocabulary,
)
from pretrain.config import resolve_model_config_path
from pretrain.model import bert_config_from_preset
from serve.engine import Predictor

os.environ["HF_HUB_OFFLINE"] = "1"
SENTENCE = "张伟在北京的华为公司工作。"
TAGS = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O", "O"]


@pytest.fixture(scope="module")
def zh_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    rng = np.random.default_rng(0)
    words = chinese_words()
    # the sentence is in the corpus, so each of its characters is a piece (no byte fallback)
    sentences = [document(words, rng, 300) for _ in range(60)] + [SENTENCE] * 30
    directory = tmp_path_factory.mktemp("zh_tokenizer")
    config = TokenizerConfig(vocab_size=3000)
    save_trained_tokenizer(train_sentencepiece(sentences, config, seed=1), directory, seq_len=64)
    return directory, AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def test_text_is_split_a_han_character_at_a_time_and_joined_back_without_spaces():
    assert split_words(SENTENCE) == list(SENTENCE)
    assert split_words("张伟\u3000在Apple工作, New York") == [
        "张",
        "伟",
        "在",
        "Apple",
        "工",
        "作",
        ",",
        "New",
        "York",
    ]
    assert join_words(list("北京的华为")) == "北京的华为"
    assert join_words(["New", "York"]) == "New York" and join_words(["在", "Apple", "公"]) == "在 Apple 公"


def test_serving_encodes_and_splits_chinese_as_fine_tuning_does(zh_tokenizer, tmp_path):
    import torch
    from transformers import BertForTokenClassification

    directory, hf = zh_tokenizer
    table = TokenTable(source="test", words=[split_words(SENTENCE)], tags=[TAGS], lines=[1])
    labels = tag_vocabulary(table)
    data, _ = encode_tokens(table, hf, labels, max_len=64)

    config = bert_config_from_preset(resolve_model_config_path("tiny"), len(hf), {"pad": hf.pad_token_id}, 64)
    config.update({"num_labels": len(labels), "id2label": dict(enumerate(labels))})
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    BertForTokenClassification(config).save_pretrained(model_dir)
    hf.save_pretrained(model_dir)
    (model_dir / "finetune.json").write_text(
        json.dumps(
            {"task": "token_classification", "labels": labels, "max_len": 64, "text_columns": ["tokens"]}
        )
    )
    predictor = Predictor(model_dir, dtype="fp32")
    # a raw text is split into characters and encoded as fine-tuning encodes its words
    batch, word_ids = predictor._encode([split_words(SENTENCE)])
    assert batch["input_ids"][0].tolist() == data.input_ids[0]
    tagged = [p for p, word in enumerate(word_ids[0]) if word is not None and word not in word_ids[0][:p]]
    assert tagged == [p for p, label in enumerate(data.labels[0]) if label != IGNORE]
    [result] = predictor.predict([SENTENCE])
    assert result["tokens"] == list(SENTENCE) and result["truncated_words"] == 0
    # spans read as the text does: "北京", not "北 京"
    rows = np.full((len(word_ids[0]), len(labels)), -10.0, dtype=np.float32)
    for position, tag in zip(tagged, TAGS):
        rows[position, labels.index(tag)] = 10.0
    spans = predictor._tagging(list(SENTENCE), word_ids[0], rows)["spans"]
    assert [(span["label"], span["text"]) for span in spans] == [
        ("PER", "张伟"),
        ("LOC", "北京"),
        ("ORG", "华为公司"),
    ]


def test_augmentation_swaps_deletes_and_refills_characters(zh_tokenizer, tmp_path):
    import torch
    from transformers import BertForMaskedLM

    directory, hf = zh_tokenizer
    rng = np.random.default_rng(0)
    swapped = swap_words(SENTENCE, 0.3, rng)
    assert swapped != SENTENCE and sorted(swapped) == sorted(SENTENCE)
    shorter = delete_words(SENTENCE, 0.3, rng)
    remaining = iter(SENTENCE)
    assert len(shorter) == len(SENTENCE) - 4 and all(
        char in remaining for char in shorter
    )  # 4 dropped, order kept

    config = bert_config_from_preset(resolve_model_config_path("tiny"), len(hf), {"pad": hf.pad_token_id}, 64)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(tmp_path / "base")
    texts = [SENTENCE, "今天天气很好，我们去公园散步。", "这部电影非常精彩。"]
    filled = MlmFiller(tmp_path / "base", hf, temperature=1.0).fill(texts, 0.3, rng)
    for text, out in zip(texts, filled):
        # round(0.3 x length) characters refilled, each by one Han character; the rest in place
        changed = [(a, b) for a, b in zip(text, out) if a != b]
        assert len(out) == len(text) and 0 < len(changed) <= round(0.3 * len(text)), (text, out)
        assert all(b.isalpha() for _, b in changed) and " " not in out
