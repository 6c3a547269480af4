"""Raw inputs: expanding paths into a canonical list, planning chunks, and reading documents.

Canonical order comes from the inputs alone: input entries in the order given, each folder or
glob expanded and sorted, documents in file order. Big splittable files (``.jsonl``, ``.txt`` in
paragraph or line mode) are cut into byte ranges that start on a document boundary and small files
are grouped, so that every chunk holds about ``chunk_mb`` of input whatever the number of workers
or ranks. A ``.jsonl.gz`` file cannot be cut without decompressing it: ship big corpora as many
files, as The Pile and C4 do.

Bad input never stops a run: a reader yields a ``Reject`` (source, line, reason) for anything it
cannot turn into text, and the caller counts it. Only a path that matches nothing is an error, and
only when the config says so (``text.missing_inputs``).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_prep.config import PYDOCS_INPUT

BINARY_PROBE_BYTES = 8192  # as git and grep do: a NUL byte in the first 8 KiB means binary
GLOB_CHARS = frozenset("*?[")

PieceKind = Literal["txt_file", "txt_paragraphs", "txt_lines", "jsonl", "jsonl_gz", "docs_json", "rejected"]


class InputError(ValueError):
    """A user-caused input problem (missing path, unsupported file type); one line with the fix."""


def _cp1252_fallback(error: UnicodeDecodeError) -> tuple[str, int]:
    """Decode bytes that are not UTF-8 as Windows-1252, the commonest legacy encoding of Western
    text (WHATWG maps the label latin-1 to it), so "caf\\xe9" becomes "café" instead of "caf�"."""
    chars = []
    for byte in error.object[error.start : error.end]:
        try:
            chars.append(bytes([byte]).decode("cp1252"))
        except UnicodeDecodeError:  # the 5 bytes cp1252 leaves undefined: C1 controls, removed later
            chars.append(chr(byte))
    return "".join(chars), error.end


codecs.register_error("data_prep_cp1252", _cp1252_fallback)


def decode_text(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text of ``raw`` and whether any invalid byte had to be repaired."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="data_prep_cp1252"), True


@dataclass(frozen=True)
class Document:
    source: str
    """The file (or ``pydocs:<module>``) the document comes from."""
    line: int | None
    """Line it starts on, for documents that are a part of a file."""
    text: str
    repaired: bool = False
    """Invalid UTF-8 bytes were decoded as cp1252 (counted as ``repaired_invalid_utf8``)."""

    @property
    def source_id(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str
    line: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class Piece:
    """A part of one input: a whole file, a byte range of one, a file of pydocs documents, or a
    rejected input (missing path, binary or empty file) that still counts as one dropped unit."""

    kind: PieceKind
    path: str
    nbytes: int
    start: int = 0
    end: int = 0
    first_line: int = 1
    reason: str = ""


@dataclass(frozen=True)
class Chunk:
    """The unit of parallel work and of resume: consecutive pieces holding about ``chunk_mb``."""

    index: int
    pieces: tuple[Piece, ...] = field(default_factory=tuple)

    @property
    def nbytes(self) -> int:
        return sum(piece.nbytes for piece in self.pieces)


@dataclass(frozen=True)
class ExpandedInput:
    """One entry of ``inputs`` after expansion: the pydocs corpus, a missing path, or files."""

    entry: str
    files: tuple[str, ...] = ()
    pydocs: bool = False
    missing: bool = False


def file_kind(path: str, txt_mode: str) -> PieceKind | None:
    name = path.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl_gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".txt"):
        return {"file": "txt_file", "paragraph": "txt_paragraphs", "line": "txt_lines"}[txt_mode]
    return None


def _supported_files_below(directory: str) -> list[str]:
    found = []
    for parent, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(parent, n) for n in names if not n.startswith(".") and file_kind(n, "file"))
    return sorted(os.path.normpath(p) for p in found)


def expand_inputs(inputs: list[str]) -> list[ExpandedInput]:
    """Expand each entry into sorted supported files; a file listed twice is read once (first place)."""
    seen: set[str] = set()
    expanded = []
    for entry in inputs:
        if entry == PYDOCS_INPUT:
            if PYDOCS_INPUT not in seen:
                seen.add(PYDOCS_INPUT)
                expanded.append(ExpandedInput(entry, pydocs=True))
            continue
        if os.path.isdir(entry):
            candidates = _supported_files_below(entry)
        elif os.path.isfile(entry):
            if file_kind(entry, "file") is None:
                raise InputError(
                    f"input {entry!r} is not a .txt, .jsonl or .jsonl.gz file "
                    "(convert it, e.g. one document per line to .txt with text.txt_mode=line)"
                )
            candidates = [os.path.normpath(entry)]
        elif GLOB_CHARS & set(entry):
            candidates = []
            for match in sorted(glob.glob(entry, recursive=True)):
                if os.path.isdir(match):
                    candidates.extend(_supported_files_below(match))
                elif file_kind(match, "file"):
                    candidates.append(os.path.normpath(match))
        else:
            candidates = []
        files = tuple(path for path in candidates if path not in seen)
        seen.update(files)
        expanded.append(ExpandedInput(entry, files=files, missing=not candidates))
    return expanded


def _probe_file(path: str) -> str | None:
    """Why ``path`` cannot be read as text (``empty_file``, ``binary_file``, ``unreadable``), or None."""
    try:
        if os.path.getsize(path) == 0:
            return "empty_file"
        with open(path, "rb") as handle:
            head = handle.read(BINARY_PROBE_BYTES)
    except OSError:
        return "unreadable"
    if path.lower().endswith(".gz"):
        try:
            head = zlib.decompressobj(wbits=31).decompress(head)  # gzip header + first bytes
        except zlib.error:
            return "corrupt_gzip"
    return "binary_file" if b"\0" in head else None


def _next_boundary(handle, target: int, paragraphs: bool) -> int | None:
    """The first document start at or after byte ``target``: a line start (jsonl), or a non-blank
    line right after a blank one (paragraph mode). None when the file ends first."""
    handle.seek(target - 1)
    handle.readline()  # finish the line holding byte target-1: we now stand on a line start
    seen_blank = False
    while True:
        line_start = handle.tell()
        line = handle.readline()
        if not line:
            return None
        if not paragraphs:
            return line_start
        if line.strip():
            if seen_blank:
                return line_start
        else:
            seen_blank = True


def _count_newlines(handle, start: int, end: int, block: int = 1 << 22) -> int:
    handle.seek(start)
    count, left = 0, end - start
    while left > 0:
        data = handle.read(min(block, left))
        if not data:
            break
        count += data.count(b"\n")
        left -= len(data)
    return count


def file_pieces(path: str, kind: PieceKind, chunk_bytes: int) -> list[Piece]:
    """Cut one input file into pieces of about ``chunk_bytes`` that start on a document boundary."""
    reason = _probe_file(path)
    size = os.path.getsize(path) if reason != "unreadable" else 0
    if reason is not None:
        return [Piece("rejected", path, size, reason=reason)]
    if kind not in ("jsonl", "txt_lines", "txt_paragraphs") or size <= chunk_bytes:
        return [Piece(kind, path, size, 0, size, 1)]
    pieces = []
    with open(path, "rb") as handle:
        start, line = 0, 1
        while True:
            target = start + chunk_bytes
            boundary = _next_boundary(handle, target, kind == "txt_paragraphs") if target < size else None
            end = size if boundary is None else boundary
            pieces.append(Piece(kind, path, end - start, start, end, line))
            if boundary is None:
                return pieces
            line += _count_newlines(handle, start, end)
            start = end


# ---------------------------------------------------------------------------------------------
# Readers: a piece -> documents and rejects, in file order.


def _paragraphs(data: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
    """Blank-line-separated blocks of ``data`` with the line number each starts on."""
    block: list[bytes] = []
    block_line = first_line
    for number, line in enumerate(data.split(b"\n"), start=first_line):
        if line.strip():
            if not block:
                block_line = number
            block.append(line)
        elif block:
            yield block_line, b"\n".join(block)
            block = []
    if block:
        yield block_line, b"\n".join(block)


def _read_range(path: str, start: int, end: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


def _jsonl_document(path: str, number: int, line: bytes, field_name: str) -> Document | Reject:
    repaired = False
    try:
        obj = json.loads(line)
    except UnicodeDecodeError:
        text, repaired = decode_text(line)
        try:
            obj = json.loads(text)
        except ValueError as err:
            return Reject(path, "bad_json", number, str(err)[:200])
    except ValueError as err:
        return Reject(path, "bad_json", number, str(err)[:200])
    value = obj.get(field_name) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        what = "not a JSON object" if not isinstance(obj, dict) else f"no string field {field_name!r}"
        return Reject(path, "missing_field", number, what)
    return Document(path, number, value, repaired)


def _read_jsonl_lines(path: str, lines, first_line: int, field_name: str) -> Iterator[Document | Reject]:
    for number, line in enumerate(lines, start=first_line):
        if line.strip():  # blank lines separate nothing in JSON Lines; they are not documents
            yield _jsonl_document(path, number, line, field_name)


def read_piece(piece: Piece, jsonl_field: str) -> Iterator[Document | Reject]:
    """Documents and rejects of one piece, in file order."""
    if piece.kind == "rejected":
        yield Reject(piece.path, piece.reason)
        return
    try:
        if piece.kind == "txt_file":
            text, repaired = decode_text(Path(piece.path).read_bytes())
            yield Document(piece.path, None, text, repaired)
        elif piece.kind == "txt_paragraphs":
            for number, raw in _paragraphs(_read_range(piece.path, piece.start, piece.end), piece.first_line):
                text, repaired = decode_text(raw)
                yield Document(piece.path, number, text, repaired)
        elif piece.kind == "txt_lines":
            lines = _read_range(piece.path, piece.start, piece.end).split(b"\n")
            for number, raw in enumerate(lines, start=piece.first_line):
                if raw.strip():
                    text, repaired = decode_text(raw)
                    yield Document(piece.path, number, text, repaired)
        elif piece.kind == "jsonl":
            lines = _read_range(piece.path, piece.start, piece.end).split(b"\n")
            yield from _read_jsonl_lines(piece.path, lines, piece.first_line, jsonl_field)
        elif piece.kind == "jsonl_gz":
            yield from _read_jsonl_gz(piece.path, jsonl_field)
        elif piece.kind == "docs_json":
            stored = json.loads(Path(piece.path).read_text(encoding="utf-8"))
            for source, reason in stored["rejects"]:
                yield Reject(source, reason)
            for source_id, text in stored["docs"]:
                yield Document(source_id, None, text)
        else:
            raise ValueError(f"unknown piece kind {piece.kind!r}")
    except OSError as err:  # deleted or unreadable after planning: counted, never fatal
        yield Reject(piece.path, "unreadable", None, str(err)[:200])


def _read_jsonl_gz(path: str, field_name: str) -> Iterator[Document | Reject]:
    number = 0
    try:
        with gzip.open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _jsonl_document(path, number, line, field_name)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # truncated or corrupt: keep what was read
        yield Reject(path, "corrupt_gzip", number + 1, str(err)[:200])
