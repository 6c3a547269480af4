"""Exact and near-duplicate removal, decided in canonical document order (first occurrence kept).

Fingerprints (a blake2b of the cleaned text, a MinHash signature of its word shingles) are
computed in parallel next to cleaning; the keep/drop decisions need every earlier document, so
``DuplicateFilter`` makes them sequentially, in canonical order, on one process. The result is
therefore the same for any number of workers or ranks.

Near duplicates follow the usual recipe for web corpora (Broder 1997; the GPT-3 and Gopher data
pipelines): MinHash over lower-cased word 5-grams (shingles), LSH banding (datasketch picks the
bands for the threshold), and a check of the estimated Jaccard similarity of each candidate, since
banding alone also returns some pairs below the threshold. In scripts written without spaces
(Chinese, Japanese, Thai...) every character is a word of its own, so their shingles are character
5-grams: a whitespace split would make a whole line one "word", and a document that differs by one
character would share no shingle with the original.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import sqlite3
import zlib
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from data_prep.cleaning import CJK_CHARS
from data_prep.config import NearDupConfig

MINHASH_SCHEME = "affine32"  # datasketch >= 2.0: uint32 values, a bijective permutation step
MINHASH_SEED = 1  # fixed: dedup decisions do not change with the run's seed
# Scripts without word spaces: CJK, and Thai, Lao, Myanmar, Khmer. One character, one shingle word.
_UNSPACED = CJK_CHARS + "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"
_HAS_UNSPACED = re.compile(f"[{_UNSPACED}]")
_SHINGLE_WORDS = re.compile(f"[{_UNSPACED}]|[^\\s{_UNSPACED}]+")


def shingle_words(text: str) -> list[bytes]:
    """The lower-cased words that shingles are made of: whitespace-separated words, except that each
    character of a script without word spaces is a word of its own."""
    lowered = text.lower()
    if lowered.isascii() or not _HAS_UNSPACED.search(lowered):
        return lowered.encode("utf-8").split()
    return [word.encode("utf-8") for word in _SHINGLE_WORDS.findall(lowered)]


def exact_fingerprint(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, which datasketch's affine32 scheme applies before permuting."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


class Shingler:
    """MinHash signatures of lower-cased word shingles (see ``shingle_words``), for a whole chunk of
    documents at once.

    The values are exactly datasketch's ``MinHash(scheme="affine32")`` after ``update_batch`` with
    the shingle hashes (its permutations, its pre-mix; a test compares them), but computed for all
    documents of a chunk in a few array operations: building and updating one MinHash object per
    document cost ~40 us, more than everything else done to a one-line document.
    """

    BLOCK = 16384  # shingles per (shingles x num_perm) product: 8 MB of uint32 at 128 permutations

    def __init__(self, config: NearDupConfig):
        self.num_perm = config.num_perm
        self.words = config.shingle_words
        a, b = MinHash(num_perm=config.num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME).permutations
        self.a, self.b = a.astype(np.uint32), b.astype(np.uint32)

    def shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every document's word n-grams, concatenated, and how many each document has.

        crc32 per word, then a polynomial over each window of n words (a text shorter than n words
        is one shingle). Windows never cross documents.
        """
        words = [shingle_words(text) or [b""] for text in texts]
        counts = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        all_words = itertools.chain.from_iterable(words)
        flat = np.fromiter(map(zlib.crc32, all_words), dtype=np.uint64, count=int(counts.sum()))
        starts = np.cumsum(counts) - counts
        ends = np.repeat(starts + counts, counts)
        positions = np.arange(len(flat))
        hashes = np.zeros(len(flat), dtype=np.uint64)
        for k in range(self.words):
            inside = positions + k < ends
            following = flat[np.minimum(positions + k, len(flat) - 1)]
            hashes = np.where(
                inside, (hashes * np.uint64(1_000_003) + following) & np.uint64(0xFFFFFFFF), hashes
            )
        windows = np.maximum(1, counts - self.words + 1)
        first_window = np.cumsum(windows) - windows
        chosen = np.repeat(starts, windows) + np.arange(int(windows.sum())) - np.repeat(first_window, windows)
        return hashes[chosen].astype(np.uint32), windows

    def signatures(self, texts: list[str]) -> np.ndarray:
        """uint32[len(texts), num_perm]: per document, the minimum over its shingles of a * fmix(h) + b."""
        hashes, windows = self.shingle_hashes(texts)
        mixed = _fmix32(hashes)
        bounds = np.concatenate([[0], np.cumsum(windows)])
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        first = 0
        while first < len(texts):  # batches of whole documents holding at most BLOCK shingles
            last = max(int(np.searchsorted(bounds, bounds[first] + self.BLOCK, side="right")) - 1, first + 1)
            low, high = int(bounds[first]), int(bounds[last])
            if high - low <= self.BLOCK:
                permuted = mixed[low:high, None] * self.a + self.b  # uint32 arithmetic wraps: mod 2^32
                out[first:last] = np.minimum.reduceat(permuted, bounds[first:last] - low, axis=0)
            else:  # one document longer than a block: in slices
                out[first] = np.min(
                    [
                        (mixed[i : i + self.BLOCK, None] * self.a + self.b).min(axis=0)
                        for i in range(low, high, self.BLOCK)
                    ],
                    axis=0,
                )
            first = last
        return out


