"""The per-chunk work that runs in worker processes: clean, sample for the tokenizer, build
examples, write a shard. Each function reads and writes ``.work`` files and returns a small summary
for the driver; a chunk whose output already exists is skipped (resume).

Randomness is seeded from (seed, what it is for, chunk or document), never from the worker or rank
that happens to do the work.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_prep.cleaning import clean_document
from data_prep.config import PrepConfig
from data_prep.dedup import Shingler, exact_fingerprint
from data_prep.examples import Examples, TokenDoc, build_examples, pack
from data_prep.manifest import TOKENIZER_DIR
from data_prep.sentences import split_sentences
from data_prep.shards import ShardEntry, write_shard
from data_prep.sources import Chunk, Reject, read_piece
from data_prep.tokenizer import SentenceEncoder
from data_prep.workdir import WorkDir, load_arrays, load_json, save_arrays, save_json

KEPT = ("train", "valid")  # the decision of a kept document; anything else is a drop reason


@dataclass(frozen=True)
class Context:
    """What every task needs; small, pickled with each task."""

    config: PrepConfig
    out_dir: str
    key: str
    encoder: str = ""
    special_ids: dict[str, int] = field(default_factory=dict)
    token_dtype: str = "uint16"
    sample_fraction: float = 1.0

    @property
    def work(self) -> WorkDir:
        return WorkDir(Path(self.out_dir), self.key)


def document_uniform(seed: int, source_id: str) -> float:
    """A uniform [0, 1) number per document: the valid split is ``< valid_fraction``, by document."""
    digest = hashlib.blake2b(f"{seed}\0{source_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _seed_words(seed: int, *ids: int) -> list[int]:
    return [seed & 0xFFFFFFFFFFFFFFFF, *ids]


# -------------------------------------------------------------------------------------- clean


@dataclass
class CleanSummary:
    chunk: int
    nbytes: int
    docs_in: int = 0
    counts: Counter = field(default_factory=Counter)
    """Drops by reason, plus the repairs of ``report.REPAIRS`` (not drops)."""
    by_input: dict[int, Counter] = field(default_factory=dict)
    """Per input position: documents read (``in``) and drops by reason."""
    resumed: bool = False


_shinglers: dict[tuple, Shingler] = {}


def _shingler(config: PrepConfig) -> Shingler:
    near = config.clean.near_dup
    key = (near.num_perm, near.shingle_words)
    if key not in _shinglers:
        _shinglers[key] = Shingler(near)
    return _shinglers[key]


def clean_chunk(task: tuple[Context, Chunk]) -> CleanSummary:
    """Read, clean, split into sentences and fingerprint one chunk's documents."""
    context, chunk = task
    config, work = context.config, context.work
    meta_path = work.clean_meta(chunk.index)
    if meta_path.is_file():
        meta = load_json(meta_path)
        by_input = {int(position): Counter(counts) for position, counts in meta["by_input"].items()}
        return CleanSummary(
            chunk.index, chunk.nbytes, meta["docs_in"], Counter(meta["counts"]), by_input, resumed=True
        )
    near = config.clean.near_dup.enabled
    shingler = _shingler(config) if near else None
    summary = CleanSummary(chunk.index, chunk.nbytes)
    docs, texts, fingerprints, uniforms, sentence_counts, rejects = [], [], [], [], [], []
    inputs = []  # of each kept document
    for piece in chunk.pieces:
        tally = summary.by_input.setdefault(piece.input, Counter())
        for item in read_piece(piece, config.text.jsonl_field):
            summary.docs_in += 1
            tally["in"] += 1
            if isinstance(item, Reject):
                summary.counts[item.reason] += 1
                tally[item.reason] += 1
                rejects.append([item.source, item.line, item.reason, item.detail])
                continue
            if item.repaired:
                summary.counts["repaired_invalid_utf8"] += 1
            cleaned = clean_document(item.text, config.clean)
            sentences = split_sentences(cleaned.paragraphs) if not isinstance(cleaned, str) else []
            if not sentences:
                reason = cleaned if isinstance(cleaned, str) else "too_short"
                summary.counts[reason] += 1
                tally[reason] += 1
                rejects.append([item.source, item.line, reason, ""])
                continue
            if cleaned.fixed_mojibake:
                summary.counts["fixed_mojibake"] += 1
            if cleaned.terminal_escapes:
                summary.counts["terminal_escapes_removed"] += cleaned.terminal_escapes
            text = cleaned.text
            fingerprints.append(exact_fingerprint(text))
            texts.append(text)
            uniforms.append(document_uniform(config.seed, item.source_id))
            sentence_counts.append(len(sentences))
            docs.append([item.source_id, sentences])
            inputs.append(piece.input)
    save_json(work.clean_docs(chunk.index), {"docs": docs})
    if shingler is not None:
        save_arrays(work.clean_signatures(chunk.index), minhash=shingler.signatures(texts))
    save_json(
        meta_path,
        {  # last: its presence marks the chunk done
            "docs_in": summary.docs_in,
            "counts": dict(summary.counts),
            "by_input": {position: dict(counts) for position, counts in summary.by_input.items()},
            "sources": [source_id for source_id, _ in docs],
            "inputs": inputs,
            "fingerprints": fingerprints,
            "uniforms": uniforms,
            "sentence_counts": sentence_counts,
            "rejects": rejects,
        },
    )
    return summary


