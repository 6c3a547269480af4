"""Text cleaning: mojibake repair, Unicode NFC, control characters, whitespace, length and junk filters.

``clean_document`` returns the cleaned paragraphs of a document or the reason it is dropped. The
order is chosen for speed on real corpora: the length guard runs before anything else (a single
100 MB line costs one ``len``), ftfy only sees text that is not pure ASCII (ASCII cannot hold
mojibake, and ftfy runs at a few MB/s), and NFC only runs when ``unicodedata.is_normalized`` says so.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

import ftfy

from data_prep.config import CleanConfig

# Line and paragraph separators other than "\n" (str.splitlines' set, minus the ones we keep).
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# C0/C1 controls except tab and newline, byte-order marks, non-characters, and U+FFFD left by some
# other tool's failed decode.
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x9f\ufeff\ufffe\uffff\ufffd]")
# Lone surrogates (JSON "\ud800" escapes) cannot be encoded, so ftfy and the hashers must not see them.
_SURROGATES = re.compile("[\ud800-\udfff]")
_LETTER_RUNS = re.compile(r"[^\W\d_]+")
_ASCII_LETTERS = string.ascii_letters.encode()


@dataclass(frozen=True)
class Cleaned:
    paragraphs: tuple[str, ...]
    chars: int
    """Length of the cleaned text (paragraphs joined by blank lines)."""
    fixed_mojibake: bool = False

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


def _letter_count(text: str) -> int:
    if text.isascii():
        data = text.encode("ascii")
        return len(data) - len(data.translate(None, _ASCII_LETTERS))
    return sum(map(len, _LETTER_RUNS.findall(text)))


def _paragraphs(text: str, unwrap_lines: bool) -> list[str]:
    """Blank-line-separated paragraphs with all whitespace runs collapsed to one space; with
    ``unwrap_lines`` the lines of a paragraph are joined, otherwise each line stays a line."""
    paragraphs, block = [], []
    for line in text.split("\n"):
        words = line.split()  # splits on every Unicode space (NBSP, ideographic space, tabs...)
        if words:
            block.append(" ".join(words))
        elif block:
            paragraphs.append(block)
            block = []
    if block:
        paragraphs.append(block)
    joiner = " " if unwrap_lines else "\n"
    return [joiner.join(lines) for lines in paragraphs]


def clean_document(text: str, config: CleanConfig) -> Cleaned | str:
    """The cleaned document, or the reason it is dropped: ``too_long``, ``too_short`` or ``junk``."""
    if len(text) > config.max_chars:
        return "too_long"
    fixed = False
    if not text.isascii():
        text = _SURROGATES.sub("", text)
        # ftfy before removing C1 controls: UTF-8 read as latin-1 shows up as C1 characters
        # ("\xe2\x80\x99" for a right quote), which is the evidence it repairs from.
        if config.fix_mojibake:
            repaired = ftfy.fix_encoding(text)
            fixed = repaired != text
            text = repaired
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _CONTROLS.sub("", text)
    paragraphs = _paragraphs(text, config.unwrap_lines)
    chars = sum(map(len, paragraphs)) + 2 * max(len(paragraphs) - 1, 0)
    if chars < config.min_chars or not paragraphs:
        return "too_short"
    if chars > config.max_chars:
        return "too_long"
    spaces = sum(p.count(" ") + p.count("\n") for p in paragraphs)
    visible = chars - 2 * (len(paragraphs) - 1) - spaces
    letters = sum(_letter_count(p) for p in paragraphs)
    if visible <= 0 or letters < config.min_alpha_ratio * visible:
        return "junk"
    return Cleaned(tuple(paragraphs), chars, fixed)
