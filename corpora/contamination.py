"""Does a pretraining corpus contain the sentences a model is later evaluated on?

    python -m corpora contamination CORPUS [CORPUS ...] --tasks sst2,conll2003,rte [--out FILE.md]

CORPUS is a folder of ``.jsonl`` files (``python -m corpora english`` writes one) or a file. Every
evaluation sentence of the scoreboard's tasks (configs/suite: the dev and test files, and the train
file where dev is drawn from it) is looked for in every sentence of the corpus, with the prep
stage's own dedup: the exact fingerprint, and MinHash over word 5-grams with LSH at prep's
near-duplicate threshold (``data_prep.dedup``). Both sides are first reduced to lower-case words
(task files are tokenised, ``it 's``, the corpus is not; Chinese and Japanese a character a word),
and only sentences of at least ``MIN_WORDS`` words count: "Germany won 2-1 ." in a corpus is not
evidence of a leak.

The report lists per task file the sentences checked, exact and near matches, and a few of each
with the corpus file they were found in; exit status 1 when anything matched.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHashLSH
from tqdm import tqdm

from data_prep.atomic import write_text_atomic
from data_prep.cleaning import CJK_CHARS
from data_prep.config import NearDupConfig
from data_prep.dedup import MINHASH_SCHEME, MINHASH_SEED, Shingler, exact_fingerprint
from data_prep.sentences import split_sentences
from finetune.data import read_table
from finetune.tasks import load_task
from finetune.tokens import read_token_file

MIN_WORDS = 8
BATCH = 20_000  # corpus sentences fingerprinted at once
EXAMPLES = 5  # matches shown per task file and kind


# A word: a run of letters and digits, or one character of a script written without spaces (Han,
# kana), as the NER sets of those scripts tag a character at a time.
_WORD = re.compile(f"(?=\\w)[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+")


def words_only(sentence: str) -> str:
    return " ".join(_WORD.findall(sentence.lower()))


@dataclass
class TaskFile:
    label: str  # "sst2 test_file ../shared/data/sst2/test.tsv"
    sentences: list[str]
    exact: list[tuple[str, str]] = field(default_factory=list)  # (sentence, corpus file)
    near: list[tuple[str, str]] = field(default_factory=list)


def task_files(names: list[str]) -> list[TaskFile]:
    """The evaluation sentences of each task, per file, reduced to words, long enough to count."""
    found = []
    for name in names:
        config = load_task(name).data_config()
        roles = ["valid_file", "test_file"]
        if config.valid_file is None or config.test_file is None:
            roles.append("train_file")  # dev or test is drawn from it
        for role in roles:
            path = getattr(config, role)
            if path is None:
                continue
            if config.task == "token_classification":
                files = config.tokens
                table = read_token_file(
                    path, role, files.word_column, files.tag_column, files.tokens_field, files.tags_field
                )
                # A file of a character per word (Chinese NER) is written back as running text, so
                # that its "1 7 0" and "W T O" read 170 and WTO, as the corpus has them.
                texts = [
                    ("" if all(len(w) == 1 for w in words) else " ").join(words) for words in table.words
                ]
            else:
                table = read_table(
                    path, role, config.text_column, config.label_column, config.text_pair_column
                )
                texts = table.texts + (table.pairs or [])
            sentences = {sentence for text in texts for sentence in reduced_sentences(text)}
            found.append(TaskFile(f"{name} {role} {path}", sorted(sentences)))
    return found


def corpus_sentences(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """(sentence reduced to words, file name) for every long-enough sentence of the corpus."""
    files = [p for path in paths for p in (sorted(path.rglob("*.jsonl")) if path.is_dir() else [path])]
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for line in tqdm(handle, desc=path.name, unit=" docs", disable=not sys.stderr.isatty()):
                for sentence in reduced_sentences(json.loads(line)["text"]):
                    yield sentence, path.name


class SentenceIndex:
    """Sentences (reduced to words) to look for, by prep's dedup: the exact fingerprint, and MinHash
    signatures in an LSH at ``near``'s threshold, confirmed on the signatures' agreement."""

    def __init__(self, near: NearDupConfig) -> None:
        self.threshold = near.threshold
        self.shingler = Shingler(near)
        self.lsh = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm)
        self.signatures: dict[str, np.ndarray] = {}  # by exact fingerprint

    def add(self, sentences: list[str]) -> list[str]:
        """Index the sentences; their keys (exact fingerprints), in order."""
        keys = []
        for sentence, signature in zip(sentences, self.shingler.signatures(sentences)):
            key = exact_fingerprint(sentence)
            if key not in self.signatures:
                self.signatures[key] = signature
                self.lsh.insert(key, _lean(signature))
            keys.append(key)
        return keys

    def find(self, texts: list[str]) -> list[tuple[str | None, list[str]]]:
        """Per text: the key of the indexed sentence it equals (or None), and the keys of those it
        nearly equals (itself left out)."""
        found = []
        for text, signature in zip(texts, self.shingler.signatures(texts)):
            key = exact_fingerprint(text)
            exact = key if key in self.signatures else None
            near = [
                other
                for other in self.lsh.query(_lean(signature))
                if other != exact and np.mean(self.signatures[other] == signature) >= self.threshold
            ]
            found.append((exact, near))
        return found


def _lean(signature: np.ndarray) -> LeanMinHash:
    return LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=MINHASH_SCHEME)


def check(corpus: list[Path], tasks: list[TaskFile], near: NearDupConfig) -> int:
    """Fill each task file's matches; returns the corpus sentences looked at."""
    index = SentenceIndex(near)
    owners: dict[str, list[TaskFile]] = {}  # the task files holding each indexed sentence
    for task in tasks:
        for key in index.add(task.sentences):
            owners.setdefault(key, []).append(task)
    seen = 0
    batch: list[tuple[str, str]] = []

    def flush() -> None:
        for (text, source), (exact, near_keys) in zip(batch, index.find([text for text, _ in batch])):
            for task in owners.get(exact, []) if exact else []:
                task.exact.append((text, source))
            for key in near_keys:
                for task in owners[key]:
                    task.near.append((text, source))
        batch.clear()

    for item in corpus_sentences(corpus):
        batch.append(item)
        seen += 1
        if len(batch) == BATCH:
            flush()
    flush()
    return seen


