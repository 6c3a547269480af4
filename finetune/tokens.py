"""Token classification data: CoNLL column files and JSONL token lists, word-to-subword alignment,
windows for sentences longer than max_len, and predictions mapped back to words.

Alignment: the first subword of a word carries the word's tag; the other subwords and the special
tokens carry -100, which the loss and the metrics ignore. A sentence whose subwords do not fit
``max_len`` is split at word boundaries into consecutive windows, each with its own [CLS]/[SEP], so
every word is tagged exactly once (nothing is cut).

Scripts written without spaces (Chinese, Japanese) are tagged a character at a time, as their NER
corpora are; ``split_words`` cuts a raw text that way for prediction and augmentation. A SentencePiece tokenizer
then puts its word-start piece before every character (``▁ 张 ▁ 伟``) and the tag sits on that
piece: encoding the characters unmarked, with the tag on each character, was measured and loses
(README, "Token classification").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from data_prep.cleaning import CJK_CHARS, joiner
from finetune import InputError
from finetune.data import Encoded, json_rows

IGNORE = -100  # the label torch's cross-entropy skips
_DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class TokenTable:
    """The sentences of one token file, in file order."""

    source: str  # "train_file 'data/train.txt'"
    words: list[list[str]]
    tags: list[list[str]]
    lines: list[int]  # 1-based line of each sentence's first word (JSONL: the object's line)
    jsonl: bool = False  # a sentence per line (else a word per line)

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, indices: Sequence[int]) -> TokenTable:
        return replace(
            self,
            words=[self.words[i] for i in indices],
            tags=[self.tags[i] for i in indices],
            lines=[self.lines[i] for i in indices],
        )


def read_token_file(
    path: str | Path, role: str, word_column: int, tag_column: int, tokens_field: str, tags_field: str
) -> TokenTable:
    """A ``.jsonl`` file (one sentence per object) or any other file as CoNLL columns: one word per
    line, whitespace-separated columns, a blank line between sentences, ``-DOCSTART-`` lines skipped."""
    path = Path(path)
    source = f"{role} {str(path)!r}"
    if not path.is_file():
        raise InputError(f"{source} {'is not a file' if path.exists() else 'does not exist; check the path'}")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    try:
        with path.open(encoding="utf-8-sig") as handle:
            if jsonl:
                words, tags, lines = _read_jsonl(handle, source, tokens_field, tags_field)
            else:
                words, tags, lines = _read_conll(handle, source, word_column, tag_column)
    except UnicodeDecodeError as err:
        raise InputError(f"{source} is not UTF-8 text ({err.reason}); re-encode it as UTF-8") from None
    except OSError as err:
        raise InputError(f"{source} cannot be read: {err.strerror or err}") from None
    if not words:
        raise InputError(f"{source} has no sentences")
    return TokenTable(source=source, words=words, tags=tags, lines=lines, jsonl=jsonl)


def _read_conll(handle, source: str, word_column: int, tag_column: int):
    words, tags, lines = [], [], []
    sentence_words: list[str] = []
    sentence_tags: list[str] = []
    columns = first_line = None  # the column count is fixed by the first word line

    def close() -> None:
        if sentence_words:
            words.append(list(sentence_words))
            tags.append(list(sentence_tags))
            sentence_words.clear()
            sentence_tags.clear()

    for number, line in enumerate(handle, start=1):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == _DOCSTART:
            close()
            continue
        if columns is None:
            columns, first_line = len(fields), number
            for name, index in (("word_column", word_column), ("tag_column", tag_column)):
                if not -columns <= index < columns:
                    raise InputError(
                        f"{source} line {number} has {columns} columns, so tokens.{name}={index} "
                        f"is outside it; set tokens.{name}="
                    )
        elif len(fields) != columns:
            raise InputError(
                f"{source} line {number} has {len(fields)} columns but line {first_line} has {columns}; "
                f"every word line needs the same columns (word and tag), sentences a blank line between"
            )
        if not sentence_words:
            lines.append(number)
        sentence_words.append(fields[word_column])
        sentence_tags.append(fields[tag_column])
    close()
    return words, tags, lines


def _read_jsonl(handle, source: str, tokens_field: str, tags_field: str):
    words, tags, lines = [], [], []
    for number, row in json_rows(handle, source):
        for field in (tokens_field, tags_field):
            value = row.get(field)
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise InputError(
                    f"{source} line {number}: {field!r} is not a list of strings; each line needs "
                    f"{{{tokens_field!r}: [words], {tags_field!r}: [tags]}} (set tokens.tokens_field/tags_field)"
                )
        if len(row[tokens_field]) != len(row[tags_field]):
            raise InputError(
                f"{source} line {number} has {len(row[tokens_field])} {tokens_field} but "
                f"{len(row[tags_field])} {tags_field}; give one tag per word"
            )
        if row[tokens_field]:
            words.append(row[tokens_field])
            tags.append(row[tags_field])
            lines.append(number)
    return words, tags, lines


def tag_vocabulary(train: TokenTable) -> list[str]:
    """Tags in a stable order: O first, then by entity type and B before I."""
    values = {tag for sentence in train.tags for tag in sentence}
    if len(values) < 2:
        raise InputError(f"{train.source} has only the tag {next(iter(values))!r}; a tagger needs at least 2")
    return sorted(values, key=lambda tag: (tag != "O", tag[2:], tag))


def check_known_tags(table: TokenTable, vocabulary: Sequence[str]) -> None:
    """A tag the training data never has cannot be predicted: refuse it, naming its line."""
    known = set(vocabulary)
    for words, tags, first in zip(table.words, table.tags, table.lines):
        for offset, tag in enumerate(tags):
            if tag not in known:
                where = (
                    f"line {first} (word {offset + 1}, {words[offset]!r})"
                    if table.jsonl
                    else f"line {first + offset}"
                )
                raise InputError(
                    f"{table.source} {where}: tag {tag!r} is not among the training tags "
                    f"({', '.join(vocabulary)}); fix the tag or add examples to train_file"
                )


@dataclass(frozen=True)
class WindowStats:
    sentences_split: int
    windows: int
    words_without_tokens: int  # words the tokenizer maps to nothing: predicted "O" (never scored)


# A word: a run of characters up to a space, or one character of a script written without spaces.
_UNSPACED = re.compile(f"(?!\\s)[{CJK_CHARS}]")  # the ideographic space is a space
_WORD = re.compile(f"{_UNSPACED.pattern}|[^\\s{CJK_CHARS}]+")


def split_words(text: str) -> list[str]:
    """The words of a raw text (to tag, or to augment): runs between spaces, and each Han/kana
    character on its own ("张伟在Apple工作" -> 张 伟 在 Apple 工 作), the unit Chinese and Japanese
    NER corpora label."""
    return _WORD.findall(text)


def join_words(words: Sequence[str], shown: Sequence[str] | None = None) -> str:
    """The words as running text: a space between two, except inside a Han/kana run (data_prep's
    rule). ``shown``: what to write in each word's place (a mask token, say); spacing follows ``words``."""
    return "".join(
        (joiner(words[i - 1][-1], word[0]) if i and words[i - 1] and word else "") + text
        for i, (word, text) in enumerate(zip(words, words if shown is None else shown))
    )


