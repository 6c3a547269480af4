"""The prep stage's one typed config, loaded from ``configs/prep/*.yaml`` plus ``key=value`` overrides.

Key names that other stages rely on are fixed by docs/contracts.md: ``inputs``, ``out_dir``, ``seq_len``,
``objective``, ``tokenizer.vocab_size`` / ``tokenizer.path``, ``valid_fraction``,
``samples_per_shard``, ``workers``, ``seed``. Everything here is documented by attribute docstrings;
the YAML presets mirror them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import Field

from data_prep.typed_config import ConfigError, Section, StrList, load_config

PYDOCS_INPUT = "pydocs"


class TextConfig(Section):
    """How raw files are split into documents."""

    txt_mode: Literal["file", "paragraph", "line"] = "paragraph"
    """``.txt`` files: one document per ``file``, per blank-line-separated ``paragraph``, or per ``line``."""
    jsonl_field: str = "text"
    """``.jsonl`` (also ``.jsonl.gz``, ``.jsonl.zst``): the field of each JSON object that holds the text."""
    missing_inputs: Literal["error", "skip"] = "error"
    """A path or glob that matches nothing: ``error`` stops before any work; ``skip`` counts it as
    dropped (reason ``missing_path``) in report.json and rejects.jsonl and goes on."""


class NearDupConfig(Section):
    """Near-duplicate removal with MinHash LSH (datasketch)."""

    enabled: bool = True
    """Drop documents whose shingle Jaccard similarity to an earlier kept document is high."""
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    """Estimated Jaccard similarity at or above which a later document is dropped as a near duplicate."""
    num_perm: int = Field(128, ge=16, le=1024)
    """MinHash permutations; more is more precise and slower."""
    shingle_words: int = Field(5, ge=1, le=32)
    """Words per shingle (lower-cased, whitespace-split; in scripts written without spaces, such as
    Chinese and Japanese, each character is a word, so shingles there are character n-grams)."""


class CleanConfig(Section):
    """Normalisation and filters; each drop is counted by reason in report.json."""

    min_chars: int = Field(200, ge=0)
    """Documents shorter than this after cleaning are dropped (``too_short``)."""
    max_chars: int = Field(1_000_000, ge=1)
    """Documents longer than this, before or after cleaning, are dropped (``too_long``); checked
    before any expensive step, so a single 100 MB line costs nothing."""
    min_alpha_ratio: float = Field(0.5, ge=0.0, le=1.0)
    """Minimum share of letters among non-space characters; lower is treated as non-text junk
    (tables of numbers, base64, binary noise) and dropped (``junk``)."""
    unwrap_lines: bool = True
    """Join the hard-wrapped lines of a paragraph into one line before sentence splitting (paragraph
    breaks, i.e. blank lines, are kept). Turn off for one-sentence-per-line input."""
    fix_mojibake: bool = True
    """Repair mojibake with ftfy (only on text that is not pure ASCII, which cannot hold any)."""
    dedup_exact: bool = True
    """Drop documents whose cleaned text is identical to an earlier one (``duplicate_exact``)."""
    near_dup: NearDupConfig = NearDupConfig()
    """Near-duplicate removal (``duplicate_near``)."""
    dedup_memory_mb: int = Field(256, ge=1)
    """Memory for the dedup index on rank 0 (exact fingerprints, LSH band keys, kept signatures;
    ~2.9 kB per kept document with near_dup, 130 B without). Up to this it is kept in memory;
    beyond it, it moves to an SQLite file in ``out_dir/.work`` (~1 kB of disk per kept document)
    read through a page cache of this size, so memory stops growing with the corpus: at most about
    twice this (the dicts when they move, then the cache). Deciding costs ~5x the CPU from then on.
    Decisions do not depend on it."""


class TokenizerConfig(Section):
    """Train a SentencePiece tokenizer, or reuse a local Hugging Face tokenizer directory."""

    path: str | None = None
    """A local HF tokenizer dir to reuse instead of training (copied to <out_dir>/tokenizer)."""
    vocab_size: int = Field(8000, ge=64, le=1_000_000)
    """Vocabulary size to train (a soft limit: a small corpus may give fewer pieces)."""
    model_type: Literal["unigram", "bpe"] = "unigram"
    """SentencePiece algorithm."""
    character_coverage: float = Field(0.9995, gt=0.0, le=1.0)
    """Share of characters covered by the vocabulary; the rest become byte pieces or [UNK].
    SentencePiece's advice: 0.9995 for text with a large character set (Chinese, Japanese), 1.0 for
    small alphabets (English and other Latin, Cyrillic...)."""
    normalization: Literal["nfkc", "none"] = "nfkc"
    """What the tokenizer does to text before splitting it (in data_prep and in the exported HF
    tokenizer alike): ``nfkc`` is SentencePiece's ``nmt_nfkc`` (NFKC, so full-width "，！？ＡＢ１"
    become ",!?AB1", plus whitespace clean-up); ``none`` keeps the cleaned text as it is (NFC, as
    cleaning leaves it), for corpora that keep full-width punctuation distinct."""
    byte_fallback: bool = True
    """Spell uncovered characters as UTF-8 byte pieces instead of [UNK]."""
    split_ideographs: bool = False
    """Every Han (CJK ideograph) character a piece of its own, as in Google's Chinese BERT: the
    vocabulary then holds no multi-character Han pieces (nor a Han piece with the word-start mark),
    so the running text of pretraining and a character-per-line NER set meet the same pieces.
    Latin and other scripts still get subwords; the text itself is not changed (no spaces added)."""
    sample_sentences: int = Field(1_000_000, ge=1)
    """Train on at most this many sentences, a uniform sample of the kept documents."""
    num_threads: int = Field(2, ge=1, le=256)
    """SentencePiece trainer threads. Fixed here, not taken from ``workers``, because the unigram
    trainer's float sums depend on it: the same value gives the same model."""