class DuplicateFilter:
    """Sequential keep/drop decisions; give it the chunks' fingerprints in canonical order.

    The index (exact fingerprints, LSH band keys, the signatures of kept documents) starts in plain
    dicts, the fast case. When its estimated size passes ``memory_mb`` and a ``path`` is given, it
    moves to an SQLite file there and stays on disk (~1 kB per kept document), with SQLite's page
    cache bounded by ``memory_mb``: memory no longer grows with the corpus. On disk each chunk
    costs a few batched queries: the candidates of all its band keys and the signatures they point
    to are fetched at once, the chunk's documents are decided in order against them and against the
    documents kept earlier in the same chunk, and the kept ones are inserted. Decisions are the same
    either way: a document is a near duplicate when an earlier kept document shares a band with it
    and has an estimated Jaccard similarity of at least the threshold ("any": candidate order does
    not matter).

    datasketch's ``MinHashLSH`` chooses the bands and rows (minimising false positives plus false
    negatives at the threshold); its own storage cost ~50 us per document, and this loop is the one
    part of the stage that cannot run in parallel.
    """

    BATCH = 4096  # parameters per "IN (...)" query, well under SQLite's limit of 32766
    FINGERPRINT_BYTES = 130  # a 32-character str in a set
    BAND_KEY_OVERHEAD = 160  # bytes object, dict slot, list of one int

    def __init__(
        self, exact: bool, near: NearDupConfig | None, path: Path | None = None, memory_mb: float = 256
    ):
        self.exact = exact
        self.near = near
        self.path = path
        self.memory_mb = memory_mb
        self.db: sqlite3.Connection | None = None
        self.seen: set[str] = set()
        self.tables: dict[bytes, list[int]] = {}  # band index + band bytes -> kept documents
        self.signatures: dict[int, np.ndarray] = {}  # kept document -> signature
        self.per_document = 0
        if near is not None:
            banding = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm)
            self.bands, self.rows = banding.b, banding.r
            self.per_document = (
                4 * near.num_perm + 112 + self.bands * (4 * self.rows + self.BAND_KEY_OVERHEAD)
            )
        self.kept = 0

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def _band_keys(self, signatures: np.ndarray) -> list[list[bytes]]:
        """Per document, each band's index and the bytes of that band of its signature."""
        banded = np.ascontiguousarray(signatures[:, : self.bands * self.rows])
        as_bytes = banded.view(np.dtype((np.void, 4 * self.rows))).reshape(len(signatures), self.bands)
        prefixes = [band.to_bytes(2, "big") for band in range(self.bands)]
        return [[prefix + key for prefix, key in zip(prefixes, row)] for row in as_bytes.tolist()]

    def _spill(self) -> None:
        """Move the index into an SQLite file at ``path``; from here on it is read from there."""
        self.path.unlink(missing_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        for pragma in (
            f"cache_size = {-int(1024 * self.memory_mb)}",  # negative: KiB, the bound on its memory
            "journal_mode = OFF",  # a scratch file: an interrupted run decides again from the start
            "synchronous = OFF",
            "temp_store = FILE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE exact (fingerprint TEXT PRIMARY KEY) WITHOUT ROWID")
        self.db.execute("CREATE TABLE bands (key BLOB, doc INTEGER, PRIMARY KEY (key, doc)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE signatures (doc INTEGER PRIMARY KEY, signature BLOB)")
        self._insert(
            [(f,) for f in self.seen],
            [(doc, signature.tobytes()) for doc, signature in self.signatures.items()],
            [(key, doc) for key, docs in self.tables.items() for doc in docs],
        )
        self.seen, self.tables, self.signatures = set(), {}, {}

    def _insert(self, fingerprints: list, signatures: list, bands: list) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO exact VALUES (?)", fingerprints)
        self.db.executemany("INSERT INTO signatures VALUES (?, ?)", signatures)
        self.db.executemany("INSERT INTO bands VALUES (?, ?)", bands)
        self.db.execute("COMMIT")

    def _select(self, query: str, values: list) -> list[tuple]:
        """``query`` with ``IN ({})`` over ``values``, in batches."""
        rows = []
        for i in range(0, len(values), self.BATCH):
            batch = values[i : i + self.BATCH]
            rows += self.db.execute(query.format(",".join("?" * len(batch))), batch).fetchall()
        return rows

    def _fetch(self, fingerprints: list[str], keys: list[list[bytes]]):
        """From the file: which fingerprints were seen, the kept documents under the chunk's band
        keys, and their signatures; the chunk's own documents are added to these as it goes."""
        query = "SELECT fingerprint FROM exact WHERE fingerprint IN ({})"
        seen = {row[0] for row in self._select(query, fingerprints)} if self.exact else set()
        tables: dict[bytes, list[int]] = {}
        unique = list({key for row in keys for key in row})
        for key, doc in self._select("SELECT key, doc FROM bands WHERE key IN ({})", unique):
            tables.setdefault(key, []).append(doc)
        docs = sorted({doc for found in tables.values() for doc in found})
        query = "SELECT doc, signature FROM signatures WHERE doc IN ({})"
        signatures = {doc: np.frombuffer(blob, dtype=np.uint32) for doc, blob in self._select(query, docs)}
        return seen, tables, signatures

    def check_chunk(self, fingerprints: list[str], signatures: np.ndarray | None) -> list[str | None]:
        """Per document: ``duplicate_exact``, ``duplicate_near`` or None (kept and remembered)."""
        near = self.near is not None and signatures is not None
        keys = self._band_keys(signatures) if near else []
        if self.db is None:
            seen, tables, kept_signatures = self.seen, self.tables, self.signatures
        else:
            seen, tables, kept_signatures = self._fetch(fingerprints, keys)
        decisions: list[str | None] = []
        new_fingerprints, new_docs = [], []
        for j, fingerprint in enumerate(fingerprints):
            if self.exact:
                if fingerprint in seen:
                    decisions.append("duplicate_exact")
                    continue
                seen.add(fingerprint)
                new_fingerprints.append((fingerprint,))
            if not near:
                decisions.append(None)
                continue
            signature = signatures[j]
            candidates = {c for key in keys[j] for c in tables.get(key, ())}
            threshold = self.near.threshold
            if any(np.mean(kept_signatures[c] == signature) >= threshold for c in candidates):
                decisions.append("duplicate_near")
                continue
            doc = self.kept
            self.kept += 1
            kept_signatures[doc] = signature
            for key in keys[j]:
                tables.setdefault(key, []).append(doc)
            new_docs.append((doc, j))
            decisions.append(None)
        if self.db is not None:
            self._insert(
                new_fingerprints,
                [(doc, signatures[j].tobytes()) for doc, j in new_docs],
                [(key, doc) for doc, j in new_docs for key in keys[j]],
            )
        elif self.path is not None:
            size = len(self.seen) * self.FINGERPRINT_BYTES + len(self.signatures) * self.per_document
            if size > self.memory_mb * 2**20:
                self._spill()
        return decisions
