"""data_prep building blocks on small inline inputs: readers, cleaning, sentences, dedup, BERT pairs,
shards, pydocs."""

import gzip
import io
import json
import random
import sys
import tarfile

import numpy as np
import pytest
import webdataset

from data_prep.cleaning import clean_document
from data_prep.config import CleanConfig, NearDupConfig
from data_prep.dedup import DuplicateFilter, Shingler, exact_fingerprint
from data_prep.examples import build_examples
from data_prep.manifest import load_tokens, tar_samples
from data_prep.pydocs import iter_pydocs, list_module_files, module_matches
from data_prep.sentences import split_sentences
from data_prep.shards import TarStream, npy_bytes, ustar_header, write_shard
from data_prep.sources import Document, Reject, expand_inputs, file_pieces, read_piece


def read_all(path, kind, chunk_bytes=1 << 20, field="text"):
    return [item for piece in file_pieces(str(path), kind, chunk_bytes) for item in read_piece(piece, field)]


# ------------------------------------------------------------------------------------ sources


@pytest.mark.parametrize("kind", ["txt_paragraphs", "jsonl", "txt_lines"])
def test_split_files_give_the_same_documents_in_any_piece_size(tmp_path, kind):
    rng = random.Random(0)
    path = tmp_path / ("a.jsonl" if kind == "jsonl" else "a.txt")
    blocks = [" ".join(f"w{rng.randint(0, 99)}" for _ in range(rng.randint(1, 30))) for _ in range(300)]
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"text": b}) + "\n" for b in blocks))
    elif kind == "txt_lines":
        path.write_text("\n".join(blocks) + "\n")
    else:  # paragraphs of 1-3 lines separated by 1-3 blank lines
        path.write_text("".join(b.replace(" w1", "\nw1") + "\n" * rng.randint(2, 4) for b in blocks))
    whole = read_all(path, kind)
    assert len(file_pieces(str(path), kind, 1 << 20)) == 1
    for chunk_bytes in (50, 333, 1000):
        pieces = file_pieces(str(path), kind, chunk_bytes)
        assert len(pieces) > 3
        assert [p.start for p in pieces[1:]] == [p.end for p in pieces[:-1]]
        assert read_all(path, kind, chunk_bytes) == whole  # same text, same line numbers
    assert [d.text.replace("\n", " ") for d in whole] == blocks


