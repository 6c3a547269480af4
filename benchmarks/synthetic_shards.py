"""A generated data dir (Contract 1) with the length distribution of BERT's pretraining data.

Throughput depends on how long the sequences are and how many tokens get masked, not on what the
tokens mean, so the benchmark needs no corpus: token ids are drawn Zipf-distributed over the
vocabulary (rank r has weight 1/r, as words in natural text), and lengths follow BERT's
``create_pretraining_data.py`` (Devlin et al. 2019): with probability ``short_seq_prob`` = 0.1 an
example's target length is uniform in 2..seq_len-3 tokens of text, otherwise the pair is filled to
the full seq_len-3; plus [CLS], [SEP], [SEP]. Segment A ends at a uniform point of the text, and
the NSP label is 0 or 1 with probability 1/2.

Shards are written with ``data_prep.shards.write_shard`` and listed in a manifest like the one
data_prep writes. The tokenizer dir is a word-level vocabulary of V entries: the trainer never
tokenizes, but it checks the manifest's sha256 of ``tokenizer/`` and reads the vocabulary size.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from data_prep.atomic import write_json_atomic
from data_prep.manifest import MANIFEST_NAME, SPECIAL_TOKENS, TOKENIZER_DIR, build_manifest
from data_prep.shards import ShardEntry, shard_name, write_shard

BERT_VOCAB_SIZE = 30522  # bert-base-uncased's WordPiece vocabulary
SHORT_SEQ_PROB = 0.1  # BERT's short_seq_prob
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL_TOKENS))  # special ids 0..4, as data_prep trains them
SPECIAL_IDS = {"pad": PAD, "unk": UNK, "cls": CLS, "sep": SEP, "mask": MASK}
PAIR_SPECIALS = 3  # [CLS] A [SEP] B [SEP]


def local_bert_tokenizer(vocabulary: list[str], max_len: int | None = None, *, wordpiece: bool = False):
    """A fast tokenizer with BERT's layout over ``vocabulary`` (which holds the special tokens), built
    here: nothing downloaded. ``wordpiece``: ``##x`` entries continue a word, behind BERT's lower-casing
    normalizer and punctuation-splitting pre-tokenizer; otherwise one id per whitespace-separated word.
    Single texts become ``[CLS] A [SEP]``, pairs ``[CLS] A [SEP] B [SEP]`` with token type ids 0/1."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {word: index for index, word in enumerate(vocabulary)}
    if wordpiece:
        tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
    else:
        tokenizer = Tokenizer(models.WordLevel(ids, unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        **({"model_max_length": max_len} if max_len else {}),
    )


def write_word_level_tokenizer(directory: Path, vocab_size: int, seq_len: int) -> None:
    """A Hugging Face tokenizer dir with BERT's special tokens at 0..4 and words w5..w{V-1}."""
    words = [f"w{index}" for index in range(len(SPECIAL_TOKENS), vocab_size)]
    local_bert_tokenizer([*SPECIAL_TOKENS, *words], seq_len).save_pretrained(str(directory))


def nsp_examples(
    rng: np.random.Generator, count: int, *, seq_len: int, vocab_size: int
) -> list[tuple[np.ndarray, int]]:
    """``count`` (ids, nsp_label) pairs laid out ``[CLS] A [SEP] B [SEP]``, ids uint16 or int32 as data_prep stores them."""
    max_text = seq_len - PAIR_SPECIALS
    short = rng.random(count) < SHORT_SEQ_PROB
    text_lengths = np.where(short, rng.integers(2, max_text + 1, size=count), max_text)
    first_special = len(SPECIAL_TOKENS)
    zipf = 1.0 / np.arange(1, vocab_size - first_special + 1)
    words = first_special + rng.choice(
        vocab_size - first_special, size=int(text_lengths.sum()), p=zipf / zipf.sum()
    )
    dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    examples, start = [], 0
    for length in text_lengths:
        text = words[start : start + length]
        start += length
        a_end = int(rng.integers(1, length))  # A and B each hold at least one token
        ids = np.concatenate([[CLS], text[:a_end], [SEP], text[a_end:], [SEP]]).astype(dtype)
        examples.append((ids, int(rng.integers(0, 2))))
    return examples


def write_synthetic_data_dir(
    root: Path,
    *,
    seq_len: int,
    vocab_size: int = BERT_VOCAB_SIZE,
    train_shards: int = 8,
    samples_per_shard: int = 256,
    seed: int = 0,
) -> Path:
    """Write a complete mlm+nsp data dir of ``train_shards`` equal shards (no valid split); returns ``root``."""
    if seq_len < PAIR_SPECIALS + 2:
        raise ValueError(
            f"seq_len={seq_len} cannot hold [CLS] A [SEP] B [SEP]; use at least {PAIR_SPECIALS + 2}"
        )
    root = Path(root)
    (root / "shards" / "train").mkdir(parents=True, exist_ok=True)
    write_word_level_tokenizer(root / TOKENIZER_DIR, vocab_size, seq_len)
    rng = np.random.default_rng(seed)
    entries: list[ShardEntry] = []
    for index in range(train_shards):
        examples = nsp_examples(rng, samples_per_shard, seq_len=seq_len, vocab_size=vocab_size)
        entries.append(write_shard(root, f"shards/train/{shard_name('synthetic', index)}", index, examples))
    manifest = build_manifest(
        root,
        objective="mlm+nsp",
        seq_len=seq_len,
        token_dtype=str(examples[0][0].dtype),
        vocab_size=vocab_size,
        special_ids=SPECIAL_IDS,
        shards={"train": [asdict(entry) for entry in entries]},
        samples_per_shard=samples_per_shard,
        prep_config={
            "synthetic": "benchmarks.synthetic_shards",
            "seed": seed,
            "short_seq_prob": SHORT_SEQ_PROB,
            "token_distribution": "zipf 1/rank",
        },
    )
    write_json_atomic(root / MANIFEST_NAME, manifest)
    return root
