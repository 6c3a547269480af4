"""`python -m data_prep verify`: each content check catches its own planted defect.

Every defect is planted in a shard that is then re-hashed into the manifest (sha256 and bytes
updated), so the sha256 check passes and only the check under test can report it: one FAIL line
naming the shard and, for a sample-level defect, the sample.
"""

import shutil

import numpy as np
import pytest
from synthetic_data import CLS, SEP, make_data_dir, make_examples, write_shard

from data_prep.__main__ import main as data_prep_main
from data_prep.atomic import write_json_atomic
from data_prep.manifest import load_manifest

VOCAB, SEQ_LEN, SPS = 200, 32, 8


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_data_dir(
        tmp_path_factory.mktemp("verify") / "data",
        train_shards=2,
        samples_per_shard=SPS,
        valid_samples=8,
        vocab_size=VOCAB,
        seq_len=SEQ_LEN,
    )


def _verify(data_dir, capsys):
    code = data_prep_main(["verify", str(data_dir)])
    out = capsys.readouterr().out
    return code, [line for line in out.splitlines() if line.startswith("FAIL")]


def _plant(clean, tmp_path, edit, keep_counts=True):
    """Copy the data dir, rewrite train shard 1 with ``edit(examples)``, re-hash it into the manifest.

    ``keep_counts``: the manifest keeps the shard's original sample and token counts (the count
    checks must then compare them with what the shard holds); else they follow the new content.
    """
    data = tmp_path / "data"
    shutil.copytree(clean, data)
    manifest = load_manifest(data)
    entry = manifest["splits"]["train"]["shards"][1]
    examples = make_examples(2 * SPS, seed=0, vocab_size=VOCAB, seq_len=SEQ_LEN, nsp=True)[SPS:]
    written = write_shard(data / entry["path"], 1, edit(examples))
    entry.update(sha256=written["sha256"], bytes=written["bytes"])
    if not keep_counts:
        entry.update(samples=written["samples"], tokens=written["tokens"])
    write_json_atomic(data / "manifest.json", manifest)
    return data, entry["path"]


def _replace(index, ids):
    def edit(examples):
        examples[index] = (np.asarray(ids, dtype=np.uint16), examples[index][1])
        return examples

    return edit


def test_the_unplanted_copy_passes(clean, tmp_path, capsys):
    data, _ = _plant(clean, tmp_path, lambda examples: examples)
    assert _verify(data, capsys) == (0, [])


def test_sample_count_differing_from_the_manifest_is_caught(clean, tmp_path, capsys):
    data, shard = _plant(clean, tmp_path, lambda examples: examples[:-1])
    code, fails = _verify(data, capsys)
    assert code == 1
    assert len(fails) == 1 and shard in fails[0] and f"{SPS - 1} samples" in fails[0] and str(SPS) in fails[0]


def test_token_count_differing_from_the_manifest_is_caught(clean, tmp_path, capsys):
    # one token fewer in a sample that stays a valid [CLS] A [SEP] B [SEP]: only the total is off
    def shorten(examples):
        ids, label = examples[2]
        examples[2] = (np.delete(ids, 1), label)
        return examples

    data, shard = _plant(clean, tmp_path, shorten)
    code, fails = _verify(data, capsys)
    assert code == 1 and len(fails) == 1 and shard in fails[0] and "tokens" in fails[0]


@pytest.mark.parametrize(
    "ids, words",
    [
        pytest.param([CLS, 10, SEP, VOCAB, SEP], ("vocab", str(VOCAB)), id="id-equal-to-vocab-size"),
        pytest.param([CLS, 10, SEP, 11, 60000, SEP], ("vocab", "60000"), id="id-far-out-of-range"),
        pytest.param([10, 11, SEP, 12, SEP], ("[CLS]",), id="no-leading-cls"),
        pytest.param([CLS, 10, SEP, 12, 13], ("[SEP]",), id="no-closing-sep"),
        pytest.param([CLS, 10, 11, 12, SEP], ("[SEP]",), id="one-sep-in-a-pair"),
        pytest.param([CLS, 10, SEP, 11, SEP, 12, SEP], ("[SEP]",), id="three-seps"),
    ],
)
def test_id_range_and_layout_defects_are_caught_and_named(clean, tmp_path, capsys, ids, words):
    data, shard = _plant(clean, tmp_path, _replace(5, ids), keep_counts=False)
    code, fails = _verify(data, capsys)
    assert code == 1
    (line,) = fails
    assert shard in line and "000001_000005" in line
    assert all(word in line for word in words), line
