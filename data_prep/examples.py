"""Training examples from tokenized documents: BERT's sentence pairs (mlm+nsp) or full segments (mlm).

``mlm+nsp`` follows ``create_instances_from_document`` and ``truncate_seq_pair`` in Google's
create_pretraining_data.py (github.com/google-research/bert): fill a chunk of sentences up to a
target length (``max_num_tokens``, or with probability ``short_seq_prob`` a random shorter one, drawn
once per document as there), cut it at a random sentence boundary into A and B, and half the time
(always when the chunk is one sentence) replace B with text from a random other document, giving
back the unused sentences; then trim the longer of A and B one token at a time from a random end.

Differences, each deliberate:
- the random document comes from the same pool (the chunk's train documents, or all valid
  documents), as in NVIDIA's sharded implementation, so that chunks stay independent;
- a pool with one document cannot give a random B: B is then the actual continuation (one more
  sentence is taken when the chunk has one), and a lone last sentence with nothing to pair is
  dropped (counted as unpaired tokens);
- a "sentence" longer than a whole example (a table or a code block) is first cut into pieces of
  ``max_num_tokens``, so it is not truncated away almost entirely;
- masking is not done here: the trainer masks dynamically (RoBERTa), so there is no dupe_factor.

``mlm`` packs whole sentences into ``[CLS] text [SEP]`` up to the same target, nothing truncated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

TokenDoc = list[list[int]]  # a document: its sentences as token ids


@dataclass
class Examples:
    """Examples of one pool, as built; ``pack`` turns them into arrays for storing."""

    sequences: list[list[int]] = field(default_factory=list)
    nsp_labels: list[int] = field(default_factory=list)
    tokens_truncated: int = 0
    tokens_unpaired: int = 0


def split_long_sentences(sentences: TokenDoc, limit: int) -> TokenDoc:
    """Cut sentences longer than ``limit`` tokens into pieces of ``limit``."""
    if all(len(s) <= limit for s in sentences):
        return sentences
    pieces = []
    for sentence in sentences:
        pieces.extend(sentence[i : i + limit] for i in range(0, len(sentence), limit))
    return pieces


def _truncate_pair(
    a: list[int], b: list[int], max_num_tokens: int, rng: random.Random
) -> tuple[list[int], list[int], int]:
    """BERT's truncate_seq_pair with index arithmetic instead of repeated ``del``."""
    a_start, a_end, b_start, b_end = 0, len(a), 0, len(b)
    removed = 0
    while (a_end - a_start) + (b_end - b_start) > max_num_tokens:
        removed += 1
        if a_end - a_start > b_end - b_start:
            if rng.random() < 0.5:
                a_start += 1
            else:
                a_end -= 1
        elif rng.random() < 0.5:
            b_start += 1
        else:
            b_end -= 1
    return a[a_start:a_end], b[b_start:b_end], removed


def nsp_examples_from_document(
    pool: list[TokenDoc],
    index: int,
    seq_len: int,
    short_seq_prob: float,
    cls_id: int,
    sep_id: int,
    rng: random.Random,
    out: Examples,
) -> None:
    """Append the examples of ``pool[index]`` to ``out`` (create_instances_from_document); the
    pool's sentences must be at most ``seq_len - 3`` tokens (``split_long_sentences``)."""
    max_num_tokens = seq_len - 3  # [CLS] A [SEP] B [SEP]
    document = pool[index]
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    current_chunk: TokenDoc = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if len(current_chunk) == 1 and len(pool) == 1 and i < len(document) - 1:
                i += 1  # no other document to draw a random B from: take one more sentence for B
                continue
            a_end = rng.randint(1, len(current_chunk) - 1) if len(current_chunk) >= 2 else 1
            tokens_a = [t for seg in current_chunk[:a_end] for t in seg]
            tokens_b: list[int] = []
            is_random_next = False
            if len(current_chunk) == 1 or rng.random() < 0.5:
                if len(pool) > 1:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_index = rng.randint(0, len(pool) - 1)
                        if random_index != index:
                            break
                    if random_index == index:  # ten unlucky draws: take the next document
                        random_index = (index + 1) % len(pool)
                    random_document = pool[random_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # The segments after a_end were not used: put them back for the next example.
                    i -= len(current_chunk) - a_end
            if not is_random_next:
                tokens_b = [t for seg in current_chunk[a_end:] for t in seg]
            if tokens_b:
                tokens_a, tokens_b, removed = _truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
                out.tokens_truncated += removed
                out.sequences.append([cls_id, *tokens_a, sep_id, *tokens_b, sep_id])
                out.nsp_labels.append(1 if is_random_next else 0)
            else:  # one document in the pool and one sentence left: nothing to pair it with
                out.tokens_unpaired += len(tokens_a)
            current_chunk = []
            current_length = 0
        i += 1


def mlm_examples_from_document(
    document: TokenDoc,
    seq_len: int,
    short_seq_prob: float,
    cls_id: int,
    sep_id: int,
    rng: random.Random,
    out: Examples,
) -> None:
    """Append ``[CLS] sentences [SEP]`` examples of whole sentences, packed up to the target length."""
    max_num_tokens = seq_len - 2
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    current: list[int] = []
    for sentence in split_long_sentences(document, max_num_tokens):
        if current and len(current) + len(sentence) > target:
            out.sequences.append([cls_id, *current, sep_id])
            current = []
        current.extend(sentence)
    if current:
        out.sequences.append([cls_id, *current, sep_id])


def build_examples(
    pool: list[TokenDoc],
    objective: str,
    seq_len: int,
    short_seq_prob: float,
    cls_id: int,
    sep_id: int,
    rng: random.Random,
) -> Examples:
    """All examples of a pool of documents, shuffled (as BERT shuffles its instances)."""
    out = Examples()
    if objective == "mlm+nsp":
        pool = [split_long_sentences(document, seq_len - 3) for document in pool]
    for index, document in enumerate(pool):
        if objective == "mlm+nsp":
            nsp_examples_from_document(pool, index, seq_len, short_seq_prob, cls_id, sep_id, rng, out)
        else:
            mlm_examples_from_document(document, seq_len, short_seq_prob, cls_id, sep_id, rng, out)
    order = list(range(len(out.sequences)))
    rng.shuffle(order)
    out.sequences = [out.sequences[k] for k in order]
    if out.nsp_labels:
        out.nsp_labels = [out.nsp_labels[k] for k in order]
    return out


def pack(examples: Examples, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Flat arrays (tokens, offsets, nsp) for storing a split's examples without pickle."""
    lengths = np.fromiter((len(s) for s in examples.sequences), dtype=np.int64, count=len(examples.sequences))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = [t for s in examples.sequences for t in s]
    return {
        "tokens": np.array(flat, dtype=dtype),
        "offsets": offsets,
        "nsp": np.array(examples.nsp_labels, dtype=np.uint8),
    }
