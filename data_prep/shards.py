"""WebDataset tar shards of format ``bert-pretrain-wds/1``: writing them reproducibly, reading them back.

A sample is ``<key>.tokens.npy`` (``np.save`` of the unpadded ids) and, for mlm+nsp,
``<key>.nsp.cls`` (ASCII "0" or "1"). Every tar header field that could vary between runs is fixed
(mtime 0, uid/gid 0, no user or group names, mode 0444, ustar format), so the same examples give
byte-identical shards. The headers are written here rather than through ``tarfile``, whose generic
header code cost ~50 us per member, most of the shard stage; tests check the bytes are the same.
A shard is written through the contract's atomic write: a crash leaves no file that looks
finished. Reading lives in ``data_prep.manifest`` (``read_shard``), beside the rules it checks.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.atomic import open_atomic
from data_prep.manifest import NSP_EXT, TOKENS_EXT, sample_key, sha256_file

TAR_MTIME = 0
TAR_MODE = 0o444
BLOCK = 512
RECORD = 20 * BLOCK  # tar pads an archive to whole records of 20 blocks (tarfile.RECORDSIZE)


@dataclass(frozen=True)
class ShardEntry:
    """One shard as listed in manifest.json (``path`` relative to the data dir)."""

    path: str
    samples: int
    tokens: int
    bytes: int
    sha256: str


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


@functools.lru_cache(maxsize=4096)
def _npy_header(dtype: str, length: int) -> bytes:
    """The .npy v1.0 header of a 1-D array: it depends only on dtype and length, so it is made once."""
    buffer = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (length,)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """What ``np.save`` writes for a 1-D array, without its per-call overhead."""
    return _npy_header(array.dtype.str, len(array)) + np.ascontiguousarray(array).tobytes()


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte POSIX ustar header of a regular file, with every varying field fixed: the same
    bytes ``tarfile`` writes (tests compare them) at a tenth of its cost per member."""
    header = bytearray(BLOCK)
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes")
    header[0 : len(encoded)] = encoded
    header[100:108] = b"%07o\0" % TAR_MODE
    header[108:116] = b"%07o\0" % 0  # uid
    header[116:124] = b"%07o\0" % 0  # gid
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"%011o\0" % TAR_MTIME
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[156:157] = b"0"  # regular file
    header[257:265] = b"ustar\x0000"  # magic and version; user/group names, devices stay empty
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class TarStream:
    """Appends members to an open binary file; ``close`` writes the end blocks and record padding."""

    def __init__(self, handle):
        self.handle = handle
        self.offset = 0

    def add(self, name: str, data: bytes) -> None:
        padding = -len(data) % BLOCK
        self.handle.write(ustar_header(name, len(data)) + data + bytes(padding))
        self.offset += BLOCK + len(data) + padding

    def close(self) -> None:
        end = 2 * BLOCK
        end += -(self.offset + end) % RECORD
        self.handle.write(bytes(end))


def write_shard(
    data_dir: Path, relative_path: str, shard_index: int, samples: Iterable[tuple[np.ndarray, int | None]]
) -> ShardEntry:
    """Write ``(tokens, nsp_label or None)`` samples to ``data_dir/relative_path``, atomically."""
    final = data_dir / relative_path
    count = tokens = 0
    with open_atomic(final, "wb") as handle:
        tar = TarStream(handle)
        for sample_index, (ids, nsp_label) in enumerate(samples):
            key = sample_key(shard_index, sample_index)
            tar.add(f"{key}.{TOKENS_EXT}", npy_bytes(ids))
            if nsp_label is not None:
                tar.add(f"{key}.{NSP_EXT}", b"1" if nsp_label else b"0")
            count += 1
            tokens += len(ids)
        tar.close()
    return ShardEntry(relative_path, count, tokens, final.stat().st_size, sha256_file(final))
