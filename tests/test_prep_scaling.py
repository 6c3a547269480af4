"""data_prep as the corpus grows (issue 13.5): the dedup index on disk with bounded memory decides
exactly as an in-memory one would."""

import numpy as np

from benchmarks.corpus import english_words, generate
from data_prep.cleaning import clean_document
from data_prep.config import CleanConfig, NearDupConfig
from data_prep.dedup import DuplicateFilter, Shingler, exact_fingerprint


def reference_decisions(texts: list[str], config: NearDupConfig) -> list[str | None]:
    """Brute force: a document is a near duplicate when an earlier kept one shares an LSH band with
    it and agrees on at least ``threshold`` of its MinHash values."""
    signatures = Shingler(config).signatures(texts)
    bands = DuplicateFilter(exact=False, near=config)
    width = bands.bands * bands.rows
    seen, kept, out = set(), [], []
    for text, signature in zip(texts, signatures):
        if text in seen:
            out.append("duplicate_exact")
            continue
        seen.add(text)
        shares_band = [
            any(
                np.array_equal(k[b : b + bands.rows], signature[b : b + bands.rows])
                for b in range(0, width, bands.rows)
            )
            for k in kept
        ]
        if any(s and np.mean(k == signature) >= config.threshold for s, k in zip(shares_band, kept)):
            out.append("duplicate_near")
        else:
            kept.append(signature)
            out.append(None)
    return out


def test_dedup_index_on_disk_with_little_memory_decides_like_brute_force(tmp_path):
    config = NearDupConfig()
    documents = generate(english_words(), 400_000, seed=3, near_dup=0.2, exact_dup=0.1)
    texts = [clean_document(text, CleanConfig(min_chars=1)).text for text, _ in documents]
    expected = reference_decisions(texts, config)
    assert expected.count("duplicate_near") > 20 and expected.count("duplicate_exact") > 10
    index = DuplicateFilter(exact=True, near=config, path=tmp_path / "dedup.sqlite", memory_mb=1)
    shingler = Shingler(config)
    decided = []
    for start in range(0, len(texts), 37):  # chunks: candidates both in earlier chunks and in the same one
        chunk = texts[start : start + 37]
        decided += index.check_chunk([exact_fingerprint(t) for t in chunk], shingler.signatures(chunk))
    index.close()
    assert decided == expected
    assert (tmp_path / "dedup.sqlite").stat().st_size > 100_000  # the index lives on disk
