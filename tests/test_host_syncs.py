"""Host syncs of the training loop: one per optimizer step, whatever ``grad_accum`` is.

A host sync (reading a device value on the host) stalls the host until the device has caught up;
the trainer's come from the helpers that agree across ranks and read the answer (``any_rank``,
``reduce_sum``, ``reduce_max``). The run is in this process, one rank, so they can be counted.
"""

import json
import math

import pytest
from launching import FAST, LAUNCHER_VARS
from synthetic_data import make_data_dir

import pretrain.train as trainer
from pretrain.config import load_pretrain_config

ACCUM, STEPS = 4, 5
NAN_AT = 4 * ACCUM + 2  # forward pass 18: the last step's 2nd micro-step, not its last


def test_one_host_sync_per_optimizer_step_and_a_nan_micro_step_replaced(tmp_path, monkeypatch):
    data_dir = make_data_dir(tmp_path / "data", train_shards=2, samples_per_shard=48, nsp=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PRETRAIN_NONFINITE_LOSS_AT", f"{NAN_AT}-{NAN_AT}")
    for var in LAUNCHER_VARS:  # the in-process rank-0 group sets these; restore them afterwards
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    syncs, at_step = [0], []
    for name in ("any_rank", "reduce_sum", "reduce_max"):
        helper = getattr(trainer, name)

        def counted(*args, _helper=helper, **kwargs):
            syncs[0] += 1
            return _helper(*args, **kwargs)

        monkeypatch.setattr(trainer, name, counted)
    crash_point = trainer.crash_point

    def step_done(point):  # called once per applied optimizer step, before its log/eval/save
        at_step.append(syncs[0])
        crash_point(point)

    monkeypatch.setattr(trainer, "crash_point", step_done)
    run_dir = tmp_path / "run"
    args = [f"data_dir={data_dir}", f"run_dir={run_dir}", *FAST, f"grad_accum={ACCUM}", f"max_steps={STEPS}"]
    args += ["export=false", "log_every=1000", "eval_every=1000", "save_every=1000"]
    summary = trainer.train(load_pretrain_config(None, args))

    per_step = [after - before for before, after in zip(at_step, at_step[1:])]
    # steps 2-4: one each (step 1 also agrees on its own batches; step 5 has the NaN)
    assert per_step[:3] == [1, 1, 1], per_step
    # the NaN micro-step's batch is skipped and replaced by the next: one sync more for its
    # replacement's loss (the next step would top up its read-ahead with one more)
    assert per_step[3] == 2, per_step
    assert summary["steps"] == STEPS and summary["nonfinite_skips"] == 1
    state = json.loads((run_dir / "checkpoints" / f"step{STEPS:08d}" / "run_state.json").read_text())
    assert state["data"]["position"] == STEPS * ACCUM + 1  # every batch trained on, plus the skipped one
    (row,) = [r for r in map(json.loads, (run_dir / "metrics.jsonl").open()) if r["kind"] == "train"]
    assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])  # the NaN's gradients dropped
    assert row["tokens"] == pytest.approx(summary["tokens"]) and summary["final_eval"]["mlm_loss"] < 50
