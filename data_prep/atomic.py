"""Atomic writes: a reader sees the old whole or the new whole, never a part.

Every stage writes what others read (manifests, shards, checkpoints' ``latest``, exports, eval
files) through these: the content goes to a hidden temporary sibling, is fsynced, and replaces the
target in one rename. Below the data contract (``manifest``) and remote storage (``storage``), which
both use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_tree(path: str | Path) -> None:
    """fsync a file, or every file below a directory and the directory itself."""
    path = Path(path)
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    if path.is_dir():
        fsync_dir(path)


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a new entry in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``path`` to create (a file or a directory); when the block
    ends normally it replaces ``path`` in one rename, and on an error it is removed. ``durable``
    fsyncs the new file(s) and the directory, so the rename also survives a power cut (skip it for
    scratch files that a crash makes stale anyway). The temporary name is unique per process and
    call: concurrent writers never share one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        if durable:
            fsync_tree(tmp)
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # rename cannot replace a non-empty directory
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w", *, durable: bool = True, **kwargs: Any) -> Iterator[Any]:
    """``open`` for writing whose file appears under ``path`` only once it is complete."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_bytes_atomic(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    with open_atomic(path, "wb", durable=durable) as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str, *, durable: bool = True) -> None:
    with open_atomic(path, "w", durable=durable) as handle:
        handle.write(text)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2, durable: bool = True) -> None:
    """JSON (``indent=None``: compact, for scratch files), with a final newline."""
    separators = (",", ":") if indent is None else None
    write_text_atomic(path, json.dumps(obj, indent=indent, separators=separators) + "\n", durable=durable)
