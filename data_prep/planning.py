"""The plan: inputs -> a canonical list of chunks, identical whatever the number of workers or ranks.

Files are cut and grouped by ``sources.file_pieces``; the ``pydocs`` corpus is extracted here
(parsing runs on the worker pool, ordering and docstring dedup in this process, see
``pydocs.iter_pydocs``) and stored as document files in the work dir, so that its chunks look like
any other and a resumed run does not parse the environment again.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from typing import Any

from data_prep.config import PrepConfig
from data_prep.progress import Progress
from data_prep.pydocs import Extracted, iter_pydocs, source_roots
from data_prep.sources import Chunk, ExpandedInput, InputError, Piece, file_kind, file_pieces
from data_prep.workdir import WorkDir, load_json, save_json


def check_missing(expanded: list[ExpandedInput], config: PrepConfig) -> None:
    missing = [item.entry for item in expanded if item.missing]
    if missing and config.text.missing_inputs == "error":
        raise InputError(
            f"input {missing[0]!r} matches no .txt or .jsonl file (optionally .gz or .zst)"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; fix the path, or set text.missing_inputs=skip to count it as dropped and go on"
        )


def input_fingerprint(expanded: list[ExpandedInput]) -> list[Any]:
    """What the inputs look like without reading them: names, sizes, mtimes (the work-dir key)."""
    fingerprint: list[Any] = []
    for item in expanded:
        if item.pydocs:
            roots = [[str(root), root.stat().st_mtime_ns] for root in source_roots()]
            fingerprint.append(["pydocs", sys.version, roots])
        elif item.missing:
            fingerprint.append(["missing", item.entry])
        else:
            for path in item.files:
                try:
                    stat = os.stat(path)
                    fingerprint.append([path, stat.st_size, stat.st_mtime_ns])
                except OSError:
                    fingerprint.append([path, None, None])
    return fingerprint


def _pydocs_pieces(
    config: PrepConfig, work: WorkDir, map_fn: Callable, chunk_bytes: int, show: bool
) -> list[Piece]:
    pieces: list[Piece] = []
    docs: list[list[str]] = []
    rejects: list[list[str]] = []
    nbytes = 0

    def flush() -> None:
        nonlocal docs, rejects, nbytes
        path = work.pydocs_docs(len(pieces))
        save_json(path, {"docs": docs, "rejects": rejects})
        pieces.append(Piece("docs_json", str(path), nbytes))
        docs, rejects, nbytes = [], [], 0

    def skipped(result: Extracted) -> None:
        rejects.append([f"pydocs:{result.module}", "unparsable_source"])

    progress = Progress("extract pydocs", total=None, enabled=show)
    options = config.pydocs
    for doc in iter_pydocs(
        options.include, options.exclude, options.max_docs, map_fn=map_fn, on_skip=skipped
    ):
        text = doc.text
        size = len(text.encode("utf-8", "surrogatepass"))
        docs.append([doc.source_id, text])
        nbytes += size
        progress.update(size, 1)
        if nbytes >= chunk_bytes:
            flush()
    progress.close()
    if docs or rejects:
        flush()
    return pieces


def _file_pieces(task: tuple[str, str, int, str]) -> list[Piece]:
    return file_pieces(*task)


def _group(pieces: Iterable[Piece], chunk_bytes: int) -> list[Chunk]:
    chunks, current, size = [], [], 0
    for piece in pieces:
        current.append(piece)
        size += piece.nbytes
        if size >= chunk_bytes:
            chunks.append(Chunk(len(chunks), tuple(current)))
            current, size = [], 0
    if current:
        chunks.append(Chunk(len(chunks), tuple(current)))
    return chunks


def plan_chunks(
    config: PrepConfig, expanded: list[ExpandedInput], work: WorkDir, map_fn: Callable, show_progress: bool
) -> list[Chunk]:
    """The chunks of this run (read back from the work dir when resuming)."""
    if work.plan.is_file():
        return [Chunk(c["index"], tuple(Piece(**p) for p in c["pieces"])) for c in load_json(work.plan)]
    chunk_bytes = max(1, int(config.chunk_mb * 1e6))
    pieces: list[Piece] = []
    split_dir = str(work.root / "inputs")
    for position, item in enumerate(expanded):
        if item.pydocs:
            found = _pydocs_pieces(config, work, map_fn, chunk_bytes, show_progress)
        elif item.missing:
            found = [Piece("rejected", item.entry, 0, reason="missing_path")]
        else:  # on the worker pool: big compressed files are decompressed into parts there, in parallel
            tasks = [
                (path, file_kind(path, config.text.txt_mode), chunk_bytes, split_dir) for path in item.files
            ]
            found = [piece for file_result in map_fn(_file_pieces, tasks) for piece in file_result]
        pieces.extend(replace(piece, input=position) for piece in found)
    chunks = _group(pieces, chunk_bytes)
    save_json(work.plan, [asdict(chunk) for chunk in chunks])
    return chunks
