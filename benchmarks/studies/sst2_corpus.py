"""SST-2's training text, without labels, as a pretraining corpus (self-pretraining, Krishna et al. 2022).

``python -m benchmarks.studies.sst2_corpus ../shared/data/sst2/train.tsv --out runs/sst2/corpus.txt [--keep all] [--per-document 8]``

GLUE's SST-2 train split is 67k phrases cut from ~6.9k sentences: every node of each sentence's parse
tree is a row, so most rows are fragments of others ("the greatest musicians" inside "the greatest
musicians of all time"). Fed as they are, the corpus is ~1M tokens of which the sentences are a
sixth, short fragments dominate, and every word is seen ~5 times in overlapping contexts. ``maximal``
(the default) keeps only the phrases that are no word-span of a longer one, i.e. the sentences
themselves, one per line; ``all`` keeps every distinct phrase (what the first measurement used).
Labels are never read. Dev and test text is never included (that would be transductive leakage).

The sentences are written in groups of ``--per-document`` (a blank line between groups), so
data_prep's paragraph mode reads each group as one document and packs whole sentences up to
seq_len: ~96 tokens per sample instead of one ~28-token sentence padded to its batch's longest,
3.6x fewer samples for the same text and ~1.5x the real tokens per second in pretraining. The
groups are arbitrary (the rows are in GLUE's shuffled order), so the prep is MLM only.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

TEXT_COLUMNS = ("sentence", "content")


def read_phrases(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        column = next((c for c in TEXT_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise ValueError(f"{path}: no text column (expected one of {', '.join(TEXT_COLUMNS)})")
        return [row[column].strip() for row in reader if row[column] and row[column].strip()]


def maximal_phrases(phrases: list[str]) -> list[str]:
    """Distinct phrases that are not a contiguous word span of a longer kept phrase, in input order.

    Longest first: a kept phrase registers all its word spans, so a later (shorter) phrase is a
    fragment iff it is among them. ~6.9k sentences x ~200 spans: a set of a few million strings.
    """
    spans: set[str] = set()
    kept: set[str] = set()
    for phrase in sorted(set(phrases), key=lambda p: -len(p.split())):
        if phrase in spans:
            continue
        kept.add(phrase)
        words = phrase.split()
        spans.update(" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1))
    seen: set[str] = set()
    ordered = []
    for phrase in phrases:
        if phrase in kept and phrase not in seen:
            seen.add(phrase)
            ordered.append(phrase)
    return ordered


def as_documents(sentences: list[str], per_document: int) -> str:
    """One sentence per line, a blank line after every ``per_document`` sentences."""
    groups = [sentences[i : i + per_document] for i in range(0, len(sentences), per_document)]
    return "\n".join("".join(s + "\n" for s in group) for group in groups)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.sst2_corpus", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("train_tsv", type=Path, help="SST-2's train.tsv (label and sentence columns)")
    parser.add_argument("--out", type=Path, required=True, help="text file to write, one line per sentence")
    parser.add_argument("--keep", choices=("maximal", "all"), default="maximal")
    parser.add_argument(
        "--per-document",
        type=int,
        default=8,
        metavar="N",
        help="sentences per document (blank line between documents); 1 = one sample per sentence",
    )
    args = parser.parse_args(argv)
    if args.per_document < 1:
        parser.error(f"--per-document must be at least 1, got {args.per_document}")
    try:
        phrases = read_phrases(args.train_tsv)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    lines = maximal_phrases(phrases) if args.keep == "maximal" else list(dict.fromkeys(phrases))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(as_documents(lines, args.per_document), encoding="utf-8")
    words = sum(len(line.split()) for line in lines)
    print(
        f"{args.out}: {len(lines):,} sentences in {-(-len(lines) // args.per_document):,} documents, "
        f"{words:,} words (from {len(phrases):,} phrases, --keep {args.keep})"
    )


if __name__ == "__main__":
    main()
