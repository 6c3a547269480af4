"""Shared by the ZeRO-stage and launcher tests: a straight run with a look inside its engine
(tests/train_then_probe.py), the same run rewound to an earlier checkpoint and resumed, and the
checks of an export against the engine it came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from launching import REPO, explain, metrics, run_pretrain, sample_log
from safetensors.torch import load_file

PROBE_ENTRY = (str(REPO / "tests" / "train_then_probe.py"),)
# The session's shared run (conftest.py): ZeRO-2, bf16, the mlm objective, with the repo's tuning
# JSON for this stage and precision.
ZERO2_MLM = (
    "zero_stage=2",
    "precision=bf16",
    "deepspeed_config=configs/deepspeed/bf16_zero2.json",
    "max_steps=12",
    "eval_every=12",
)
# A 2-rank ZeRO-3 launch took ~145 s on the 2-core machine at load average ~45; allow twice that.
LAUNCH_TIMEOUT_S = 480
SAME_KEYS = ("loss", "mlm_loss", "nsp_loss", "lr", "grad_norm", "tokens")


def straight_then_resumed(data_dir: Path, root: Path, *overrides: str, resume_from: int, ranks: int = 2):
    """Run to the end (probing the engine), then rewind the run dir to checkpoint ``resume_from``,
    as if the run had stopped right after saving it, and relaunch. Returns (straight, resumed):
    ``straight`` is a copy of the first run's records (metrics, sample logs, export, probe)."""
    run_dir = root / "run"
    first = run_pretrain(
        data_dir, run_dir, *overrides, ranks=ranks, entry=PROBE_ENTRY, timeout=LAUNCH_TIMEOUT_S
    )
    assert first.returncode == 0, explain(first)
    straight = root / "straight"
    straight.mkdir()
    for name in ("metrics.jsonl", "samples", "export", "probe.safetensors"):
        source = run_dir / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, straight / name)
    tag = f"step{resume_from:08d}"
    checkpoints = run_dir / "checkpoints"
    for later in checkpoints.glob("step*"):
        if later.name > tag:
            shutil.rmtree(later)
    (checkpoints / "latest").write_text(tag)
    resumed = run_pretrain(data_dir, run_dir, *overrides, ranks=ranks, timeout=LAUNCH_TIMEOUT_S)
    assert resumed.returncode == 0, explain(resumed)
    assert f"resumed from {tag}" in resumed.stdout
    return straight, run_dir


def assert_resumed_exactly(straight: Path, resumed: Path, ranks: int, steps: int) -> None:
    """Same samples, losses, learning rates and final weights, bit for bit."""
    for rank in range(ranks):
        expected, got = sample_log(straight, rank), sample_log(resumed, rank)
        assert [r["step"] for r in got] == [r["step"] for r in expected]
        assert {r["step"] for r in got} == set(range(1, steps + 1))  # a resume that yields nothing fails
        assert [r["keys"] for r in got] == [r["keys"] for r in expected]
        assert [r["loss"] for r in got] == [r["loss"] for r in expected]
    rows = [[{k: r.get(k) for k in SAME_KEYS} for r in metrics(d)] for d in (straight, resumed)]
    assert len(rows[1]) == steps and rows[0] == rows[1]
    a = load_file(straight / "export" / "model.safetensors")
    b = load_file(resumed / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_export(run_dir: Path, nsp: bool, master_weights: bool) -> None:
    """The export holds the engine's weights (its fp32 master weights under ZeRO, else the module's),
    loads offline with each Auto class, and gives the engine's logits on the probe's batch."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining

    export = run_dir / "export"
    saved = load_file(export / "model.safetensors")
    probe = load_file(run_dir / "probe.safetensors")
    names = [key.removeprefix("param.") for key in probe if key.startswith("param.")]
    assert names and all(name in saved for name in names), sorted(set(names) - set(saved))[:5]
    assert all(saved[name].dtype == torch.float32 for name in names)
    for name in names:  # the weights the engine computes with are the export's, rounded to its dtype
        param = probe[f"param.{name}"]
        assert torch.equal(saved[name].to(param.dtype), param), name
    if master_weights:
        # consolidated from every rank's partition: equal to the optimizer's fp32 master copy
        # (gathered live from the engine), which bf16 cannot represent
        assert {f"master.{name}" for name in names} <= probe.keys()
        for name in names:
            assert torch.equal(saved[name], probe[f"master.{name}"]), name
        assert any(not torch.equal(saved[n], saved[n].bfloat16().float()) for n in names)
    assert any(name.startswith("cls.seq_relationship") for name in saved) == nsp

    ids = fixed_batch(saved["bert.embeddings.word_embeddings.weight"].shape[0])
    expected = probe["logits.prediction_logits" if nsp else "logits.logits"]
    engine_dtype = probe[f"param.{names[0]}"].dtype
    classes = [AutoModelForMaskedLM, AutoModel] + ([AutoModelForPreTraining] if nsp else [])
    loaded = {}
    for cls in classes:
        model, info = cls.from_pretrained(
            export, local_files_only=True, dtype=engine_dtype, output_loading_info=True
        )
        # BertForMaskedLM (the mlm objective) has no pooler, so AutoModel initialises a fresh one
        no_pooler = {"pooler.dense.weight", "pooler.dense.bias"} if cls is AutoModel and not nsp else set()
        assert set(info["missing_keys"]) == no_pooler and not info["mismatched_keys"], (cls.__name__, info)
        loaded[cls] = model.eval()
    with torch.no_grad():
        mlm_logits = loaded[AutoModelForMaskedLM](input_ids=ids).logits.float()
        hidden = loaded[AutoModel](input_ids=ids).last_hidden_state
        assert torch.equal(hidden, loaded[AutoModelForMaskedLM].bert(input_ids=ids).last_hidden_state)
        # the same weights in the same dtype as the engine: its logits, up to the rounding of
        # kernels that add in another order (ZeRO-3 runs its own linear layers): about one bf16
        # step (2^-6 for logits of 2 to 4) at most, far less on average
        assert_logits_close(mlm_logits, expected)
        if nsp:
            out = loaded[AutoModelForPreTraining](input_ids=ids)
            assert_logits_close(out.prediction_logits.float(), expected)
            assert_logits_close(out.seq_relationship_logits.float(), probe["logits.seq_relationship_logits"])
    summary = (export / "training_summary.json").read_text()
    assert '"step"' in summary


def assert_logits_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert expected.abs().max() < 8  # the bound below assumes logits of a briefly trained model
    torch.testing.assert_close(got, expected, rtol=0, atol=0.03)
    assert (got - expected).abs().mean() < 0.005


def fixed_batch(vocab_size: int) -> torch.Tensor:
    from train_then_probe import fixed_batch as batch

    return batch(vocab_size)
