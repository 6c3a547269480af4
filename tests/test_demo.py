"""`make demo` end to end (python -m pretrain.demo), with small step counts and a small corpus."""

import json
import sys

import pytest
import yaml
from bounded import run_bounded
from launching import REPO, fresh_world_env

from pretrain.docstring_task import split_of

pytestmark = pytest.mark.slow


def test_demo_runs_every_stage_and_reports(tmp_path):
    out = tmp_path / "demo"
    env = fresh_world_env()
    result = run_bounded(
        [
            sys.executable,
            "-m",
            "pretrain.demo",
            "--out",
            str(out),
            "--pretrain-steps",
            "12",
            "--max-docs",
            "300",
            "--samples-per-shard",
            "128",
            "--task-per-class",
            "40",
            "10",
            "20",
            "--finetune-epochs",
            "1",
        ],
        cwd=REPO,
        env={**env, "HF_HUB_OFFLINE": "1"},
        timeout=540,  # under pytest-timeout's 600 s, so that a hang ends with the ranks' stacks
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pretrain"]["steps"] == 12 and summary["pretrain"]["world_size"] == 2
    assert summary["data"]["documents"]["in"] == 300
    for init in ("pretrained", "random"):
        report = summary["finetune"][init]
        assert report["init"] == init and {"valid", "test"} <= report["splits"].keys()
        assert 0.0 <= report["splits"]["test"]["accuracy"] <= 1.0
    report = (out / "report.md").read_text()
    assert "| pretrained |" in report and "| random |" in report and "tokens/s" in report
    assert (out / "loss.png").stat().st_size > 10_000
    # the task's valid and test modules are excluded from the pretraining corpus, and only those
    excluded = yaml.safe_load((out / "prep.yaml").read_text())["pydocs"]["exclude"]
    assert len(excluded) > 10 and all(split_of(module, seed=0) != "train" for module in excluded)
    assert "=== pretrain (2 ranks)" in result.stdout
