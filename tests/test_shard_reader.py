"""The strict shard reader: corrupt bytes, hostile members and bad ids are caught, nothing executed."""

import io
import os
import pickle

import numpy as np
import pytest
from synthetic_data import CLS, SEP, npy_bytes, write_shard

from data_prep.manifest import BadSample, Sample, SampleRules, ShardError, ShardSpec, read_shard

RULES = SampleRules(nsp=True, vocab_size=100, seq_len=32, cls_id=CLS, sep_id=SEP, dtype="uint16")


def _good(n):
    return [(np.array([CLS, 10 + i, 11, SEP, 12, SEP], dtype=np.uint16), i % 2) for i in range(n)]


def _spec(path, entry, samples=None):
    return ShardSpec(
        path=path, sha256=entry["sha256"], samples=samples if samples is not None else entry["samples"]
    )


def test_good_shard_reads_back(tmp_path):
    path = tmp_path / "s.tar"
    entry = write_shard(path, 3, _good(5))
    samples = read_shard(_spec(path, entry), RULES)
    assert [s.key for s in samples] == [f"000003_{i:06d}" for i in range(5)]
    assert all(isinstance(s, Sample) for s in samples)
    assert samples[1].tokens.tolist() == [CLS, 11, 11, SEP, 12, SEP] and samples[1].nsp_label == 1


def test_flipped_byte_and_truncation_fail_the_sha256_check(tmp_path):
    path = tmp_path / "s.tar"
    entry = write_shard(path, 0, _good(4))
    data = bytearray(path.read_bytes())
    data[600] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"s\.tar: sha256 .* does not match the manifest"):
        read_shard(_spec(path, entry), RULES)
    path.write_bytes(bytes(data[:1000]))
    with pytest.raises(ShardError, match="data_prep verify"):
        read_shard(_spec(path, entry), RULES)


class _Exploit:
    """Unpickling this would create a file: the test checks that it never appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_members_are_rejected_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)))
    hostile = {
        "000000_000001.pyd": payload,  # an extra pickle member on a good sample
        "000000_000002.pickle": payload,
        "../../escape.tokens.npy": npy_bytes(np.array([CLS, SEP], dtype=np.uint16)),
    }
    path = tmp_path / "s.tar"
    entry = write_shard(path, 0, _good(3), extra_members=hostile)
    # a pickled object array in place of the token array
    object_ids = io.BytesIO()
    np.save(object_ids, np.array([_Exploit(str(marker))], dtype=object), allow_pickle=True)
    path2 = tmp_path / "s2.tar"
    entry2 = write_shard(
        path2,
        1,
        [(np.array([CLS, 5, SEP, 6, SEP], dtype=np.uint16), 0)],
        extra_members={"000001_000001.tokens.npy": object_ids.getvalue(), "000001_000001.nsp.cls": b"0"},
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        samples = read_shard(_spec(path, entry, samples=4), RULES) + read_shard(
            _spec(path2, entry2, samples=2), RULES
        )
    finally:
        os.chdir(cwd)
    bad = {s.key: s.reason for s in samples if isinstance(s, BadSample)}
    assert "unexpected member(s) ['pyd']" in bad["000000_000001"]
    assert "unexpected member(s) ['pickle']" in bad["000000_000002"]
    assert any("escape" in key for key in bad)
    assert "not a plain NumPy array" in bad["000001_000001"]
    assert [s.key for s in samples if isinstance(s, Sample)] == ["000000_000000", "000001_000000"]
    assert not marker.exists()
    # the member is named relative to the working directory (tmp_path): it would land two levels up
    escaped = (tmp_path / "../../escape.tokens.npy").resolve()
    assert escaped.parent == tmp_path.parent.parent and not escaped.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tar", "s2.tar"]  # nothing else written


@pytest.mark.parametrize(
    "ids, label, reason",
    [
        ([CLS, 5, SEP, 100, SEP], b"0", "outside the vocabulary"),
        ([7, 5, SEP, 6, SEP], b"0", "not [CLS] A [SEP] B [SEP]"),
        ([CLS] + [5] * 40 + [SEP, 6, SEP], b"0", "more than seq_len=32"),
        ([CLS, 5, SEP, 6, SEP], b"2", "must be 0 or 1"),
        ([CLS, 5, SEP, 6, SEP], None, "missing member .nsp.cls"),
        # the two rule sets reconciled: [CLS] alone, one [SEP] for mlm+nsp, an empty segment, dtype
        ([CLS, SEP], b"0", "not [CLS] A [SEP] B [SEP]"),
        ([CLS, 5, 6, SEP], b"0", "not [CLS] A [SEP] B [SEP]"),
        ([CLS, 5, SEP, SEP], b"0", "not [CLS] A [SEP] B [SEP]"),
        ([CLS, 5, SEP, 6, SEP, 7], b"0", "not [CLS] A [SEP] B [SEP]"),
        (np.array([CLS, 5, SEP, 6, SEP], dtype=np.int32), b"0", "expected a 1-D uint16 array"),
    ],
)
def test_bad_samples_are_named_with_the_failed_check(tmp_path, ids, label, reason):
    path = tmp_path / "s.tar"
    array = ids if isinstance(ids, np.ndarray) else np.array(ids, dtype=np.uint16)
    members = {"000000_000001.tokens.npy": npy_bytes(array)}
    if label is not None:
        members["000000_000001.nsp.cls"] = label
    entry = write_shard(path, 0, _good(1), extra_members=members)
    samples = read_shard(_spec(path, entry, samples=2), RULES)
    assert isinstance(samples[1], BadSample) and reason in samples[1].reason
    assert "000000_000001" in samples[1].describe() and "s.tar" in samples[1].describe()
