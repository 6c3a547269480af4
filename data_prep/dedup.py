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

    The index (exact fingerprints, LSH band keys, the signatures of kept documents) is an SQLite
    database, in a file in ``.work`` when ``path`` is given, so its memory is SQLite's page cache,
    bounded by ``memory_mb`` whatever the corpus size; the rest stays on disk (about 1 kB per kept
    document). Each chunk costs a few batched queries: the candidates of all its band keys and the
    signatures they point to are fetched at once, then the chunk's documents are decided in order
    against them and against the documents kept earlier in the same chunk, then the kept ones are
    inserted. The decisions are exactly those of an in-memory index: a document is a near duplicate
    when any earlier kept document shares a band with it and has an estimated Jaccard similarity of
    at least the threshold, and the order of the candidates does not matter for "any".

    datasketch's ``MinHashLSH`` chooses the bands and rows (minimising false positives plus false
    negatives at the threshold); its own storage cost ~50 us per document, and this loop is the one
    part of the stage that cannot run in parallel.
    """

    BATCH = 4096  # parameters per "IN (...)" query, well under SQLite's limit of 32766

    def __init__(
        self, exact: bool, near: NearDupConfig | None, path: Path | None = None, memory_mb: int = 256
    ):
        self.exact = exact
        self.near = near
        if path is not None:
            path.unlink(missing_ok=True)  # decisions are made in one pass: an interrupted pass restarts
        self.db = sqlite3.connect(str(path) if path is not None else ":memory:", isolation_level=None)
        for pragma in (
            f"cache_size = {-1024 * memory_mb}",  # negative: KiB, the bound on the index's memory
            "journal_mode = OFF",  # a scratch file: nothing to recover after a crash
            "synchronous = OFF",
            "temp_store = FILE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE exact (fingerprint TEXT PRIMARY KEY) WITHOUT ROWID")
        self.db.execute("CREATE TABLE bands (key BLOB, doc INTEGER, PRIMARY KEY (key, doc)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE signatures (doc INTEGER PRIMARY KEY, signature BLOB)")
        if near is not None:
            banding = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm)
            self.bands, self.rows = banding.b, banding.r
        self.kept = 0

    def close(self) -> None:
        self.db.close()

    def _band_keys(self, signatures: np.ndarray) -> list[list[bytes]]:
        """Per document, each band's index and the bytes of that band of its signature."""
        banded = np.ascontiguousarray(signatures[:, : self.bands * self.rows])
        as_bytes = banded.view(np.dtype((np.void, 4 * self.rows))).reshape(len(signatures), self.bands)
        prefixes = [band.to_bytes(2, "big") for band in range(self.bands)]
        return [[prefix + key for prefix, key in zip(prefixes, row)] for row in as_bytes.tolist()]

    def _select(self, query: str, values: list) -> list[tuple]:
        """``query`` with ``IN ({})`` over ``values``, in batches."""
        rows = []
        for i in range(0, len(values), self.BATCH):
            batch = values[i : i + self.BATCH]
            rows += self.db.execute(query.format(",".join("?" * len(batch))), batch).fetchall()
        return rows

    def check_chunk(self, fingerprints: list[str], signatures: np.ndarray | None) -> list[str | None]:
        """Per document: ``duplicate_exact``, ``duplicate_near`` or None (kept and remembered)."""
        near = self.near is not None and signatures is not None
        digests = fingerprints
        seen = set()
        if self.exact:
            seen = {
                row[0]
                for row in self._select("SELECT fingerprint FROM exact WHERE fingerprint IN ({})", digests)
            }
        keys = self._band_keys(signatures) if near else []
        earlier: dict[bytes, list[int]] = {}  # band key -> kept docs, from earlier chunks then this one
        kept_signatures: dict[int, np.ndarray] = {}
        if near:
            unique = list({key for row in keys for key in row})
            for key, doc in self._select("SELECT key, doc FROM bands WHERE key IN ({})", unique):
                earlier.setdefault(key, []).append(doc)
            docs = sorted({doc for found in earlier.values() for doc in found})
            for doc, blob in self._select("SELECT doc, signature FROM signatures WHERE doc IN ({})", docs):
                kept_signatures[doc] = np.frombuffer(blob, dtype=np.uint32)
        decisions: list[str | None] = []
        new_digests, new_docs = [], []
        for j, digest in enumerate(digests):
            if self.exact:
                if digest in seen:
                    decisions.append("duplicate_exact")
                    continue
                seen.add(digest)
                new_digests.append((digest,))
            if not near:
                decisions.append(None)
                continue
            signature = signatures[j]
            candidates = {c for key in keys[j] for c in earlier.get(key, ())}
            threshold = self.near.threshold
            if any(np.mean(kept_signatures[c] == signature) >= threshold for c in candidates):
                decisions.append("duplicate_near")
                continue
            doc = self.kept
            self.kept += 1
            kept_signatures[doc] = signature
            for key in keys[j]:
                earlier.setdefault(key, []).append(doc)
            new_docs.append((doc, j))
            decisions.append(None)
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO exact VALUES (?)", new_digests)
        self.db.executemany(
            "INSERT INTO signatures VALUES (?, ?)", [(d, signatures[j].tobytes()) for d, j in new_docs]
        )
        self.db.executemany(
            "INSERT INTO bands VALUES (?, ?)", [(key, d) for d, j in new_docs for key in keys[j]]
        )
        self.db.execute("COMMIT")
        return decisions