# ------------------------------------------------------------------------ tokenizer sample


def sample_chunk(task: tuple[Context, Chunk]) -> tuple[int, list[str]]:
    """The chunk's sentences chosen for tokenizer training: each sentence of a kept document is in
    with probability ``sample_fraction``, by a key drawn from (seed, chunk)."""
    context, chunk = task
    work = context.work
    docs = load_json(work.clean_docs(chunk.index))["docs"]
    decisions = load_json(work.decisions(chunk.index))
    keys = np.random.default_rng(_seed_words(context.config.seed, chunk.index)).random(
        sum(len(d[1]) for d in docs)
    )
    chosen, position = [], 0
    for (_, sentences), decision in zip(docs, decisions):
        if decision in KEPT:
            chosen.extend(s for s, key in zip(sentences, keys[position:]) if key < context.sample_fraction)
        position += len(sentences)
    return chunk.index, chosen


# -------------------------------------------------------------------------------- examples


@dataclass
class ExampleSummary:
    chunk: int
    nbytes: int
    train_examples: int = 0
    train_tokens: int = 0
    nsp_random: int = 0
    tokens_truncated: int = 0
    tokens_unpaired: int = 0
    valid_documents: int = 0
    tokens_by_input: dict[str, int] = field(default_factory=dict)
    """Tokens of the kept documents (train and valid, before packing), per input position."""
    resumed: bool = False


_encoders: dict[tuple[str, str], SentenceEncoder] = {}


def _encoder(context: Context) -> SentenceEncoder:
    key = (context.out_dir, context.encoder)
    if key not in _encoders:
        _encoders[key] = SentenceEncoder(
            Path(context.out_dir) / TOKENIZER_DIR, context.encoder, context.special_ids
        )
    return _encoders[key]


def tokenize_documents(encoder: SentenceEncoder, documents: list[list[str]]) -> list[TokenDoc]:
    """One encoder call for all sentences of all documents (one crossing into C++), split back."""
    ids = encoder.encode([s for doc in documents for s in doc])
    out, start = [], 0
    for doc in documents:
        out.append([sentence for sentence in ids[start : start + len(doc)] if sentence])
        start += len(doc)
    return out


def pack_documents(documents: list[TokenDoc], dtype: str) -> dict[str, np.ndarray]:
    """Documents as flat arrays: tokens, sentence lengths, sentences per document."""
    return {
        "tokens": np.array([t for doc in documents for s in doc for t in s], dtype=dtype),
        "sentence_lengths": np.array([len(s) for doc in documents for s in doc], dtype=np.int64),
        "document_sentences": np.array([len(doc) for doc in documents], dtype=np.int64),
    }


def unpack_documents(arrays: dict[str, np.ndarray]) -> list[TokenDoc]:
    tokens = arrays["tokens"].tolist()
    ends = np.cumsum(arrays["sentence_lengths"]).tolist()
    sentences = [tokens[end - length : end] for end, length in zip(ends, arrays["sentence_lengths"].tolist())]
    documents, start = [], 0
    for count in arrays["document_sentences"].tolist():
        documents.append(sentences[start : start + count])
        start += count
    return documents


