"""SST-2's phrases reduced to its sentences for self-pretraining (benchmarks/studies/sst2_corpus.py)."""

from pathlib import Path

import pytest

from benchmarks.studies.sst2_corpus import as_documents, main, maximal_phrases

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


def test_fragments_of_longer_phrases_are_dropped():
    phrases = [
        "the greatest musicians",
        "the greatest musicians of all time",
        "of all",
        "a dull , lifeless film",
        "dull",
        "greatest musician",  # not a word span of the first sentence: kept
        "the greatest musicians of all time",  # duplicate
    ]
    assert maximal_phrases(phrases) == [
        "the greatest musicians of all time",
        "a dull , lifeless film",
        "greatest musician",
    ]


@pytest.mark.skipif(not SST2.is_dir(), reason=f"{SST2} is absent (GLUE SST-2, shared data)")
def test_sst2_train_holds_about_seven_thousand_sentences(tmp_path, capsys):
    main([str(SST2 / "train.tsv"), "--out", str(tmp_path / "corpus.txt")])
    lines = [line for line in (tmp_path / "corpus.txt").read_text().splitlines() if line]
    assert 6000 < len(lines) < 9000 and len(set(lines)) == len(lines)
    assert "6,886 sentences in 861 documents" in capsys.readouterr().out


def test_sentences_are_grouped_into_documents_by_blank_lines():
    assert as_documents(["a", "b", "c"], 2) == "a\nb\n\nc\n"
    assert as_documents(["a", "b"], 1) == "a\n\nb\n"


def test_a_bad_per_document_is_refused_before_the_file_is_read(tmp_path, capsys):
    # The flag is checked first: its usage error (exit 2) comes even when the file is also bad,
    # instead of a file error that hides it until the file is fixed.
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "corpus.txt"), "--per-document", "0"])
    assert exit_info.value.code == 2
    assert "--per-document must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "corpus.txt").exists()
