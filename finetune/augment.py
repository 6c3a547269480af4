"""Training-set augmentation for small labelled sets: altered copies of the training rows, made once
before training, seeded, never applied to valid or test.

- ``mlm_fill`` (contextual augmentation): mask a share of a row's words and refill each with a word
  sampled from the base checkpoint's own masked-LM head (the project's pretrained MLM), label kept.
- ``swap``: swap that share of random word pairs; ``delete``: drop that share of the words (never all).

Words are ``tokens.split_words``'s: whitespace-separated runs, and each Han/kana character on its
own (a Chinese row is not one "word"), written back with ``tokens.join_words``. No synonym
replacement: it needs a synonym source (WordNet, a thesaurus), and none is available offline here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from finetune import InputError
from finetune.data import Table
from finetune.tokens import is_unspaced, join_words, split_words

_MLM_BATCH = 64


def _count(words: int, share: float) -> int:
    return max(1, round(share * words))


def swap_words(text: str, share: float, rng: np.random.Generator) -> str:
    words = split_words(text)
    if len(words) < 2:
        return text
    for _ in range(_count(len(words), share)):
        i, j = rng.choice(len(words), 2, replace=False)
        words[i], words[j] = words[j], words[i]
    return join_words(words)


def delete_words(text: str, share: float, rng: np.random.Generator) -> str:
    words = split_words(text)
    if len(words) < 2:
        return text
    drop = set(rng.choice(len(words), min(_count(len(words), share), len(words) - 1), replace=False).tolist())
    return join_words([word for index, word in enumerate(words) if index not in drop])


class MlmFiller:
    """Refill masked words by sampling the base MLM; one [MASK] per chosen word, filled by a token
    that starts a word (so the filled text stays a sequence of whole words), a Han/kana character by
    one Han/kana character."""

    def __init__(self, base: Path, tokenizer, temperature: float):
        import torch
        from transformers import AutoModelForMaskedLM

        try:
            self.model = AutoModelForMaskedLM.from_pretrained(
                base, local_files_only=True, dtype=torch.float32
            )
        except Exception as err:
            raise InputError(
                f"augment mlm_fill: model dir {str(base)!r} has no usable masked-LM head ({type(err).__name__})"
            ) from None
        self.model.eval()
        self.tokenizer = tokenizer
        self.temperature = temperature
        # Tokens that may fill a word: not special, and starting a word (not a "##" continuation,
        # and for SentencePiece vocabularies one that carries the word-start mark).
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_ids)
        marked = any(token.startswith("\u2581") for token in vocabulary)
        allowed = np.array(
            [
                index not in special
                and not token.startswith("##")
                and (not marked or (token.startswith("\u2581") and len(token) > 1))
                and not token.startswith("<")
                for index, token in enumerate(vocabulary)
            ]
        )
        self.blocked = torch.from_numpy(~allowed)
        unspaced = np.array(
            [
                index not in special
                and len(token.lstrip("\u2581")) == 1
                and is_unspaced(token.lstrip("\u2581"))
                for index, token in enumerate(vocabulary)
            ]
        )
        # a vocabulary without Han/kana tokens fills those words like any other
        self.blocked_unspaced = torch.from_numpy(~unspaced) if unspaced.any() else self.blocked

    def fill(self, texts: list[str], share: float, rng: np.random.Generator) -> list[str]:
        import torch

        originals = [split_words(text) for text in texts]
        masked_words = []
        for words in originals:
            chosen = (
                set(rng.choice(len(words), _count(len(words), share), replace=False).tolist())
                if words
                else set()
            )
            masked_words.append(
                [self.tokenizer.mask_token if i in chosen else w for i, w in enumerate(words)]
            )
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        filled = []
        for start in range(0, len(texts), _MLM_BATCH):
            chunk = masked_words[start : start + _MLM_BATCH]
            batch = self.tokenizer(
                [join_words(originals[start + row], words) for row, words in enumerate(chunk)],
                padding=True,
                truncation=True,
                max_length=512,
                return_tensors="pt",
            )
            with torch.no_grad():
                logits = self.model(**batch).logits
            positions = batch["input_ids"] == self.tokenizer.mask_token_id
            # masks past the truncation point got no prediction: those words stay as they were
            budgets = positions.sum(dim=1).tolist()
            # the masked words that got a prediction, in the order of `positions` (row by row)
            predicted = [
                original
                for row, words in enumerate(chunk)
                for original in [
                    o for w, o in zip(words, originals[start + row]) if w == self.tokenizer.mask_token
                ][: budgets[row]]
            ]
            unspaced = torch.tensor([is_unspaced(word) for word in predicted], dtype=torch.bool)
            scores = logits[positions].float() / self.temperature
            blocked = torch.where(unspaced[:, None], self.blocked_unspaced, self.blocked)
            scores[blocked] = -torch.inf
            sampled = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)[:, 0].tolist()
            new_words = [
                self.tokenizer.convert_tokens_to_string([token]).strip()
                for token in self.tokenizer.convert_ids_to_tokens(sampled)
            ]
            taken = 0
            for row, words in enumerate(chunk):
                budget = budgets[row]
                out = []
                for word, original in zip(words, originals[start + row]):
                    if word == self.tokenizer.mask_token and budget:
                        out.append(new_words[taken] or original)
                        taken, budget = taken + 1, budget - 1
                    else:
                        out.append(original)
                filled.append(join_words(out))
        return [" ".join(text.split()) for text in filled]


def augment_table(table: Table, config, base: Path, tokenizer) -> tuple[Table, dict[str, int]]:
    """``table`` plus ``augment.copies`` altered copies of every row per method; the counts added."""
    settings = config.augment
    rng = np.random.default_rng([config.seed, 3])
    filler = MlmFiller(base, tokenizer, settings.temperature) if "mlm_fill" in settings.methods else None
    texts, pairs, labels, lines = (
        list(table.texts),
        list(table.pairs or []),
        list(table.labels),
        list(table.lines),
    )
    added: dict[str, int] = {}

    def alter(values: list[str], method: str) -> list[str]:
        if method == "mlm_fill":
            return filler.fill(values, settings.share, rng)
        operation = swap_words if method == "swap" else delete_words
        return [operation(value, settings.share, rng) for value in values]

    for method in settings.methods:
        for _ in range(settings.copies):
            texts += alter(table.texts, method)
            if table.pairs:
                pairs += alter(table.pairs, method)
            labels += table.labels
            lines += table.lines  # a copy points at the line it was made from
        added[method] = settings.copies * len(table)
    return replace(
        table, texts=texts, pairs=pairs if table.pairs else None, labels=labels, lines=lines
    ), added
