"""Real pretraining runs (2 ranks, gloo on CPU): learning, exact resume, crash-safe saves, export."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launching import REPO, explain, metrics, run_pretrain
from synthetic_data import make_data_dir

from data_prep.manifest import ManifestError, load_manifest, tokenizer_files
from data_prep.storage import DataSource

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("pretrain") / "data", train_shards=6, samples_per_shard=48)


def _shm_buffers() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")}


def test_two_ranks_learn_evaluate_checkpoint_and_export(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    shm_before = _shm_buffers()
    result = run_pretrain(
        data_dir,
        run_dir,
        "max_steps=40",
        "eval_every=20",
        "save_every=10",
        "keep_last=2",
        "zero_stage=2",
        "precision=bf16",
    )
    assert result.returncode == 0, explain(result)
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, last = sum(r["mlm_loss"] for r in rows[:5]) / 5, sum(r["mlm_loss"] for r in rows[-5:]) / 5
    assert last < first - 0.5, f"MLM loss did not fall: {first:.3f} -> {last:.3f}"
    for key in ("tokens", "loss", "mlm_loss", "nsp_loss", "lr", "grad_norm", "tokens_per_s"):
        assert key in rows[-1]
    evals = metrics(run_dir, "eval")
    assert [e["step"] for e in evals] == [20, 40] and evals[-1]["mlm_acc"] > evals[0]["mlm_acc"] * 0.9
    assert {"mlm_acc", "nsp_acc", "ppl"} <= evals[-1].keys()
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step00000030", "step00000040"]  # keep_last=2
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000040"
    assert (run_dir / "loss.png").stat().st_size > 10_000
    assert any((run_dir / "tb").iterdir())
    summary = json.loads((run_dir / "export" / "training_summary.json").read_text())
    assert summary["step"] == 40 and summary["tokens"] == rows[-1]["tokens"]
    assert _shm_buffers() <= shm_before, "DeepSpeed's shared-memory allreduce buffers were left in /dev/shm"

    # The finished run refuses to go on with another data dir (here: another vocabulary), in one line.
    other_data = make_data_dir(tmp_path / "d2", train_shards=2, samples_per_shard=16, vocab_size=150)
    refused = run_pretrain(other_data, run_dir, "max_steps=50", "zero_stage=2", "precision=bf16", ranks=1)
    assert refused.returncode == 1
    (line,) = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert "holds a run with another model.vocab_size" in line
    assert (run_dir / "checkpoints" / "latest").read_text() == "step00000040"


def test_mismatched_data_dir_is_refused_with_one_line(tmp_path, data_dir):
    wrong_len = run_pretrain(data_dir, tmp_path / "r1", "max_steps=2", "seq_len=128", ranks=1)
    assert wrong_len.returncode == 1
    (line,) = [ln for ln in wrong_len.stderr.splitlines() if ln.startswith("error:")]
    assert "seq_len=64" in line and "seq_len=128" in line and "data_prep" in line

    # The tokenizer check, in-process (the launch path of such an error is the one just above).
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    tokenizer_file = other / "tokenizer" / "tokenizer.json"
    tokenizer_file.write_text(tokenizer_file.read_text().replace('"w7"', '"w7x"'))
    with pytest.raises(ManifestError, match="is not the one its shards were made with"):
        tokenizer_files(DataSource(other), load_manifest(other))
    # A run dir holding a run of another data dir: test_two_ranks_learn_evaluate_checkpoint_and_export.


def test_export_never_replaces_a_directory_it_did_not_write(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    result = subprocess.run(
        [sys.executable, "-m", "pretrain.export", str(tmp_path / "run"), "--out", str(victim)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert (
        "exists and is not an earlier export" in result.stderr
        and len(result.stderr.strip().splitlines()) == 1
    )
    assert (victim / "notes.txt").read_text() == "keep me"
