"""fp16 pretraining on real fp16 kernels: ZeRO-1 and ZeRO-2 with a save, an exact resume and an export.

fp16 is the GPU path's classic mode (dynamic loss scaling, fp16 weights with an fp32 master). Where
DeepSpeed supports fp16 on this CPU (AVX512-FP16/AMX-FP16) the check runs natively: the resumed run
logs the uninterrupted run's losses bit for bit and its export equals the uninterrupted one's
(``benchmarks.train_check``, the GPU check's training stage). Elsewhere it is skipped, saying why;
the loss scaler itself is tested on every CPU (test_fault_tolerance's overflow storm, emulated).
"""

import json

import pytest
from bounded import run_bounded
from launching import REPO, explain, fresh_world_env

from benchmarks.synthetic_shards import write_synthetic_data_dir
from benchmarks.train_check import command_line
from pretrain.distributed import precision_problem


@pytest.mark.slow
def test_fp16_zero1_and_zero2_save_resume_and_export_exactly(tmp_path):
    if (problem := precision_problem("fp16")) is not None:
        pytest.skip(f"native fp16 only: {problem}")
    data = write_synthetic_data_dir(tmp_path / "data", seq_len=32, vocab_size=500, train_shards=4)
    out = tmp_path / "result.json"
    overrides = ["seq_len=32", "micro_batch_size=4", "loader.workers=0", "threads=1"]
    command = command_line(data, "tiny", "fp16:1,fp16:2", 6, tmp_path / "runs", out, overrides)
    done = run_bounded(command, cwd=REPO, timeout=480, env=fresh_world_env())
    assert done.returncode == 0, explain(done)
    results = json.loads(out.read_text())
    assert [(r["precision"], r["zero_stage"]) for r in results] == [("fp16", 1), ("fp16", 2)]
    for result in results:
        assert result["status"] == "ok", (result, explain(done))
        assert result["resumed_from"] == "step00000003", result  # the middle checkpoint, not a fresh start
        assert result["losses_bitwise_equal"] and result["export_max_weight_diff"] == 0.0, result
        assert result["export_loads"], result
        assert len(result["losses"]) == 6 and all(loss == loss for loss in result["losses"]), result
