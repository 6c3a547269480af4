"""Chinese through data_prep (issue 17): terminal escapes removed whole, hard wraps joined without
inventing spaces between CJK characters, near duplicates found by character shingles, sentences
split at 。！？ with their closing quotes, and the exported tokenizer round-tripping Chinese exactly.

The corpus is generated here from jieba's dictionary (an installed package, no network): the noise
of text that went through Unix tools (ANSI colour codes, hard wraps at 36 characters) and one long
document planted again at the end with a single character changed."""

import json
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from benchmarks.corpus import add_noise, chinese_words, document
from data_prep.cleaning import clean_document
from data_prep.config import CleanConfig, NearDupConfig, TokenizerConfig, load_prep_config
from data_prep.dedup import DuplicateFilter, Shingler, exact_fingerprint
from data_prep.manifest import TOKENS_EXT, load_manifest, load_tokens, tar_samples
from data_prep.pipeline import prepare
from data_prep.sentences import split_sentences
from data_prep.tokenizer import decoder_for, save_trained_tokenizer, train_sentencepiece

os.environ["HF_HUB_OFFLINE"] = "1"
ESCAPE_FRAGMENT = re.compile(r"\[[0-9;]*m")  # what is left of ESC[33m when only the ESC goes
HAN = "\u4e00-\u9fff"
SPACE_IN_HAN = re.compile(f"(?<=[{HAN}]) (?=[{HAN}])")
WORDS = chinese_words()


def zh_texts(seed: int = 0, docs: int = 50) -> list[str]:
    """``docs`` noisy documents of 0.5-2 kB, then document 0 again with one character changed."""
    rng = np.random.default_rng(seed)
    originals = [document(WORDS, rng, int(rng.integers(500, 2000))) for _ in range(docs)]
    long_one = document(WORDS, rng, 6000)  # ~2,000 characters
    middle = len(long_one) // 2 + [ch.isalpha() for ch in long_one[len(long_one) // 2 :]].index(True)
    planted = long_one[:middle] + ("变" if long_one[middle] != "变" else "化") + long_one[middle + 1 :]
    return [add_noise(text, rng) for text in [long_one, *originals, planted]]


def measure(out: Path) -> dict:
    """Per issue 17's defects, measured in the shards: escape fragments, spaces between Han
    characters per 1,000 Han characters, and the near duplicates the report caught. Segments A and B
    are decoded apart: each starts with SentencePiece's word-start mark, which decodes as a space."""
    decoder = decoder_for(out / "tokenizer")
    manifest = load_manifest(out)
    boundaries = {manifest["tokenizer"]["special_ids"][name] for name in ("cls", "sep")}
    texts = []
    for split in ("train", "valid"):
        for entry in manifest["splits"][split]["shards"]:
            path = out / entry["path"]
            for _, members in tar_samples(path.read_bytes(), path.name):
                segment: list[int] = []
                for token in [*load_tokens(members[TOKENS_EXT]).tolist(), next(iter(boundaries))]:
                    if token in boundaries:
                        texts.append(decoder.decode(segment))
                        segment = []
                    else:
                        segment.append(token)
    text = "\n".join(texts)
    han = len(re.findall(f"[{HAN}]", text))
    report = json.loads((out / "report.json").read_text())
    return {
        "escape_fragments": len(ESCAPE_FRAGMENT.findall(text)),
        "han_spaces_per_1000": round(1000 * len(SPACE_IN_HAN.findall(text)) / max(han, 1), 2),
        "near_duplicates": report["duplicates"]["near"],
        "terminal_escapes_removed": report["repairs"].get("terminal_escapes_removed", 0),
    }


def prep_config(corpus: Path, out: Path, *overrides: str):
    base = [
        f"inputs=[{corpus}]",
        f"out_dir={out}",
        "seq_len=64",
        "tokenizer.vocab_size=3000",
        "samples_per_shard=50",
        "valid_fraction=0.1",
        "clean.min_chars=50",
        "progress=false",
    ]
    return load_prep_config(None, [*base, *overrides])


@pytest.fixture(scope="module")
def zh_prepared(tmp_path_factory):
    directory = tmp_path_factory.mktemp("zh")
    texts = zh_texts()
    corpus = directory / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    out = directory / "data"
    prepare(prep_config(corpus, out))
    return out, texts


def test_chinese_corpus_defects_are_gone_from_the_shards(zh_prepared):
    out, texts = zh_prepared
    planted_escapes = sum(t.count("\x1b[") for t in texts)
    assert planted_escapes > 20 and sum(t.count("\n") for t in texts) > 1000  # the corpus has the noise
    found = measure(out)
    assert found == {
        "escape_fragments": 0,
        "han_spaces_per_1000": 0.0,
        "near_duplicates": 1,
        "terminal_escapes_removed": planted_escapes,
    }


def test_escape_sequences_go_whole_and_are_counted():
    cleaned = clean_document("\x1b[1;31m错误\x1b[m：文件\x1b[33m不存在\x1b[0m。", CleanConfig(min_chars=1))
    assert cleaned.paragraphs == ("错误：文件不存在。",) and cleaned.terminal_escapes == 4
    english = clean_document("plain \x1b[32mgreen\x1b[m text", CleanConfig(min_chars=1))
    assert english.paragraphs == ("plain green text",) and english.terminal_escapes == 2


def test_hard_wraps_join_by_script():
    config = CleanConfig(min_chars=1)
    wrapped = "这是一个很长的\n句子，他说：“\n你好。”\nThen English\nwords, 그리고\n한국어, and 日本語の\nテキスト。"
    assert clean_document(wrapped, config).paragraphs == (
        "这是一个很长的句子，他说：“你好。” Then English words, 그리고 한국어, and 日本語のテキスト。",
    )
    assert clean_document("Привет\nмир\nκαλή\nμέρα", config).paragraphs == ("Привет мир καλή μέρα",)


