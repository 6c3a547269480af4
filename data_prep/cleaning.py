"""Text cleaning: terminal escapes, mojibake repair, Unicode NFC, control characters, whitespace
(hard-wrapped lines joined as their script needs), length and junk filters.

``clean_document`` returns the cleaned paragraphs of a document or the reason it is dropped. The
order is chosen for speed on real corpora: the length guard runs before anything else (a single
100 MB line costs one ``len``), ftfy only sees text that is not pure ASCII (ASCII cannot hold
mojibake, and ftfy runs at a few MB/s), and NFC only runs when ``unicodedata.is_normalized`` says so.
"""

from __future__ import annotations

import itertools
import re
import string
import unicodedata
from dataclasses import dataclass

import ftfy
from ftfy.fixes import ANSI_RE

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
# Characters of the scripts written without spaces between words, where a line break inside a
# paragraph is no space: Han, kana, bopomofo, Yi, CJK punctuation and the full-width forms (the
# CSS Text 3 segment-break rule: East Asian Wide/Full/Half-width, Hangul excluded, since Korean
# puts spaces between words).
CJK_CHARS = (
    "\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua000-\ua4cf\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff9f\uffe0-\uffee\U00020000-\U0003ffff"
)
CJK_CHAR = re.compile(f"[{CJK_CHARS}]")  # one character of those scripts
# The Han ideographs among them (CJK Unified Ideographs, Extension A, compatibility ideographs, the
# supplementary planes): what Chinese BERT's vocabulary, and tokenizer.split_ideographs, keeps apart.
HAN_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
# East-Asian-ambiguous punctuation (curly quotes, ellipsis, dashes) next to a CJK character: no space
# either (CSS Text 3's second segment-break rule), so "说：“" + "你好" joins as "说：“你好".
_AMBIGUOUS_PUNCTUATION = re.compile("[\u2010-\u2027]")


@dataclass(frozen=True)
class Cleaned:
    paragraphs: tuple[str, ...]
    chars: int
    """Length of the cleaned text (paragraphs joined by blank lines)."""
    fixed_mojibake: bool = False
    terminal_escapes: int = 0
    """ANSI escape sequences (``ESC[33m`` colour codes...) removed whole."""

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


def _letter_count(text: str) -> int:
    if text.isascii():
        data = text.encode("ascii")
        return len(data) - len(data.translate(None, _ASCII_LETTERS))
    return sum(map(len, _LETTER_RUNS.findall(text)))


def joiner(before: str, after: str) -> str:
    """What goes between two pieces of running text (hard-wrapped lines here, the words of a tagged
    sentence in fine-tuning) ending and starting with these characters: nothing between CJK characters
    (a space there would be a word break the text never had), a space everywhere else (Latin,
    Cyrillic, Hangul...)."""
    if before < "\u2010" or after < "\u2010":  # ASCII, Latin, Greek, Cyrillic...: the common case, fast
        return " "
    if CJK_CHAR.match(before):
        return "" if CJK_CHAR.match(after) or _AMBIGUOUS_PUNCTUATION.match(after) else " "
    return "" if CJK_CHAR.match(after) and _AMBIGUOUS_PUNCTUATION.match(before) else " "


def _join_lines(lines: list[str]) -> str:
    joined = [lines[0]]
    for before, after in itertools.pairwise(lines):
        joined += (joiner(before[-1], after[0]), after)
    return "".join(joined)


def _paragraphs(text: str, unwrap_lines: bool) -> list[str]:
    """Blank-line-separated paragraphs with all whitespace runs collapsed to one space; with
    ``unwrap_lines`` the lines of a paragraph are joined (see ``joiner``), otherwise each line
    stays a line."""
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
    if not unwrap_lines:
        return ["\n".join(lines) for lines in paragraphs]
    return [_join_lines(lines) for lines in paragraphs]


def clean_document(text: str, config: CleanConfig) -> Cleaned | str:
    """The cleaned document, or the reason it is dropped: ``too_long``, ``too_short`` or ``junk``."""
    if len(text) > config.max_chars:
        return "too_long"
    fixed = False
    escapes = 0
    if "\x1b" in text:  # ftfy's pattern: removed whole, not just the ESC that _CONTROLS would take
        text, escapes = ANSI_RE.subn("", text)
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
    return Cleaned(tuple(paragraphs), chars, fixed, escapes)
