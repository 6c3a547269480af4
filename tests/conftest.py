"""Runs shared by several test modules (each launch costs tens of seconds on a small machine)."""

import pytest
from exports import LAUNCH_TIMEOUT_S, PROBE_ENTRY, ZERO2_MLM
from launching import explain, run_pretrain
from synthetic_data import make_data_dir


@pytest.fixture(scope="session")
def mlm_data(tmp_path_factory):
    return make_data_dir(
        tmp_path_factory.mktemp("mlm") / "data", train_shards=4, samples_per_shard=24, nsp=False
    )


@pytest.fixture(scope="session")
def zero2_mlm(mlm_data, tmp_path_factory):
    """A 2-rank ZeRO-2 run of the mlm objective under the deepspeed launcher, engine probed."""
    run_dir = tmp_path_factory.mktemp("zero2-mlm") / "run"
    result = run_pretrain(
        mlm_data, run_dir, *ZERO2_MLM, entry=PROBE_ENTRY, timeout=LAUNCH_TIMEOUT_S, launcher="deepspeed"
    )
    assert result.returncode == 0, explain(result)
    return run_dir
