"""Raw inputs: expanding paths into a canonical list, planning chunks, and reading documents.

Canonical order comes from the inputs alone: input entries in the order given, each folder or
glob expanded and sorted, documents in file order. Big splittable files (``.jsonl``, ``.txt`` in
paragraph or line mode) are cut into byte ranges that start on a document boundary and small files
are grouped, so that every chunk holds about ``chunk_mb`` of input whatever the number of workers
or ranks. Compressed files (``.gz``, ``.zst`` after ``.jsonl`` or ``.txt``) cannot be cut without
decompressing them: one bigger than ``chunk_mb`` is decompressed once at planning, in a stream,
into parts of about ``chunk_mb`` cut on document boundaries in the work dir (so their cleaning is
shared by all workers and ranks; the disk cost is the decompressed size, until the run ends), and
a smaller one is decompressed by the worker that reads it. Either way a document's source and line
are those of the compressed file.

Bad input never stops a run: a reader yields a ``Reject`` (source, line, reason) for anything it
cannot turn into text, and the caller counts it. Only a path that matches nothing is an error, and
only when the config says so (``text.missing_inputs``).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_prep.config import PYDOCS_INPUT

BINARY_PROBE_BYTES = 8192  # as git and grep do: a NUL byte in the first 8 KiB means binary
GLOB_CHARS = frozenset("*?[")

PieceKind = Literal["txt_file", "txt_paragraphs", "txt_lines", "jsonl", "docs_json", "rejected"]
COMPRESSIONS = (".gz", ".zst")
CORRUPT = "corrupt_gzip"  # the drop reason of a truncated or corrupt compressed file (gzip or zstd)
SPLIT_BLOCK = 1 << 20  # bytes decompressed at a time while splitting


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
    source: str = ""
    """The input file the documents come from when ``path`` is a decompressed part of it."""
    detail: str = ""
    """Why a ``rejected`` piece was rejected, in more words."""
    input: int = 0
    """Which entry of ``inputs`` the piece comes from (its position): the report counts by input."""

    @property
    def source_path(self) -> str:
        return self.source or self.path


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


def compression(path: str) -> str:
    """``.gz``, ``.zst`` or "" (not compressed)."""
    name = path.lower()
    return next((suffix for suffix in COMPRESSIONS if name.endswith(suffix)), "")


def file_kind(path: str, txt_mode: str) -> PieceKind | None:
    """How a file is read, by its name (a compressed file by the name inside: ``x.jsonl.zst``)."""
    name = path.lower()
    name = name[: len(name) - len(compression(name))]
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
                    f"input {entry!r} is not a .txt or .jsonl file (optionally .gz or .zst) "
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
    if compression(path):
        try:
            head = next(_decompressed_blocks(path, BINARY_PROBE_BYTES), b"")[:BINARY_PROBE_BYTES]
        except _CorruptInput:
            return CORRUPT
    return "binary_file" if b"\0" in head else None


class _CorruptInput(Exception):
    """A compressed file that ends early or does not decompress."""


def _decompressed_blocks(path: str, block: int = SPLIT_BLOCK) -> Iterator[bytes]:
    """The decompressed bytes of a ``.gz`` or ``.zst`` file (any number of members or frames), in
    blocks; ``_CorruptInput`` where it breaks, after everything before the break."""
    import zstandard

    try:
        if compression(path) == ".gz":
            with gzip.open(path, "rb") as handle:
                # read1: what one read of the compressed file gives, so a break loses only that much
                while data := handle.read1(block):
                    yield data
            return
        # zstd by hand: its stream reader ends quietly at a truncated frame; a decompressobj says so
        context = zstandard.ZstdDecompressor()
        with open(path, "rb") as raw:
            frame, inside = context.decompressobj(), False
            while compressed := raw.read(block):
                while compressed:
                    inside = True
                    if data := frame.decompress(compressed):
                        yield data
                    compressed = b""
                    if frame.eof:  # the next frame may start in the same read
                        compressed, frame, inside = frame.unused_data, context.decompressobj(), False
            if inside:
                raise zstandard.ZstdError("the file ends inside a zstd frame")
    except (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as err:
        raise _CorruptInput(str(err)[:200] or type(err).__name__) from None


_BLANK_LINE_END = re.compile(rb"\n[ \t\r\f\v]*\n")


def _last_boundary(data: bytes, paragraphs: bool) -> int:
    """The end of the last whole document in ``data`` (0 when there is none)."""
    if not paragraphs:
        return data.rfind(b"\n") + 1
    ends = [m.end() for m in _BLANK_LINE_END.finditer(data)]
    return ends[-1] if ends else 0


def _boundary_after(data: bytes, target: int, paragraphs: bool) -> int | None:
    """The first document start at or after byte ``target`` of ``data``, if there is one."""
    if paragraphs:
        found = _BLANK_LINE_END.search(data, max(0, target - 1))
        return found.end() if found else None
    end = data.find(b"\n", max(0, target - 1))
    return end + 1 if end >= 0 else None


def split_compressed(path: str, kind: PieceKind, chunk_bytes: int, directory: str) -> list[Piece]:
    """Decompress ``path`` into files of about ``chunk_bytes`` in ``directory``, cut on document
    boundaries, as pieces whose documents keep ``path``'s name and line numbers. A corrupt stream
    keeps the whole documents before the break and ends with a rejected piece."""
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(
        directory, hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    )
    pieces: list[Piece] = []
    line = 1

    def flush(data: bytes) -> None:
        nonlocal line
        part = f"{stem}-{len(pieces):05d}{'.jsonl' if kind == 'jsonl' else '.txt'}"
        with open(part, "wb") as handle:
            handle.write(data)
        pieces.append(Piece(kind, part, len(data), 0, len(data), line, source=path))
        line += data.count(b"\n")

    buffer = b""
    try:
        for block in _decompressed_blocks(path):
            buffer += block
            while len(buffer) > chunk_bytes:
                cut = _boundary_after(buffer, chunk_bytes, kind == "txt_paragraphs")
                if cut is None or cut == len(buffer):
                    break
                flush(buffer[:cut])
                buffer = buffer[cut:]
    except _CorruptInput as err:
        if kind != "txt_file":
            buffer = buffer[: _last_boundary(buffer, kind == "txt_paragraphs")]  # whole documents only
        if buffer:
            flush(buffer)
        return [*pieces, Piece("rejected", path, 0, first_line=line, reason=CORRUPT, detail=str(err))]
    if buffer:
        flush(buffer)
    return pieces


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


def file_pieces(path: str, kind: PieceKind, chunk_bytes: int, split_dir: str | None = None) -> list[Piece]:
    """Cut one input file into pieces of about ``chunk_bytes`` that start on a document boundary; a
    compressed one is decompressed into ``split_dir`` (see ``split_compressed``) if it is given."""
    reason = _probe_file(path)
    size = os.path.getsize(path) if reason != "unreadable" else 0
    if reason is not None:
        return [Piece("rejected", path, size, reason=reason)]
    if kind not in ("jsonl", "txt_lines", "txt_paragraphs") or size <= chunk_bytes:
        return [Piece(kind, path, size, 0, size, 1)]
    if compression(path):
        if split_dir is None:
            return [Piece(kind, path, size, 0, size, 1)]
        return split_compressed(path, kind, chunk_bytes, split_dir)
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


def _piece_bytes(piece: Piece) -> tuple[bytes, Reject | None]:
    """The piece's bytes (a small compressed file decompressed whole) and, for a compressed file that
    breaks off, the whole documents before the break plus the reject that counts the break."""
    if not compression(piece.path):
        return _read_range(piece.path, piece.start, piece.end), None
    blocks: list[bytes] = []
    try:
        blocks.extend(_decompressed_blocks(piece.path))
    except _CorruptInput as err:
        data = b"".join(blocks)
        if piece.kind != "txt_file":
            data = data[: _last_boundary(data, piece.kind == "txt_paragraphs")]
        return data, Reject(piece.path, CORRUPT, piece.first_line + data.count(b"\n"), str(err))
    return b"".join(blocks), None


def read_piece(piece: Piece, jsonl_field: str) -> Iterator[Document | Reject]:
    """Documents and rejects of one piece, in file order."""
    source = piece.source_path
    if piece.kind == "rejected":
        line = piece.first_line if piece.reason == CORRUPT else None
        yield Reject(source, piece.reason, line, piece.detail)
        return
    try:
        if piece.kind == "docs_json":
            stored = json.loads(Path(piece.path).read_text(encoding="utf-8"))
            for source_id, reason in stored["rejects"]:
                yield Reject(source_id, reason)
            for source_id, text in stored["docs"]:
                yield Document(source_id, None, text)
            return
        data, broken = _piece_bytes(piece)
        if piece.kind == "txt_file":
            text, repaired = decode_text(data)
            yield Document(source, None, text, repaired)
        elif piece.kind == "txt_paragraphs":
            for number, raw in _paragraphs(data, piece.first_line):
                text, repaired = decode_text(raw)
                yield Document(source, number, text, repaired)
        elif piece.kind == "txt_lines":
            for number, raw in enumerate(data.split(b"\n"), start=piece.first_line):
                if raw.strip():
                    text, repaired = decode_text(raw)
                    yield Document(source, number, text, repaired)
        elif piece.kind == "jsonl":
            yield from _read_jsonl_lines(source, data.split(b"\n"), piece.first_line, jsonl_field)
        else:
            raise ValueError(f"unknown piece kind {piece.kind!r}")
        if broken is not None:
            yield broken
    except OSError as err:  # deleted or unreadable after planning: counted, never fatal
        yield Reject(source, "unreadable", None, str(err)[:200])