def _build(context: Context, pool: list[TokenDoc], rng: random.Random) -> Examples:
    config, ids = context.config, context.special_ids
    return build_examples(
        pool, config.objective, config.seq_len, config.short_seq_prob, ids["cls"], ids["sep"], rng
    )


def example_chunk(task: tuple[Context, Chunk]) -> ExampleSummary:
    """Tokenize the chunk's kept documents; build its train examples; keep its valid documents
    (valid examples are built from all valid documents together, see ``build_valid_examples``)."""
    context, chunk = task
    config, work = context.config, context.work
    meta_path = work.examples_meta(chunk.index)
    if meta_path.is_file():
        return ExampleSummary(**load_json(meta_path), resumed=True)
    docs = load_json(work.clean_docs(chunk.index))["docs"]
    decisions = load_json(work.decisions(chunk.index))
    inputs = load_json(work.clean_meta(chunk.index))["inputs"]
    kept = [
        (sentences, decision, position)
        for (_, sentences), decision, position in zip(docs, decisions, inputs)
        if decision in KEPT
    ]
    tokenized = tokenize_documents(_encoder(context), [sentences for sentences, _, _ in kept])
    tokens_by_input: Counter = Counter()
    for doc, (_, _, position) in zip(tokenized, kept):
        tokens_by_input[str(position)] += sum(len(sentence) for sentence in doc)
    train_pool = [doc for doc, (_, decision, _) in zip(tokenized, kept) if decision == "train" and doc]
    valid_docs = [doc for doc, (_, decision, _) in zip(tokenized, kept) if decision == "valid" and doc]
    rng = random.Random(f"{config.seed}:examples:{chunk.index}")
    examples = _build(context, train_pool, rng)
    arrays = pack(examples, np.dtype(context.token_dtype))
    save_arrays(work.train_examples(chunk.index), **arrays)
    save_arrays(work.valid_documents(chunk.index), **pack_documents(valid_docs, context.token_dtype))
    summary = ExampleSummary(
        chunk.index,
        chunk.nbytes,
        len(examples.sequences),
        int(arrays["tokens"].size),
        int(sum(examples.nsp_labels)),
        examples.tokens_truncated,
        examples.tokens_unpaired,
        len(valid_docs),
        dict(tokens_by_input),
    )
    meta = {k: v for k, v in summary.__dict__.items() if k != "resumed"}
    save_json(meta_path, meta)
    return summary


def build_valid_examples(context: Context, chunks: list[int]) -> Examples:
    """Valid examples from all valid documents in canonical order: one pool, so a random B can come
    from any of them (a chunk holds too few valid documents for that)."""
    config, work = context.config, context.work
    pool: list[TokenDoc] = []
    for chunk in chunks:
        pool.extend(unpack_documents(load_arrays(work.valid_documents(chunk))))
    rng = random.Random(f"{config.seed}:examples:valid")
    examples = _build(context, pool, rng)
    save_arrays(work.valid_examples, **pack(examples, np.dtype(context.token_dtype)))
    return examples


# ---------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class ShardTask:
    """One shard: which slices of which stored example arrays go into it, in order."""

    split: str
    index: int
    path: str
    slices: tuple[tuple[str, int, int], ...]
    """(example file, first example, end example) in the split's canonical order."""


_loaded: dict[str, dict[str, np.ndarray]] = {}


def _examples_file(path: str) -> dict[str, np.ndarray]:
    """Consecutive shards mostly read the same chunk file: keep the last one loaded."""
    if path not in _loaded:
        _loaded.clear()
        _loaded[path] = load_arrays(Path(path))
    return _loaded[path]


def write_shard_task(task: tuple[Context, ShardTask]) -> ShardEntry:
    context, shard = task
    with_nsp = context.config.objective == "mlm+nsp"

    def samples():
        for path, start, end in shard.slices:
            arrays = _examples_file(path)
            offsets = arrays["offsets"]
            for k in range(start, end):
                label = int(arrays["nsp"][k]) if with_nsp else None
                yield arrays["tokens"][offsets[k] : offsets[k + 1]], label

    return write_shard(Path(context.out_dir), shard.path, shard.index, samples())
