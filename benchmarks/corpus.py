"""A generated text corpus for data_prep: English-like or Chinese, web-like document lengths, a share
of exact and near duplicates, and optionally the noise of text that went through Unix tools.

    python -m benchmarks.corpus OUT_DIR --mb 50 [--lang zh] [--near-dup 0.05] [--noise] [--compress zst]

Words are drawn Zipf-like: English from made-up syllable words with weight 1/rank, Chinese from
jieba's dictionary (shipped with the installed package) with its own frequencies, so character
counts and the tokenizer's task look like real text. Document lengths are log-normal in bytes
(median ``MEDIAN_BYTES``, sigma 1, cut to 200 B..100 kB), roughly the shape of web-crawl documents
(C4, The Pile's CommonCrawl part). A near duplicate is an earlier document with one word in
``EDIT_EVERY`` replaced (at least one), the kind of copy MinHash is there to catch.
``--noise`` adds what the issue-17 corpus had: ANSI colour codes around some words and hard wraps
at ``WRAP`` characters. Files are JSON Lines (optionally ``.gz`` or ``.zst``) of about ``--file-mb``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MEDIAN_BYTES = 1200
EDIT_EVERY = 50  # a near duplicate changes one word in this many
WRAP = 36  # hard-wrap width (characters) with --noise
ESCAPES = ("\x1b[33m", "\x1b[32m", "\x1b[1;31m")
RESET = "\x1b[m"
SYLLABLES = "ka lo mi ne ru sa te vo pi da go ba fe li mo nu ri so ta ve".split()


@dataclass
class Words:
    """A vocabulary with sampling weights and how a sentence is written in its script."""

    words: list[str]
    weights: np.ndarray
    spaced: bool  # words separated by spaces (English) or written together (Chinese)

    def __post_init__(self):
        self.cdf = np.cumsum(self.weights)  # searchsorted on it: rng.choice(p=...) redoes the sum per call
        self.cdf /= self.cdf[-1]

    def sentence(self, rng: np.random.Generator) -> str:
        n = int(rng.integers(5, 22))
        picked = [self.words[i] for i in np.searchsorted(self.cdf, rng.random(n)).tolist()]
        if self.spaced:
            if n > 10:
                picked[n // 2] += ","
            return " ".join(picked).capitalize() + str(rng.choice(list("....?!")))
        if n > 8:
            picked[int(rng.integers(3, n - 2))] += "，"
        text = "".join(picked) + str(rng.choice(list("。。。。？！")))
        return f"“{text}”" if rng.random() < 0.05 else text


def english_words(size: int = 20000) -> Words:
    rng = np.random.default_rng(0)
    words = sorted({"".join(rng.choice(SYLLABLES, size=int(rng.integers(1, 4)))) for _ in range(size * 2)})[
        :size
    ]
    rng.shuffle(words)
    weights = 1.0 / np.arange(1, len(words) + 1)
    return Words(list(words), weights / weights.sum(), spaced=True)


def chinese_words(min_count: int = 100) -> Words:
    """Words of jieba's dictionary seen at least ``min_count`` times, all Han characters."""
    import jieba

    words, counts = [], []
    with open(Path(jieba.__file__).parent / "dict.txt", encoding="utf-8") as handle:
        for line in handle:
            word, count, _ = line.split(" ")
            if int(count) >= min_count and all("\u4e00" <= ch <= "\u9fff" for ch in word):
                words.append(word)
                counts.append(int(count))
    weights = np.array(counts, dtype=np.float64)
    return Words(words, weights / weights.sum(), spaced=False)


def document(words: Words, rng: np.random.Generator, nbytes: int) -> str:
    """Paragraphs of sentences until about ``nbytes`` of UTF-8."""
    paragraphs, size = [], 0
    while size < nbytes:
        paragraph = (" " if words.spaced else "").join(
            words.sentence(rng) for _ in range(int(rng.integers(2, 7)))
        )
        paragraphs.append(paragraph)
        size += len(paragraph.encode("utf-8")) + 2
    return "\n\n".join(paragraphs)