def test_bad_inputs_become_rejects_with_reasons(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    lines = [
        b'{"text": "ok"}',
        b"not json",
        b'{"other": 1}',
        b"[1, 2]",
        b"",
        b'{"text": 5}',
        b'{"text": "caf\xe9"}',
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(tmp_path / "cut.jsonl.gz", "wb") as handle:
        handle.write(b'{"text": "first"}\n' * 2000)
    data = (tmp_path / "cut.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    assert read_all(tmp_path / "empty.txt", "txt_file") == [Reject(str(tmp_path / "empty.txt"), "empty_file")]
    assert read_all(tmp_path / "binary.txt", "txt_paragraphs")[0].reason == "binary_file"
    [latin] = read_all(tmp_path / "latin1.txt", "txt_file")
    assert latin.text == "café crème" and latin.repaired
    items = read_all(tmp_path / "bad.jsonl", "jsonl")
    assert [(type(i).__name__, getattr(i, "reason", None), i.line) for i in items] == [
        ("Document", None, 1),
        ("Reject", "bad_json", 2),
        ("Reject", "missing_field", 3),
        ("Reject", "missing_field", 4),
        ("Reject", "missing_field", 6),
        ("Document", None, 7),
    ]
    assert items[-1].text == "café" and items[-1].repaired
    gz = read_all(tmp_path / "cut.jsonl.gz", "jsonl")
    assert isinstance(gz[-1], Reject) and gz[-1].reason == "corrupt_gzip"
    assert all(isinstance(d, Document) for d in gz[:-1]) and len(gz) > 100


def test_expand_inputs_sorts_dedupes_and_flags_missing(tmp_path):
    for name in ("b.txt", "a.jsonl", "sub/c.jsonl.gz", "skip.csv", ".hidden.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    expanded = expand_inputs([str(tmp_path), str(tmp_path / "b.txt"), str(tmp_path / "*.nope"), "pydocs"])
    assert [p.rsplit("/", 1)[-1] for p in expanded[0].files] == ["a.jsonl", "b.txt", "c.jsonl.gz"]
    assert expanded[1].files == () and not expanded[1].missing  # listed twice: read once
    assert expanded[2].missing and expanded[3].pydocs


# ----------------------------------------------------------------------------------- cleaning


def test_cleaning_normalises_and_filters():
    config = CleanConfig(min_chars=10, max_chars=500, min_alpha_ratio=0.5)
    raw = "Caf\u0065\u0301  au\u00a0lait\x00 is\r\nhot.\n\n\n\ufeffNext   para\x07graph here."
    cleaned = clean_document(raw, config)
    assert cleaned.paragraphs == ("Café au lait is hot.", "Next paragraph here.")
    repaired = clean_document("The cafÃ© is open today, come in.", config)
    assert repaired.paragraphs == ("The café is open today, come in.",) and repaired.fixed_mojibake
    assert clean_document("short", config) == "too_short"
    assert clean_document("word " * 200, config) == "too_long"
    assert clean_document("1234 5678 9012 3456 7890 ab", config) == "junk"
    surrogate = clean_document("\ud800 lone surrogates are removed here", config)
    assert surrogate.paragraphs == ("lone surrogates are removed here",)
    lines = clean_document("one line\nanother line\n", CleanConfig(min_chars=1, unwrap_lines=False))
    assert lines.paragraphs == ("one line\nanother line",)


def test_sentences_split_on_punctuation_and_paragraphs():
    assert split_sentences(["Dr. Smith went home. He slept!", "no period here", "Last one?"]) == [
        "Dr. Smith went home.",
        "He slept!",
        "no period here",
        "Last one?",
    ]
    assert split_sentences(["one line\nanother line"]) == ["one line", "another line"]
    assert split_sentences([]) == []


@pytest.mark.parametrize(
    "text", ["", "x", "Hello Mr. Smith. Bye!", "café 😀 東京. Next", "word " * 20000 + "end."]
)
def test_sentence_breaker_matches_blingfires_wrapper(text):
    import blingfire

    from data_prep.sentences import _break_sentences

    assert _break_sentences(text) == blingfire.text_to_sentences(text)


# -------------------------------------------------------------------------------------- dedup


def test_exact_and_near_duplicates_keep_the_first():
    shingler = Shingler(NearDupConfig())
    rng = random.Random(1)
    base = " ".join(f"word{rng.randint(0, 5000)}" for _ in range(400))
    near = base.replace(base.split()[200], "changed", 1)  # one word of 400
    other = " ".join(f"word{rng.randint(0, 5000)}" for _ in range(400))
    dedup = DuplicateFilter(exact=True, near=NearDupConfig())
    texts = [base, base, near, other, "tiny", other.upper()]
    decisions = dedup.check_chunk([exact_fingerprint(t) for t in texts[:3]], shingler.signatures(texts[:3]))
    decisions += dedup.check_chunk([exact_fingerprint(t) for t in texts[3:]], shingler.signatures(texts[3:]))
    assert decisions == [None, "duplicate_exact", "duplicate_near", None, None, "duplicate_near"]
    assert DuplicateFilter(exact=False, near=None).check_chunk(["a", "a"], None) == [None, None]
    assert np.array_equal(
        shingler.signatures([base]), Shingler(NearDupConfig()).signatures([base])
    )  # any process


def test_chunk_signatures_are_datasketch_minhashes():
    from datasketch import MinHash

    rng = random.Random(2)
    texts = [" ".join(f"W{rng.randint(0, 300)}" for _ in range(rng.randint(1, 30))) for _ in range(200)]
    texts += ["x", " ".join(f"w{i}" for i in range(Shingler.BLOCK + 50))]  # a document longer than a block
    shingler = Shingler(NearDupConfig(num_perm=64, shingle_words=3))
    hashes, windows = shingler.shingle_hashes(texts)
    assert windows.tolist()[-2:] == [1, Shingler.BLOCK + 48]
    bounds = np.concatenate([[0], np.cumsum(windows)])
    for i, signature in enumerate(shingler.signatures(texts)):
        reference = MinHash(num_perm=64, seed=1, hashfunc=int, scheme="affine32")
        reference.update_batch(hashes[bounds[i] : bounds[i + 1]].tolist())
        assert np.array_equal(reference.hashvalues, signature), i


# ----------------------------------------------------------------------------------- examples


def token_docs(n_docs, rng):
    def sentence():
        return [rng.randint(10, 999) for _ in range(rng.randint(5, 40))]

    return [[sentence() for _ in range(rng.randint(8, 30))] for _ in range(n_docs)]


def test_nsp_pairs_fit_seq_len_and_labels_are_balanced():
    rng = random.Random(3)
    pool = token_docs(60, rng)
    pool[0][0] = list(range(10, 700))  # a 690-token "sentence" is cut, not truncated away
    examples = build_examples(pool, "mlm+nsp", 128, 0.1, 2, 3, random.Random(7))
    assert len(examples.sequences) > 300
    assert all(len(s) <= 128 and s[0] == 2 and s[-1] == 3 and s.count(3) == 2 for s in examples.sequences)
    assert abs(np.mean(examples.nsp_labels) - 0.5) < 0.08
    short = sum(len(s) < 64 for s in examples.sequences) / len(examples.sequences)
    assert 0.02 < short < 0.3  # short_seq_prob=0.1 per document, plus document tails
    again = build_examples(pool, "mlm+nsp", 128, 0.1, 2, 3, random.Random(7))
    assert again.sequences == examples.sequences and again.nsp_labels == examples.nsp_labels


def test_mlm_segments_pack_whole_sentences():
    pool = token_docs(20, random.Random(4))
    examples = build_examples(pool, "mlm", 64, 0.0, 2, 3, random.Random(0))
    assert not examples.nsp_labels and examples.tokens_truncated == 0
    assert all(len(s) <= 64 and s[0] == 2 and s[-1] == 3 and s.count(3) == 1 for s in examples.sequences)
    assert sum(len(s) - 2 for s in examples.sequences) == sum(len(t) for d in pool for t in d)  # nothing lost


def test_single_document_pool_never_fakes_a_random_b():
    pool = token_docs(1, random.Random(5))
    examples = build_examples(pool, "mlm+nsp", 64, 0.0, 2, 3, random.Random(0))
    assert examples.sequences and set(examples.nsp_labels) == {0}


# ------------------------------------------------------------------------------------- shards


def test_tar_headers_are_tarfiles_own_bytes():
    members = [
        ("000000_000000.tokens.npy", npy_bytes(np.arange(9, dtype=np.uint16))),
        ("000000_000000.nsp.cls", b"1"),
    ]
    ours = io.BytesIO()
    stream = TarStream(ours)
    for name, data in members:
        stream.add(name, data)
    stream.close()
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    assert ours.getvalue() == reference.getvalue()
    saved = io.BytesIO()
    np.save(saved, np.arange(9, dtype=np.uint16))
    assert npy_bytes(np.arange(9, dtype=np.uint16)) == saved.getvalue()
    with pytest.raises(ValueError):
        ustar_header("x" * 101, 1)


def test_shards_are_reproducible_and_readable_by_webdataset(tmp_path):
    samples = [(np.array([2, 7 + i, 3, 9, 3], dtype=np.uint16), i % 2) for i in range(25)]
    (tmp_path / "a").mkdir()
    first = write_shard(tmp_path, "a/s-000004.tar", 4, samples)
    second = write_shard(tmp_path, "a/s-000005.tar", 4, samples)
    assert first.sha256 == second.sha256 and first.samples == 25 and first.tokens == 125
    assert not list((tmp_path / "a").glob(".*"))  # no temporary left behind
    read = list(tar_samples((tmp_path / "a/s-000004.tar").read_bytes(), "s-000004.tar"))
    assert read[3][0] == "000004_000003" and load_tokens(read[3][1]["tokens.npy"]).tolist() == [
        2,
        10,
        3,
        9,
        3,
    ]
    dataset = list(webdataset.WebDataset(str(tmp_path / "a/s-000004.tar"), shardshuffle=False))
    assert len(dataset) == 25 and dataset[1]["nsp.cls"] == b"1" and dataset[1]["__key__"] == "000004_000001"


# ------------------------------------------------------------------------------------- pydocs


def test_pydocs_is_deterministic_filterable_and_never_imports():
    before = set(sys.modules)
    docs = list(iter_pydocs(include=["json", "pydoc_data"]))
    again = list(iter_pydocs(include=["json", "pydoc_data"]))
    assert docs == again
    modules = {d.module for d in docs}
    assert "json.decoder" in modules and "pydoc_data.topics" in modules
    assert not {"json.tool", "pydoc_data.topics"} & (set(sys.modules) - before)
    topic = next(d for d in docs if d.source_id == "pydocs:pydoc_data.topics:assert")
    assert "assert" in topic.text
    assert [d.module for d in iter_pydocs(include=["json"], exclude=["json.decoder"])].count(
        "json.decoder"
    ) == 0
    assert len(list(iter_pydocs(include=["json"], max_docs=2))) == 2
    assert all(
        not f.module.startswith(("test.", "json.tests")) for f in list_module_files(include=["json", "test"])
    )
    assert module_matches("email.mime.text", ["email.*"]) and not module_matches("emailx", ["email"])
