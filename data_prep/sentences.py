"""Sentence splitting with Bling Fire (Microsoft's maintained C++ tokenizer).

BERT's pair construction works on sentences ("actual sentences" in the paper's words, one per line
in create_pretraining_data.py's input), so every cleaned document is split here. A paragraph break
(or, without ``unwrap_lines``, a line break) is always a sentence break: Bling Fire reads "\\n" as a
space but ends a sentence at U+2029 PARAGRAPH SEPARATOR, so the whole document goes through in one
call with that character between lines (one call per line costs ~20 us each in ctypes buffers,
which made splitting the slowest step of cleaning).

Bling Fire ends Chinese and Japanese sentences at 。！？ and their full-width forms, but puts the
closing quotes and brackets that follow (。” or ！」) at the start of the next sentence;
``_reattach_closers`` moves them back. Western closers after ". ! ?" Bling Fire already keeps.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterable

import blingfire

PARAGRAPH_SEPARATOR = "\u2029"  # cleaning maps it to "\n", so cleaned text never contains it
# Sentence-final punctuation of CJK text (ideographic, full-width and half-width full stop, "!", "?")
# and the closing quotes and brackets that may follow it.
_CJK_END = "\u3002\uff01\uff1f\uff0e\uff61"
_CLOSERS = re.compile(
    "[\u201d\u2019\u300d\u300f\u3011\u3015\u3017\u3019\u300b\u3009\uff09\uff3d\uff5d\uff63\")\\]']+"
)


class _SentenceBreaker:
    """``blingfire.text_to_sentences`` with a reused output buffer: the package's wrapper makes a new
    ctypes buffer type per call (~20 us), which dominated on short documents. Same C function."""

    def __init__(self):
        self.buffer = ctypes.create_string_buffer(1 << 16)

    def __call__(self, text: str) -> str | None:
        data = text.encode("utf-8")
        if 2 * len(data) + 1 > len(self.buffer):  # blingfire's own wrapper allows 2x the input
            self.buffer = ctypes.create_string_buffer(2 * len(data) + 1)
        size = blingfire.blingfire.TextToSentences(
            ctypes.c_char_p(data),
            ctypes.c_int(len(data)),
            ctypes.byref(self.buffer),
            ctypes.c_int(len(self.buffer)),
        )
        if size < 0 or size > len(self.buffer):
            return None
        return ctypes.string_at(self.buffer, max(size - 1, 0)).decode("utf-8")  # size counts the final NUL


_break_sentences = _SentenceBreaker()


def _reattach_closers(sentences: list[str]) -> list[str]:
    """Closing quotes/brackets that Bling Fire split off after CJK end punctuation go back to the
    sentence they close: ["他问：“是吗？", "”我说。"] -> ["他问：“是吗？”", "我说。"]."""
    out: list[str] = []
    for sentence in sentences:
        closers = _CLOSERS.match(sentence) if out and out[-1][-1:] in _CJK_END else None
        if closers:
            out[-1] += closers.group()
            sentence = sentence[closers.end() :].lstrip()
            if not sentence:
                continue
        out.append(sentence)
    return out


def split_sentences(paragraphs: Iterable[str]) -> list[str]:
    """Sentences of the paragraphs, in order; each line of a paragraph splits separately."""
    lines = [line for paragraph in paragraphs for line in paragraph.split("\n")]
    text = PARAGRAPH_SEPARATOR.join(lines)
    split = _break_sentences(text) if text else ""
    sentences = split.split("\n") if split is not None else lines  # on a blingfire error: lines
    stripped = [s for s in (raw.replace(PARAGRAPH_SEPARATOR, " ").strip() for raw in sentences) if s]
    return _reattach_closers(stripped) if not text.isascii() else stripped
