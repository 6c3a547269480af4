"""The trained tokenizer: BERT's special ids, and the saved HF tokenizer loads offline and encodes
like the SentencePiece model it came from."""

import os

import pytest
import sentencepiece as spm

from data_prep.cleaning import clean_document
from data_prep.config import CleanConfig, TokenizerConfig
from data_prep.pydocs import iter_pydocs
from data_prep.sentences import split_sentences
from data_prep.tokenizer import (
    SPM_FILE,
    SentenceEncoder,
    TokenizerError,
    reuse_tokenizer,
    save_trained_tokenizer,
    train_sentencepiece,
)

os.environ["HF_HUB_OFFLINE"] = "1"

SAMPLES = [
    "Return the JSON representation of the object.",
    "Naïve café owners façade — “quoted” text, 東京 and 😀 emoji!",
    "  leading and   repeated   spaces\tand a tab ",
    "x = json.loads('{\"a\": [1, 2.5e-3, null]}')  # round trip",
    "ＦＵＬＬ width and ﬁ ligature (NFKC in both)",
    "UPPER lower MiXeD 12345 67.89",
]


@pytest.fixture(scope="module")
def sentences():
    out = []
    for doc in iter_pydocs(include=["json", "email", "http"]):
        cleaned = clean_document(doc.text, CleanConfig())
        if not isinstance(cleaned, str):
            out.extend(split_sentences(cleaned.paragraphs))
    return out


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def trained(request, sentences, tmp_path_factory):
    config = TokenizerConfig(vocab_size=600, model_type=request.param)
    directory = tmp_path_factory.mktemp(request.param) / "tokenizer"
    model = train_sentencepiece(sentences, config, seed=1)
    info = save_trained_tokenizer(model, directory, seq_len=64)
    return directory, info, model


def test_special_tokens_sit_at_bert_ids(trained):
    directory, info, _ = trained
    processor = spm.SentencePieceProcessor(model_file=str(directory / SPM_FILE))
    assert [processor.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert info.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert info.vocab_size == processor.get_piece_size() <= 600


def test_hf_tokenizer_loads_offline_and_matches_sentencepiece(trained, sentences):
    from transformers import AutoTokenizer

    directory, info, _ = trained
    hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    processor = spm.SentencePieceProcessor(model_file=str(directory / SPM_FILE))
    for text in SAMPLES:
        assert hf(text, add_special_tokens=False)["input_ids"] == processor.encode(text), text
    corpus = sentences[:3000]
    same = sum(
        hf(t, add_special_tokens=False)["input_ids"] == ids
        for t, ids in zip(corpus, processor.encode(corpus))
    )
    assert same / len(corpus) > 0.998  # the rest: exact Viterbi ties, broken differently (see tokenizer.py)
    assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert hf.model_max_length == 64 and len(hf) == info.vocab_size
    pair = hf("First part.", "Second part.")
    a, b = processor.encode("First part."), processor.encode("Second part.")
    assert pair["input_ids"] == [2, *a, 3, *b, 3]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert hf.decode(processor.encode(SAMPLES[0])) == SAMPLES[0]


def test_encoders_never_turn_text_into_structure_tokens(trained):
    directory, info, _ = trained
    text = "the [CLS] A [SEP] B [SEP] layout with [MASK]"
    for encoder in ("sentencepiece", "hf"):
        ids = SentenceEncoder(directory, encoder, info.special_ids).encode([text])[0]
        assert len(ids) > 10 and not {0, 2, 3, 4} & set(ids), encoder


def test_training_is_deterministic(sentences, trained):
    directory, info, model = trained
    model_type = "bpe" if "bpe" in directory.parent.name else "unigram"
    assert (
        train_sentencepiece(sentences, TokenizerConfig(vocab_size=600, model_type=model_type), seed=1)
        == model
    )


def test_reuse_copies_a_tokenizer_and_refuses_one_without_bert_tokens(trained, tmp_path):
    directory, info, _ = trained
    (directory.parent / "model.safetensors").write_bytes(b"weights are not copied")
    (directory / "model.safetensors").write_bytes(b"weights are not copied")
    reused = reuse_tokenizer(directory, tmp_path / "copy")
    assert (
        reused.special_ids == info.special_ids
        and reused.vocab_size == info.vocab_size
        and reused.encoder == "hf"
    )
    assert not (tmp_path / "copy" / "model.safetensors").exists()
    (directory / "model.safetensors").unlink()

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    plain = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=plain, unk_token="[UNK]").save_pretrained(
        str(tmp_path / "plain")
    )
    with pytest.raises(TokenizerError, match="lacks the cls/sep/pad/mask token"):
        reuse_tokenizer(tmp_path / "plain", tmp_path / "copy2")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a loadable Hugging Face tokenizer dir"):
        reuse_tokenizer(tmp_path / "junk", tmp_path / "copy3")
