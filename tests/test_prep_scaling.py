"""data_prep as the corpus grows (issue 13.5): the dedup index on disk with bounded memory decides
exactly as an in-memory one would; .gz and .zst inputs, big ones split into parts for the workers."""

import gzip
import json

import numpy as np
import pytest
import zstandard

from benchmarks.corpus import english_words, generate
from data_prep.cleaning import clean_document
from data_prep.config import CleanConfig, NearDupConfig, load_prep_config
from data_prep.dedup import DuplicateFilter, Shingler, exact_fingerprint
from data_prep.pipeline import prepare
from data_prep.sources import Document, file_kind, file_pieces, read_piece


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


@pytest.mark.parametrize("memory_mb", [0.1, 256])
def test_dedup_index_decides_like_brute_force_in_memory_and_on_disk(tmp_path, memory_mb):
    config = NearDupConfig()
    documents = generate(english_words(), 400_000, seed=3, near_dup=0.2, exact_dup=0.1)
    texts = [clean_document(text, CleanConfig(min_chars=1)).text for text, _ in documents]
    expected = reference_decisions(texts, config)
    assert expected.count("duplicate_near") > 20 and expected.count("duplicate_exact") > 10
    index = DuplicateFilter(exact=True, near=config, path=tmp_path / "dedup.sqlite", memory_mb=memory_mb)
    shingler = Shingler(config)
    decided = []
    for start in range(0, len(texts), 37):  # chunks: candidates both in earlier chunks and in the same one
        chunk = texts[start : start + 37]
        decided += index.check_chunk([exact_fingerprint(t) for t in chunk], shingler.signatures(chunk))
        if memory_mb < 1 and start == 74:
            assert index.db is not None and not index.signatures  # 0.1 MB holds ~35 documents: on disk
    index.close()
    assert decided == expected
    assert (tmp_path / "dedup.sqlite").is_file() == (memory_mb < 1)  # 256 MB: never left memory


def _documents(pieces, field="text"):
    return [
        (d.source_id, d.text) if isinstance(d, Document) else (d.reason, d.line)
        for p in pieces
        for d in read_piece(p, field)
    ]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".txt.zst"])
def test_big_compressed_files_are_split_into_parts_with_the_same_documents(tmp_path, suffix):
    texts = [text for text, _ in generate(english_words(), 300_000, seed=1)]
    kind = "jsonl" if suffix.startswith(".jsonl") else "txt_paragraphs"
    if kind == "jsonl":
        raw = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    else:
        raw = "\n\n\n".join(t.replace("\n\n", "\n") for t in texts) + "\n"
    path = tmp_path / f"corpus{suffix}"
    with (gzip.open if suffix.endswith(".gz") else zstandard.open)(path, "wt") as handle:
        handle.write(raw)
    assert file_kind(str(path), "paragraph") == kind
    whole = _documents(file_pieces(str(path), kind, 10**9, str(tmp_path / "parts")))
    parts = file_pieces(str(path), kind, 20_000, str(tmp_path / "parts"))
    assert len(parts) > 10 and all(p.source == str(path) and p.nbytes < 60_000 for p in parts)
    assert _documents(parts) == whole and len(whole) == len(texts)
    # truncated: the whole documents before the break, then one reject with the line it broke at
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for chunk_bytes in (10**9, 20_000):
        broken = _documents(file_pieces(str(path), kind, chunk_bytes, str(tmp_path / f"cut{chunk_bytes}")))
        assert broken[:-1] == whole[: len(broken) - 1] and broken[-1][0] == "corrupt_gzip"
        assert len(whole) // 3 < len(broken) < len(whole)


def test_zst_inputs_prepare_like_plain_ones(tmp_path):
    texts = [text for text, _ in generate(english_words(), 120_000, seed=2, near_dup=0.1)]
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (tmp_path / "plain").mkdir()
    (tmp_path / "zst").mkdir()
    (tmp_path / "plain" / "c.jsonl").write_text(lines)
    with zstandard.open(tmp_path / "zst" / "c.jsonl.zst", "wt") as handle:
        handle.write(lines)
    reports = []
    for name in ("plain", "zst"):
        config = load_prep_config(
            None,
            [
                f"inputs=[{tmp_path / name}]",
                f"out_dir={tmp_path / name}-out",
                "seq_len=64",
                "tokenizer.vocab_size=300",
                "samples_per_shard=50",
                "chunk_mb=0.03",
                "clean.min_chars=50",
                # The valid split hashes each document's source (path and line), and c.jsonl and
                # c.jsonl.zst are different sources in a differently numbered tmp dir per run: with
                # a split, the two would differ by chance in which documents are held out.
                "valid_fraction=0",
                "progress=false",
            ],
        )
        reports.append(prepare(config))
    plain, zst = reports
    assert zst["documents"] == plain["documents"] and zst["duplicates"] == plain["duplicates"]
    assert zst["chunks"]["total"] > 2 and zst["duplicates"]["near"] > 0
