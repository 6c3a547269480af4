"""Exact and near-duplicate removal, decided in canonical document order (first occurrence kept).

Fingerprints (a blake2b of the cleaned text, a MinHash signature of its word shingles) are
computed in parallel next to cleaning; the keep/drop decisions need every earlier document, so
``DuplicateFilter`` makes them sequentially, in canonical order, on one process. The result is
therefore the same for any number of workers or ranks.

Near duplicates follow the usual recipe for web corpora (Broder 1997; the GPT-3 and Gopher data
pipelines): MinHash over lower-cased word 5-grams (shingles), LSH banding (datasketch picks the bands for the
threshold), and a check of the estimated Jaccard similarity of each candidate, since banding alone
also returns some pairs below the threshold.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
from datasketch import MinHash, MinHashLSH

from data_prep.config import NearDupConfig

MINHASH_SCHEME = "affine32"  # datasketch >= 2.0: uint32 values, a bijective permutation step
MINHASH_SEED = 1  # fixed: dedup decisions do not change with the run's seed


def exact_fingerprint(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _identity(value: int) -> int:
    return value


class Shingler:
    """MinHash signatures of word shingles; one per process (the permutations are made once)."""

    def __init__(self, config: NearDupConfig):
        self.num_perm = config.num_perm
        self.words = config.shingle_words
        self._minhash = MinHash(num_perm=config.num_perm, seed=MINHASH_SEED, hashfunc=_identity, scheme=MINHASH_SCHEME)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """32-bit hashes of the lower-cased word n-grams: crc32 per word, then a polynomial over each
        window of n words, vectorised (1.5x faster than hashing each joined n-gram string)."""
        words = np.fromiter(map(zlib.crc32, text.lower().encode("utf-8").split()), dtype=np.uint64)
        windows = max(1, len(words) - self.words + 1)  # a text shorter than n words is one shingle
        hashes = np.zeros(windows, dtype=np.uint64)
        for k in range(min(self.words, len(words))):
            hashes = (hashes * np.uint64(1_000_003) + words[k : k + windows]) & np.uint64(0xFFFFFFFF)
        return hashes

    def signature(self, text: str) -> np.ndarray:
        """uint32[num_perm]; datasketch re-mixes the input hashes (MurmurHash3 fmix) before permuting.
        One MinHash is reused (``clear``): building one costs more than hashing a short document."""
        self._minhash.clear()
        self._minhash.update_batch(self.shingle_hashes(text).tolist())
        return self._minhash.hashvalues.astype(np.uint32)


class DuplicateFilter:
    """Sequential keep/drop decisions; call ``check`` in canonical order."""

    def __init__(self, exact: bool, near: NearDupConfig | None):
        self.exact = exact
        self.seen: set[str] = set()
        self.near = near
        self.lsh = MinHashLSH(threshold=near.threshold, num_perm=near.num_perm) if near else None
        self.kept_signatures: list[np.ndarray] = []
        # LSH reads only ``hashvalues`` (and the scheme) of what it is given, and keeps band hashes,
        # not the object: one probe whose values are swapped in saves building a MinHash per document.
        self._probe = MinHash(num_perm=near.num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME) if near else None

    def check(self, fingerprint: str, signature: np.ndarray | None) -> str | None:
        """``duplicate_exact``, ``duplicate_near`` or None (kept, and remembered for later documents)."""
        if self.exact:
            if fingerprint in self.seen:
                return "duplicate_exact"
            self.seen.add(fingerprint)
        if self.lsh is None or signature is None:
            return None
        self._probe.hashvalues = signature
        for candidate in self.lsh.query(self._probe):
            if np.mean(self.kept_signatures[candidate] == signature) >= self.near.threshold:
                return "duplicate_near"
        self.lsh.insert(len(self.kept_signatures), self._probe, check_duplication=False)
        self.kept_signatures.append(signature)
        return None