def is_unspaced(word: str) -> bool:
    """A word of a script written without spaces (Han or kana only; ``split_words`` makes one a character)."""
    return bool(word) and all(_UNSPACED.match(char) for char in word)


def encode_tokens(
    table: TokenTable, tokenizer, vocabulary: Sequence[str], max_len: int
) -> tuple[Encoded, WindowStats]:
    """[CLS] subwords [SEP] per sentence (or per window of one), first-subword labels."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            "task=token_classification needs a fast tokenizer (tokenizer.json) to align words and subwords"
        )
    ids = {tag: index for index, tag in enumerate(vocabulary)}
    encoded = tokenizer(table.words, is_split_into_words=True, add_special_tokens=False)
    budget = max_len - 2  # [CLS] and [SEP]
    input_ids, labels, words, origin = [], [], [], []
    split = empty = 0
    for sentence, tags in enumerate(table.tags):
        token_ids = encoded["input_ids"][sentence]
        word_ids = encoded.word_ids(sentence)
        # [start, end) token spans per word; words without tokens get none.
        spans: dict[int, list[int]] = {}
        for position, word in enumerate(word_ids):
            if word is not None:
                spans.setdefault(word, [position, position])[1] = position + 1
        empty += len(tags) - len(spans)
        windows, current, used = [], [], 0
        for word in sorted(spans):
            start, end = spans[word]
            length = min(end - start, budget)  # a single word longer than a window keeps its first subwords
            if used + length > budget and current:
                windows.append(current)
                current, used = [], 0
            current.append((word, start, start + length))
            used += length
        if current:
            windows.append(current)
        split += len(windows) > 1
        for window in windows:
            row_ids, row_labels, row_words = [tokenizer.cls_token_id], [IGNORE], [-1]
            for word, start, end in window:
                row_ids.extend(token_ids[start:end])
                row_labels.extend([ids[tags[word]]] + [IGNORE] * (end - start - 1))
                row_words.extend([word] + [-1] * (end - start - 1))
            row_ids.append(tokenizer.sep_token_id)
            row_labels.append(IGNORE)
            row_words.append(-1)
            input_ids.append(row_ids)
            labels.append(row_labels)
            words.append(row_words)
            origin.append(sentence)
    data = Encoded(
        input_ids=input_ids,
        token_type_ids=[[0] * len(row) for row in input_ids],
        labels=labels,
        words=words,
        origin=origin,
    )
    return data, WindowStats(sentences_split=split, windows=len(input_ids), words_without_tokens=empty)


def word_predictions(
    table: TokenTable, data: Encoded, probabilities: np.ndarray, vocabulary: Sequence[str]
) -> list[list[str]]:
    """The predicted tag of every word: the argmax at its first subword (words without tokens: O)."""
    outside = "O" if "O" in vocabulary else vocabulary[0]
    predicted = [[outside] * len(words) for words in table.words]
    best = probabilities.argmax(axis=-1)  # [windows, max_len]
    for row, (sentence, row_words) in enumerate(zip(data.origin, data.words)):
        for position, word in enumerate(row_words):
            if word >= 0:
                predicted[sentence][word] = vocabulary[best[row, position]]
    return predicted
