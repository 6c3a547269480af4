"""Dynamic masking for masked-language-model pretraining (BERT, Devlin et al. 2019, section 3.1).

Per sequence, round(15%) of its non-special tokens (at least one) are chosen as prediction targets,
as in BERT's ``create_pretraining_data.py``; of those, 80% become ``[MASK]``, 10% a random token
and 10% stay unchanged. Masks are drawn anew each time a sample is seen (RoBERTa's dynamic masking),
from an explicit generator so that a resumed run draws the same masks as an uninterrupted one.

Whole-word masking (``masking: whole_word``, Google's BERT-wwm release): the targets are chosen a
word at a time, every piece of a word together, in a random order of the words, skipping a word
that would overshoot the count (the rule of ``create_pretraining_data.py --do_whole_word_mask``).
The count per sequence is exactly the token-level one: when no remaining word fits the last slots
(rare: every word left is longer than the gap), the next word in the order is masked in part.
Word boundaries come from the tokenizer's pieces (``word_start_table``), once per vocabulary id:
words of space-delimited scripts. Chinese and Japanese mark none (no space, so no word-start piece):
a piece that begins with a CJK character counts as a word of its own (a character, with a vocabulary
of one piece per Han character), as Google's BERT masks Chinese; segmenter words would need
boundaries stored per sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_prep.cleaning import CJK_CHAR

# How a tokenizer marks words: SentencePiece and byte-level BPE prefix a word's first piece,
# WordPiece prefixes the pieces that continue a word.
SENTENCEPIECE_START, BYTE_BPE_START, WORDPIECE_CONTINUATION = "\u2581", "\u0120", "##"


def word_start_table(tokenizer_dir: str | Path, vocab_size: int) -> tuple[torch.Tensor, str]:
    """[V] bool, True for the ids that begin a word, and the convention found (for the banner).

    Special tokens count as word starts, and so does a piece that begins with a CJK character: text
    without spaces has no word-start pieces, and without this a whole run of Chinese would read as
    one word, continuing the last marked one. A tokenizer without any of the three markers (a
    word-level one) makes every token a word, and whole-word masking the same as token masking.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    vocab = tokenizer.get_vocab()
    pieces = vocab.keys()
    if any(p.startswith(WORDPIECE_CONTINUATION) for p in pieces):
        style, is_start = "WordPiece ## continuations", lambda p: not p.startswith(WORDPIECE_CONTINUATION)
    elif any(p.startswith(SENTENCEPIECE_START) for p in pieces):
        style, is_start = "SentencePiece \u2581 word starts", lambda p: p.startswith(SENTENCEPIECE_START)
    elif any(p.startswith(BYTE_BPE_START) for p in pieces):
        style, is_start = "byte-level BPE \u0120 word starts", lambda p: p.startswith(BYTE_BPE_START)
    else:
        style, is_start = "no subword markers: every token is a word", lambda p: True
    table = torch.ones(max(vocab_size, max(vocab.values()) + 1), dtype=torch.bool)
    for piece, index in vocab.items():
        table[index] = is_start(piece) or bool(CJK_CHAR.match(piece))
    table[list(tokenizer.all_special_ids)] = True
    return table, style


def _choose_tokens(maskable: torch.Tensor, targets: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the ``targets[b]`` maskable positions of lowest score in each row."""
    scores = scores.masked_fill(~maskable, 2.0)  # never among the lowest
    rank = scores.argsort(dim=1).argsort(dim=1)  # [B, L] rank of each position's score in its row
    return rank < targets.unsqueeze(1)


def _choose_words(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    word_starts: torch.Tensor,
) -> torch.Tensor:
    """[B, L] bool: whole words in the order of their first piece's score, ``targets[b]`` tokens per row."""
    previous = torch.nn.functional.pad(maskable[:, :-1], (1, 0), value=False)
    # A word starts at a start piece, or at the first maskable token after [CLS]/[SEP]/padding.
    starts = maskable & (word_starts[input_ids] | ~previous)
    word = torch.cumsum(starts, dim=1) - 1  # [B, L] word number within the row (valid where maskable)
    chosen = np.zeros(maskable.shape, dtype=bool)
    maskable_np, word_np, starts_np, scores_np = (
        maskable.numpy(),
        word.numpy(),
        starts.numpy(),
        scores.numpy(),
    )
    for row, target in enumerate(targets.tolist()):
        if target == 0:
            continue
        first = np.flatnonzero(starts_np[row])  # first position of each word
        lengths = np.bincount(word_np[row][maskable_np[row]], minlength=first.size)
        order = np.argsort(scores_np[row, first], kind="stable")
        total, taken = 0, np.zeros(first.size, dtype=bool)
        for w in order:
            if total + lengths[w] <= target:
                taken[w], total = True, total + lengths[w]
                if total == target:
                    break
        if total < target:  # no whole word fits the gap: part of the next one in the order
            w = next(w for w in order if not taken[w])
            chosen[row, first[w] : first[w] + target - total] = True
        in_row = taken[word_np[row].clip(min=0)] & maskable_np[row]
        chosen[row] |= in_row
    return torch.from_numpy(chosen)


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    probability: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask a padded batch.

    Args:
        input_ids: [B, L] token ids.
        maskable: [B, L] bool, True where a token may be chosen (not special, not padding).
        word_starts: [V] bool from ``word_start_table`` for whole-word masking; None masks tokens.
    Returns:
        masked_ids [B, L], positions [M] (flat indices into B*L of the chosen tokens, row-major,
        ascending) and labels [M] (their original ids).
    """
    batch, length = input_ids.shape
    counts = maskable.sum(dim=1)
    targets = torch.where(counts > 0, (counts.float() * probability).round().clamp(min=1), 0).long()  # [B]
    scores = torch.rand(batch, length, generator=generator)
    if word_starts is None:
        chosen = _choose_tokens(maskable, targets, scores)
    else:
        chosen = _choose_words(input_ids, maskable, targets, scores, word_starts)
    positions = chosen.flatten().nonzero().squeeze(1)  # [M]
    flat = input_ids.flatten()
    labels = flat[positions]
    masked = flat.clone()
    action = torch.rand(positions.numel(), generator=generator)
    masked[positions[action < 0.8]] = mask_id
    randomize = positions[(action >= 0.8) & (action < 0.9)]
    masked[randomize] = torch.randint(vocab_size, (randomize.numel(),), generator=generator)
    return masked.view(batch, length), positions, labels
