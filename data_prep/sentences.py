"""Sentence splitting with Bling Fire (Microsoft's maintained C++ tokenizer).

BERT's pair construction works on sentences ("actual sentences" in the paper's words, one per line
in create_pretraining_data.py's input), so every cleaned document is split here. A paragraph break
(or, without ``unwrap_lines``, a line break) is always a sentence break: Bling Fire reads "\\n" as a
space but ends a sentence at U+2029 PARAGRAPH SEPARATOR, so the whole document goes through in one
call with that character between lines (one call per line costs ~20 us each in ctypes buffers,
which made splitting the slowest step of cleaning).
"""

from __future__ import annotations

from typing import Iterable

import blingfire

PARAGRAPH_SEPARATOR = "\u2029"  # cleaning maps it to "\n", so cleaned text never contains it


def split_sentences(paragraphs: Iterable[str]) -> list[str]:
    """Sentences of the paragraphs, in order; each line of a paragraph splits separately."""
    text = PARAGRAPH_SEPARATOR.join(line for paragraph in paragraphs for line in paragraph.split("\n"))
    sentences = blingfire.text_to_sentences(text).split("\n")
    return [s for s in (raw.replace(PARAGRAPH_SEPARATOR, " ").strip() for raw in sentences) if s]
