"""launch/two_phase.sh end to end on the tiny model: prep at 128 and 512, phase 1, phase 2 from its export."""

import json
import sys

import pytest
from bounded import run_bounded
from launching import REPO, explain, fresh_world_env, metrics
from test_prep_pipeline import write_corpus

pytestmark = pytest.mark.slow

PREP = [
    "tokenizer.vocab_size=400",
    "samples_per_shard=40",
    "chunk_mb=0.02",
    "valid_fraction=0.1",
    "clean.min_chars=50",
    "progress=false",
    "workers=1",
]
TINY = [
    "model=tiny",
    "micro_batch_size=8",
    "grad_accum=1",
    "zero_stage=0",
    "deepspeed_config=null",
    "log_every=1",
    "eval_samples=32",
    "threads=1",
    "loader.workers=0",
]


def test_phase_two_continues_phase_one_at_seq_512(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", docs=120)
    out = tmp_path / "out"
    env = fresh_world_env()
    env.update(
        PYTHON=sys.executable,
        LAUNCH=f"{sys.executable} -m pretrain",
        PREP_ARGS=" ".join([f"inputs=[{corpus}]", *PREP]),
        PHASE1_ARGS="max_steps=12 schedule.warmup_steps=2 optimizer.lr=2e-3 eval_every=12 save_every=12",
        PHASE2_ARGS="max_steps=3 schedule.warmup_steps=1 optimizer.lr=1e-3 eval_every=3 save_every=3",
        HF_HUB_OFFLINE="1",
    )
    result = run_bounded(
        ["bash", "launch/two_phase.sh", "configs/prep/text.yaml", str(out), *TINY],
        cwd=REPO,
        env=env,
        timeout=540,  # under pytest-timeout's 600 s, so that a hang ends with the ranks' stacks
    )
    assert result.returncode == 0, explain(result)
    for seq_len in (128, 512):
        manifest = json.loads((out / f"data{seq_len}" / "manifest.json").read_text())
        assert manifest["seq_len"] == seq_len
    assert (out / "data128" / "tokenizer" / "tokenizer.json").read_bytes() == (
        out / "data512" / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    phase2 = result.stdout[result.stdout.index("== phase 2") :]
    assert "x 512 |" in phase2 and "fresh start" in phase2
    assert f"init_from {out / 'phase1' / 'export'}: " in phase2 and "nothing initialised" in phase2
    first_train = metrics(out / "phase1")[0]["mlm_loss"]
    phase1_end = metrics(out / "phase1", "eval")[-1]
    phase2_start = metrics(out / "phase2", "eval")[0]
    assert phase1_end["step"] == 12 and phase2_start["step"] == 0
    # phase 2 starts from phase 1's knowledge (at seq 512, so not the same number), far below a fresh model
    assert phase2_start["mlm_loss"] < first_train - 0.5, (phase2_start, first_train)
    assert (
        json.loads((out / "phase2" / "export" / "config.json").read_text())["max_position_embeddings"] >= 512
    )
    assert [r["step"] for r in metrics(out / "phase2")] == [1, 2, 3]