def near_duplicate(text: str, words: Words, rng: np.random.Generator) -> str:
    """``text`` with one word in EDIT_EVERY (at least one) replaced by another word of the vocabulary."""
    if words.spaced:
        tokens = text.split(" ")
        for i in rng.choice(len(tokens), size=max(1, len(tokens) // EDIT_EVERY), replace=False):
            tokens[i] = words.words[int(rng.integers(len(words.words)))]
        return " ".join(tokens)
    chars = list(text)
    positions = [i for i, ch in enumerate(chars) if "\u4e00" <= ch <= "\u9fff"]
    for i in rng.choice(positions, size=max(1, len(positions) // (EDIT_EVERY * 2)), replace=False):
        chars[i] = "变" if chars[i] != "变" else "化"
    return "".join(chars)


def add_noise(text: str, rng: np.random.Generator) -> str:
    """Colour codes around a few words and hard wraps at WRAP characters, as ``grep --color`` or
    ``fold`` leave them."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        lines = [paragraph[i : i + WRAP] for i in range(0, len(paragraph), WRAP)]
        if rng.random() < 0.3:  # a colour code around a few characters of one line
            k = int(rng.integers(len(lines)))
            cut = int(rng.integers(0, max(1, len(lines[k]) - 4)))
            line, code = lines[k], str(rng.choice(ESCAPES))
            lines[k] = line[:cut] + code + line[cut : cut + 4] + RESET + line[cut + 4 :]
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def generate(
    words: Words,
    total_bytes: int,
    seed: int = 0,
    near_dup: float = 0.05,
    exact_dup: float = 0.02,
    noise: bool = False,
):
    """Documents until ``total_bytes``: (text, kind) with kind ``original``, ``near`` or ``exact``."""
    rng = np.random.default_rng(seed)
    originals: list[str] = []
    size = 0
    while size < total_bytes:
        draw = rng.random()
        if originals and draw < near_dup:
            text, kind = near_duplicate(originals[int(rng.integers(len(originals)))], words, rng), "near"
        elif originals and draw < near_dup + exact_dup:
            text, kind = originals[int(rng.integers(len(originals)))], "exact"
        else:
            length = min(100_000, max(200, int(rng.lognormal(math.log(MEDIAN_BYTES), 1.0))))
            text, kind = document(words, rng, length), "original"
            originals.append(text)
            if len(originals) > 2000:  # copies come from the recent past: bounded generator memory
                originals.pop(int(rng.integers(len(originals))))
        if noise:
            text = add_noise(text, rng)
        size += len(text.encode("utf-8"))
        yield text, kind


def _open(path: Path, compress: str | None):
    if compress == "gz":
        return gzip.open(path, "wt", encoding="utf-8")
    if compress == "zst":
        import zstandard

        return zstandard.open(path, "wt", encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def write_corpus(
    out_dir: Path,
    megabytes: float,
    lang: str = "en",
    file_mb: float = 16.0,
    compress: str | None = None,
    **options,
) -> dict[str, int]:
    """JSON Lines files of generated documents in ``out_dir``; returns counts by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    words = chinese_words() if lang == "zh" else english_words()
    suffix = ".jsonl" + (f".{compress}" if compress else "")
    counts = {"original": 0, "near": 0, "exact": 0, "bytes": 0}
    handle, part, written = None, 0, 0
    for text, kind in generate(words, int(megabytes * 1e6), **options):
        if handle is None or written >= file_mb * 1e6:
            if handle is not None:
                handle.close()
            handle = _open(out_dir / f"part-{part:05d}{suffix}", compress)
            part, written = part + 1, 0
        line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
        handle.write(line)
        written += len(line.encode("utf-8"))
        counts[kind] += 1
        counts["bytes"] += len(text.encode("utf-8"))
    if handle is not None:
        handle.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--mb", type=float, default=10.0, help="MB of document text")
    parser.add_argument("--lang", choices=("en", "zh"), default="en")
    parser.add_argument("--near-dup", type=float, default=0.05, help="share of near duplicates")
    parser.add_argument("--exact-dup", type=float, default=0.02, help="share of exact duplicates")
    parser.add_argument("--noise", action="store_true", help="ANSI colour codes and hard wraps")
    parser.add_argument("--file-mb", type=float, default=16.0)
    parser.add_argument("--compress", choices=("gz", "zst"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = write_corpus(
        args.out_dir,
        args.mb,
        args.lang,
        args.file_mb,
        args.compress,
        seed=args.seed,
        near_dup=args.near_dup,
        exact_dup=args.exact_dup,
        noise=args.noise,
    )
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