class PydocsConfig(Section):
    """The embedded corpus ``pydocs``: docstrings of the running Python environment."""

    include: list[str] = []
    """Module-name globs to keep (empty = all); a pattern also matches the submodules of what it
    matches (``json`` keeps ``json`` and ``json.decoder``)."""
    exclude: list[str] = []
    """Module-name globs to leave out (e.g. modules held out for a downstream task)."""
    max_docs: int | None = Field(None, ge=1)
    """Stop after this many documents (in the corpus's canonical order)."""


class PrepConfig(Section):
    """``python -m data_prep --config configs/prep/NAME.yaml [key=value ...]``."""

    inputs: StrList = Field(min_length=1)
    """Files, folders (searched recursively), globs (``**`` allowed) of .txt / .jsonl (either may end
    in .gz or .zst), or the word ``pydocs``. Relative paths are relative to the current directory."""
    out_dir: str
    """The prepared data dir (contract 1 in docs/contracts.md). Must be new, empty or an earlier output."""
    seq_len: int = Field(128, ge=8, le=65536)
    """Maximum tokens per example, [CLS] and [SEP]s included."""
    objective: Literal["mlm+nsp", "mlm"] = "mlm+nsp"
    """``mlm+nsp``: sentence pairs with a next-sentence label (BERT); ``mlm``: full segments, no pairs."""
    short_seq_prob: float = Field(0.1, ge=0.0, le=1.0)
    """Probability of a shorter target length for a document's examples (BERT's short_seq_prob)."""
    valid_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    """Share of documents held out for the valid split (decided per document by a seeded hash)."""
    samples_per_shard: int = Field(8192, ge=1)
    """Examples per train shard; every train shard holds exactly this many, the remainder is dropped."""
    shard_prefix: str = Field("pretrain", pattern=r"^[A-Za-z0-9_-]+$")
    """Shard file names: shards/<split>/<prefix>-NNNNNN.tar."""
    chunk_mb: float = Field(4.0, gt=0.0)
    """Documents are processed in chunks of about this many MB of input: the unit of parallelism and
    of resume. NSP's random B segments come from the same chunk, so results depend on this (and on
    ``seed``), never on ``workers`` or MPI ranks."""
    workers: int = Field(1, ge=1, le=1024)
    """Processes per node (per MPI rank under mpirun)."""
    seed: int = 12345
    """Seeds every random choice, together with the chunk or document it is made for."""
    progress: bool = True
    """Show tqdm progress bars (on a terminal)."""
    text: TextConfig = TextConfig()
    clean: CleanConfig = CleanConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    pydocs: PydocsConfig = PydocsConfig()


def check_config(config: PrepConfig) -> PrepConfig:
    """Cross-field checks that pydantic's per-field types cannot express; one-line ``ConfigError``s."""
    if config.tokenizer.path is not None and not Path(config.tokenizer.path).is_dir():
        raise ConfigError(
            f"config key 'tokenizer.path' = {config.tokenizer.path!r}: no such directory "
            "(give a local Hugging Face tokenizer dir, or drop the key to train one)"
        )
    return config


def load_prep_config(path: str | Path | None, overrides: Iterable[str] = ()) -> PrepConfig:
    """Load, validate and cross-check a prep config (raises ``ConfigError`` with one line)."""
    return check_config(load_config(PrepConfig, path, overrides))
