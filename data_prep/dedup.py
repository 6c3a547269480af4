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
import zlib

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

    The LSH index is banding in plain dicts: datasketch's ``MinHashLSH`` chooses the bands and
    rows (minimising false positives plus false negatives at the threshold), but its generic storage
    layer cost ~50 us per document here, and this loop is the one part of the stage that cannot run
    in parallel. Band keys are cut from a whole chunk's signatures at once.
    """

    def __init__(self, exact: bool, near: NearDupConfig | None):
        self.exact = exact
        self.seen: set[str] = set()
        self.near = near
        if near is not None:
            banding = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm)
            self.bands, self.rows = banding.b, banding.r
            self.tables: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self.kept_signatures: list[np.ndarray] = []

    def _band_keys(self, signatures: np.ndarray) -> list[list[bytes]]:
        """Per document, the bytes of each band of its signature: (docs, bands * rows) -> (docs, bands)."""
        banded = np.ascontiguousarray(signatures[:, : self.bands * self.rows])
        as_bytes = banded.view(np.dtype((np.void, 4 * self.rows))).reshape(len(signatures), self.bands)
        return as_bytes.tolist()

    def check_chunk(self, fingerprints: list[str], signatures: np.ndarray | None) -> list[str | None]:
        """Per document: ``duplicate_exact``, ``duplicate_near`` or None (kept and remembered)."""
        keys = self._band_keys(signatures) if self.near is not None and signatures is not None else None
        decisions: list[str | None] = []
        for j, fingerprint in enumerate(fingerprints):
            if self.exact:
                if fingerprint in self.seen:
                    decisions.append("duplicate_exact")
                    continue
                self.seen.add(fingerprint)
            if keys is None:
                decisions.append(None)
                continue
            signature = signatures[j]
            candidates = {c for table, key in zip(self.tables, keys[j]) for c in table.get(key, ())}
            if any(np.mean(self.kept_signatures[c] == signature) >= self.near.threshold for c in candidates):
                decisions.append("duplicate_near")
                continue
            kept = len(self.kept_signatures)
            self.kept_signatures.append(signature)
            for table, key in zip(self.tables, keys[j]):
                table.setdefault(key, []).append(kept)
            decisions.append(None)
        return decisions
