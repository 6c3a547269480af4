"""The data contract module's shared helpers: the one atomic write every stage uses."""

import pytest

from data_prep.atomic import atomic_path, open_atomic, write_json_atomic, write_text_atomic


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(RuntimeError), open_atomic(path) as handle:
        handle.write('{"a": 2')
        raise RuntimeError("crash mid-write")
    assert path.read_text() == '{\n  "a": 1\n}\n'  # the old whole, never a part
    write_json_atomic(path, {"a": [2]}, indent=None, durable=False)
    assert path.read_text() == '{"a":[2]}\n'
    write_text_atomic(tmp_path / "latest", "step00000002")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "state.json"]  # no temporaries left


def test_atomic_directory_swaps_in_a_complete_tree(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    with pytest.raises(OSError), atomic_path(out) as staging:
        staging.mkdir()
        (staging / "half.bin").write_bytes(b"half")
        raise OSError("disk full")
    assert [p.name for p in out.iterdir()] == ["old.bin"]
    with atomic_path(out) as staging:
        staging.mkdir()
        (staging / "new.bin").write_bytes(b"new")
    assert [p.name for p in out.iterdir()] == ["new.bin"] and len(list(tmp_path.iterdir())) == 1