def test_near_duplicate_with_one_character_changed_is_found():
    config = NearDupConfig()
    cleaned = [clean_document(t, CleanConfig()).text for t in zh_texts(seed=3, docs=0)]
    assert sum(a != b for a, b in zip(*cleaned)) == 1 and len(cleaned[0]) > 1500
    signatures = Shingler(config).signatures(cleaned)
    assert np.mean(signatures[0] == signatures[1]) > 0.95  # ~5 of ~2,000 character 5-grams differ
    decisions = DuplicateFilter(exact=True, near=config).check_chunk(
        [exact_fingerprint(t) for t in cleaned], signatures
    )
    assert decisions == [None, "duplicate_near"]


def test_sentences_split_at_cjk_end_punctuation_with_closing_quotes():
    paragraphs = ["他问：“是吗？”我说：“是。”然后走了。日本語の文です！「引用です。」最後？（注释。）完"]
    assert split_sentences(paragraphs) == [
        "他问：“是吗？”",
        "我说：“是。”",
        "然后走了。",
        "日本語の文です！",
        "「引用です。」",
        "最後？",
        "（注释。）",
        "完",
    ]


def test_exported_tokenizer_round_trips_normalised_chinese(zh_prepared):
    from transformers import AutoTokenizer

    out, texts = zh_prepared
    hf = AutoTokenizer.from_pretrained(str(out / "tokenizer"), local_files_only=True)
    sentences = split_sentences(clean_document(texts[1], CleanConfig()).paragraphs)[:20]
    rare = "生僻字𠀀𪚥龘，混排 GPU 与 Python 代码：x = 1；全角ＡＢＣ１２３！"  # byte fallback, NFKC
    for sentence in [*sentences, rare]:
        normalised = unicodedata.normalize("NFKC", sentence)
        ids = hf(sentence)["input_ids"]
        assert hf.unk_token_id not in ids
        assert hf.decode(ids, skip_special_tokens=True) == normalised
    assert hf.decode(hf("全角，标点！")["input_ids"], skip_special_tokens=True) == "全角,标点!"


def test_normalization_none_keeps_full_width_punctuation(tmp_path):
    from transformers import AutoTokenizer

    clean = CleanConfig(min_chars=1)
    sentences = [
        s for t in zh_texts(seed=5, docs=30) for s in split_sentences(clean_document(t, clean).paragraphs)
    ]
    config = TokenizerConfig(vocab_size=2500, normalization="none")
    save_trained_tokenizer(train_sentencepiece(sentences, config, seed=1), tmp_path, seq_len=64)
    hf = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    for sentence in [*sentences[:20], "全角，标点！ＡＢＣ１２３𠀀"]:
        assert hf.decode(hf(sentence)["input_ids"], skip_special_tokens=True) == sentence


def test_split_ideographs_makes_every_han_character_a_piece_and_keeps_the_text(tmp_path):
    """Without the option the vocabulary learns multi-character Han words (the check can fail); with
    it, none, and a Han character encodes alike in running text and alone, as a NER set has it."""
    from transformers import AutoTokenizer

    clean = CleanConfig(min_chars=1)
    sentences = [
        s for t in zh_texts(seed=6, docs=30) for s in split_sentences(clean_document(t, clean).paragraphs)
    ]
    han = re.compile(f"[{HAN}]")
    for split, directory in ((False, tmp_path / "words"), (True, tmp_path / "characters")):
        config = TokenizerConfig(vocab_size=2500, split_ideographs=split)
        save_trained_tokenizer(train_sentencepiece(sentences, config, seed=1), directory, seq_len=64)
        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        multi = [  # several Han characters, or one joined to the word-start mark
            piece
            for piece in hf.get_vocab()
            if len(han.findall(piece)) > 1 or han.match(piece.lstrip("▁")) and piece[0] == "▁"
        ]
        if not split:
            assert len(multi) > 100  # words of the generated text
            continue
        assert multi == []
        text = "中国人民在北京 GPU 与 Python，全角ＡＢＣ𠀀"
        pieces = hf.tokenize(text)
        assert pieces[:8] == ["▁", "中", "国", "人", "民", "在", "北", "京"]
        assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == unicodedata.normalize(
            "NFKC", text
        )
        assert [hf.tokenize(character) for character in "中国"] == [["▁", "中"], ["▁", "国"]]


def test_finetuning_reads_and_truncates_chinese_like_any_text(zh_prepared, tmp_path):
    from transformers import AutoTokenizer

    from finetune.data import class_ids, encode, read_table

    out, texts = zh_prepared
    rows = [
        {"text": t.replace("\n", "")[:80], "label": "正面" if i % 2 else "负面"}
        for i, t in enumerate(texts[:20])
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    table = read_table(tmp_path / "train.jsonl", "train_file", ["text"], "label")
    hf = AutoTokenizer.from_pretrained(str(out / "tokenizer"), local_files_only=True)
    encoded = encode(table, hf, class_ids(table, sorted(set(table.labels))), max_len=16)
    assert all(
        len(ids) == 16 and ids[0] == hf.cls_token_id and ids[-1] == hf.sep_token_id
        for ids in encoded.input_ids
    )
    assert hf.unk_token_id not in {i for ids in encoded.input_ids for i in ids}
    assert encoded.labels.tolist() == [1 if r["label"] == "负面" else 0 for r in rows]  # sorted: 正面 < 负面
