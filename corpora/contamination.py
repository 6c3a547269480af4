"""Does a pretraining corpus contain the sentences a model is later evaluated on?

    python -m corpora contamination CORPUS [CORPUS ...] --tasks sst2,conll2003,rte [--out FILE.md]

CORPUS is a folder of ``.jsonl`` files (``python -m corpora english`` writes one) or a file. Every
evaluation sentence of the scoreboard's tasks (configs/suite: the dev and test files, and the train
file where dev is drawn from it) is looked for in every sentence of the corpus, with the prep
stage's own dedup: the exact fingerprint, and MinHash over word 5-grams with LSH at prep's
near-duplicate threshold (``data_prep.dedup``). Both sides are first reduced to lower-case words
(task files are tokenised, ``it 's``, the corpus is not), and only sentences of at least
``MIN_WORDS`` words count: "Germany won 2-1 ." in a corpus is not evidence of a leak.

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
from data_prep.config import NearDupConfig
from data_prep.dedup import MINHASH_SCHEME, MINHASH_SEED, Shingler, exact_fingerprint
from data_prep.sentences import split_sentences
from finetune.data import read_table
from finetune.tasks import load_task
from finetune.tokens import read_token_file

MIN_WORDS = 8
BATCH = 20_000  # corpus sentences fingerprinted at once
EXAMPLES = 5  # matches shown per task file and kind


def words_only(sentence: str) -> str:
    return " ".join(re.findall(r"\w+", sentence.lower()))


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
                table = read_token_file(path, role, **config.tokens.model_dump())
                texts = [" ".join(words) for words in table.words]
            else:
                table = read_table(
                    path, role, config.text_column, config.label_column, config.text_pair_column
                )
                texts = table.texts + (table.pairs or [])
            sentences = {words_only(s) for text in texts for s in split_sentences([text])}
            kept = sorted(s for s in sentences if len(s.split()) >= MIN_WORDS)
            found.append(TaskFile(f"{name} {role} {path}", kept))
    return found


def corpus_sentences(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """(sentence reduced to words, file name) for every long-enough sentence of the corpus."""
    files = [p for path in paths for p in (sorted(path.rglob("*.jsonl")) if path.is_dir() else [path])]
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for line in tqdm(handle, desc=path.name, unit=" docs", disable=not sys.stderr.isatty()):
                text = json.loads(line)["text"]
                for sentence in split_sentences(text.split("\n\n")):
                    reduced = words_only(sentence)
                    if len(reduced.split()) >= MIN_WORDS:
                        yield reduced, path.name


def check(corpus: list[Path], tasks: list[TaskFile], near: NearDupConfig) -> int:
    """Fill each task file's matches; returns the corpus sentences looked at."""
    shingler = Shingler(near)
    lsh = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm)
    signatures: dict[str, np.ndarray] = {}  # by the fingerprint of a task sentence
    owners: dict[str, list[tuple[TaskFile, str]]] = {}  # the task files holding that sentence
    for task in tasks:
        for sentence, signature in zip(task.sentences, shingler.signatures(task.sentences)):
            key = exact_fingerprint(sentence)
            if key not in signatures:
                signatures[key] = signature
                lsh.insert(key, LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=MINHASH_SCHEME))
            owners.setdefault(key, []).append((task, sentence))
    seen = 0
    batch: list[tuple[str, str]] = []

    def flush() -> None:
        texts = [text for text, _ in batch]
        for (text, source), signature in zip(batch, shingler.signatures(texts)):
            for task, _ in owners.get(exact_fingerprint(text), []):
                task.exact.append((text, source))
            for key in lsh.query(LeanMinHash(seed=MINHASH_SEED, hashvalues=signature, scheme=MINHASH_SCHEME)):
                if np.mean(signatures[key] == signature) >= near.threshold:
                    for task, sentence in owners[key]:
                        if sentence != text:  # the same sentence is an exact match, counted above
                            task.near.append((text, source))
        batch.clear()

    for item in corpus_sentences(corpus):
        batch.append(item)
        seen += 1
        if len(batch) == BATCH:
            flush()
    flush()
    return seen


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
