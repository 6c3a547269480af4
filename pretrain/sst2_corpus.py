"""SST-2's training text, without labels, as a pretraining corpus (self-pretraining, Krishna et al. 2022).

``python -m pretrain.sst2_corpus ../shared/data/sst2/train.tsv --out runs/sst2/corpus.txt [--keep all]``

GLUE's SST-2 train split is 67k phrases cut from ~6.9k sentences: every node of each sentence's parse
tree is a row, so most rows are fragments of others ("the greatest musicians" inside "the greatest
musicians of all time"). Fed as they are, the corpus is ~1M tokens of which the sentences are a
sixth, short fragments dominate, and every word is seen ~5 times in overlapping contexts. ``maximal``
(the default) keeps only the phrases that are no word-span of a longer one, i.e. the sentences
themselves, one per line; ``all`` keeps every distinct phrase (what the first measurement used).
Labels are never read. Dev and test text is never included (that would be transductive leakage).
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.sst2_corpus", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("train_tsv", type=Path, help="SST-2's train.tsv (label and sentence columns)")
    parser.add_argument("--out", type=Path, required=True, help="text file to write, one line per sentence")
    parser.add_argument("--keep", choices=("maximal", "all"), default="maximal")
    args = parser.parse_args(argv)
    try:
        phrases = read_phrases(args.train_tsv)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    lines = maximal_phrases(phrases) if args.keep == "maximal" else list(dict.fromkeys(phrases))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    words = sum(len(line.split()) for line in lines)
    print(
        f"{args.out}: {len(lines):,} lines, {words:,} words (from {len(phrases):,} phrases, --keep {args.keep})"
    )


if __name__ == "__main__":
    main()
