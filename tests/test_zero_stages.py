"""ZeRO stages 3 and 0 in the trainer, and exports across ranks (2 ranks, gloo on CPU).

Each stage runs once to the end, its engine probed after training (tests/train_then_probe.py);
the run dir is then rewound to an earlier checkpoint and the run resumed. The resumed run must
train on the same samples with the same losses to the same final weights, bit for bit, and the
export must hold the engine's weights and give its logits. ZeRO-2 with the ``mlm`` objective is
the session's shared run (conftest.py), also the reference of the launcher tests.
"""

import json

import pytest
from exports import assert_resumed_exactly, check_export, straight_then_resumed
from launching import metrics, sample_log
from synthetic_data import make_data_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zero3(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    data = make_data_dir(root / "data", train_shards=4, samples_per_shard=24)
    overrides = ["zero_stage=3", "precision=bf16", "max_steps=8", "save_every=4", "log_samples=true"]
    return straight_then_resumed(data, root, *overrides, resume_from=4)


# ZeRO-0 (no partitioning; the only stage LAMB runs with) carries the hard cases of exact resume:
# 2 micro-batches per step, 2 loader workers, batches of 6 that straddle the lanes' epoch slices of
# 8 samples, and a checkpoint (step 5) in the second epoch, with two epoch ends after it.
SPS, MICRO, ACCUM = 16, 6, 2


@pytest.fixture(scope="module")
def zero0(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero0")
    data = make_data_dir(root / "data", train_shards=4, samples_per_shard=SPS)
    overrides = [
        "zero_stage=0",
        "precision=bf16",
        "optimizer.name=lamb",
        f"micro_batch_size={MICRO}",
        f"grad_accum={ACCUM}",
        "loader.workers=2",
        "max_steps=10",
        "save_every=5",
        "log_samples=true",
    ]
    return straight_then_resumed(data, root, *overrides, resume_from=5)


def test_zero3_resumes_exactly(zero3):
    straight, resumed = zero3
    assert_resumed_exactly(straight, resumed, ranks=2, steps=8)
    state = json.loads((resumed / "checkpoints" / "step00000008" / "run_state.json").read_text())
    assert state["zero_stage"] == 3 and state["world_size"] == 2


def test_zero3_bf16_export_merges_partitions_into_the_fp32_master_weights(zero3):
    straight, _ = zero3
    check_export(straight, nsp=True, master_weights=True)


def test_zero0_lamb_resumes_exactly_across_epochs_with_accumulation_and_workers(zero0):
    straight, resumed = zero0
    assert_resumed_exactly(straight, resumed, ranks=2, steps=10)
    rows = [sample_log(resumed, rank) for rank in range(2)]
    assert all(len(r) == 10 * ACCUM and all(len(row["keys"]) == MICRO for row in r) for r in rows)
    # Global batch j is rank j % 2's (j // 2)-th micro-batch and lane j % LANES's next MICRO samples
    # (pretrain/data.py); each lane reads its slice of every epoch's order, so the lanes' k-th
    # slices together are epoch k: every sample once. 40 batches = 5 per lane = 30 samples per lane
    # of 8: the checkpoint (step 5, 15 per lane) lies in epoch 1 and two epoch ends follow it.
    lanes, total = 8, 4 * SPS  # loader.lanes defaults to 4 per rank
    batches = [rows[j % 2][j // 2]["keys"] for j in range(2 * 10 * ACCUM)]
    per_lane = [
        [key for j in range(lane, len(batches), lanes) for key in batches[j]] for lane in range(lanes)
    ]
    share = total // lanes
    epochs = [[key for keys in per_lane for key in keys[e * share : (e + 1) * share]] for e in range(3)]
    for keys in epochs:
        assert len(keys) == len(set(keys)) == total  # every sample, once
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])  # a new order each epoch
    assert "nsp_loss" in metrics(resumed)[-1]


def test_zero0_exports_the_module_weights(zero0):
    straight, _ = zero0
    check_export(straight, nsp=True, master_weights=False)


def test_zero2_mlm_objective_end_to_end(zero2_mlm):
    run_dir = zero2_mlm
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 10
    assert all("nsp_loss" not in r and r["loss"] == r["mlm_loss"] for r in rows)
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 0.2, (first, last)
    (evaluation,) = metrics(run_dir, "eval")
    assert "mlm_acc" in evaluation and "nsp_acc" not in evaluation
    config = json.loads((run_dir / "export" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    check_export(run_dir, nsp=False, master_weights=True)