def reduced_sentences(text: str) -> list[str]:
    """The sentences of a text that the check compares: reduced to words, at least MIN_WORDS long."""
    reduced = (words_only(sentence) for sentence in split_sentences(text.split("\n\n")))
    return [sentence for sentence in reduced if len(sentence.split()) >= MIN_WORDS]


def markdown(tasks: list[TaskFile], corpus: list[Path], seen: int, near: NearDupConfig) -> str:
    lines = [
        "# Contamination check",
        "",
        f"Corpus: {', '.join(map(str, corpus))} ({seen:,} sentences of at least {MIN_WORDS} words). "
        f"Exact: the same lower-cased words; near: MinHash over word {near.shingle_words}-grams, "
        f"estimated Jaccard >= {near.threshold} (data_prep's dedup).",
        "",
        "| task file | sentences checked | exact matches | near matches |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {t.label} | {len(t.sentences):,} | {len(t.exact):,} | {len(t.near):,} |" for t in tasks]
    for task in tasks:
        for kind, matches in (("exact", task.exact), ("near", task.near)):
            if matches:
                lines += ["", f"{task.label}, {kind}:", ""]
                lines += [f"- `{text}` ({source})" for text, source in matches[:EXAMPLES]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m corpora contamination", description=__doc__.split("\n")[0]
    )
    parser.add_argument("corpus", nargs="+", type=Path)
    parser.add_argument("--tasks", default="sst2,conll2003,rte", help="scoreboard tasks (configs/suite)")
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.corpus if not p.exists()]
    if missing:
        parser.error(f"corpus {missing[0]!r} does not exist; build it first (python -m corpora english DIR)")
    near = NearDupConfig()
    tasks = task_files(args.tasks.split(","))
    seen = check(args.corpus, tasks, near)
    report = markdown(tasks, args.corpus, seen, near)
    print(report, end="")
    if args.out is not None:
        write_text_atomic(args.out, report)
    return 1 if any(t.exact or t.near for t in tasks) else 0
