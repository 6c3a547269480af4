"""The pretrain command's refusals: config mistakes (exit 2) and data dirs it cannot train on
(exit 1), each one line naming the key or file and the fix, before any training step."""

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from launching import REPO, run_pretrain
from synthetic_data import make_data_dir

BAD_CONFIGS = [
    # (overrides, words the one line must hold)
    (["optimiser.lr=1e-3"], ["unknown config key", "optimiser"]),
    (["optimizer.learning_rate=1e-3"], ["unknown config key", "optimizer.learning_rate", "lr"]),
    (["max_steps=many"], ["max_steps", "many"]),
    (["zero_stage=4"], ["zero_stage", "4"]),
    (["precision=fp8"], ["precision", "fp8", "bf16"]),
    (["schedule.decay=step"], ["schedule.decay", "cosine"]),
    (["mlm_probability=1.5"], ["mlm_probability"]),
    (["optimizer.name=lamb", "zero_stage=1"], ["lamb", "zero_stage=0"]),
]


def test_config_mistakes_exit_2_with_one_line(tmp_path):
    base = [f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}"]
    cases = [(base + overrides, words) for overrides, words in BAD_CONFIGS]
    cases.append(([f"run_dir={tmp_path / 'run'}"], ["data_dir"]))  # a required key missing
    cases.append((["--config", str(tmp_path / "nowhere.yaml"), *base], ["nowhere.yaml"]))
    (tmp_path / "list.yaml").write_text("- not\n- a mapping\n")
    cases.append((["--config", str(tmp_path / "list.yaml"), *base], ["list.yaml", "mapping"]))
    # all at once: each is a short-lived process that stops before importing torch
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pretrain", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _ in cases
    ]
    for (args, words), proc in zip(cases, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        assert all(word in lines[0] for word in words), (args, lines[0])
        assert out == ""
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("cli") / "data", train_shards=2, samples_per_shard=16)


def _with_manifest(data_dir, root, **changes):
    copy = root / "data"
    shutil.copytree(data_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.slow
def test_data_dirs_of_another_format_or_objective_are_refused_before_any_step(tmp_path, data_dir):
    cases = {
        "format": (_with_manifest(data_dir, tmp_path / "f", format="bert-pretrain-wds/0"), "wds/0"),
        "objective": (_with_manifest(data_dir, tmp_path / "o", objective="sop"), "'sop'"),
    }
    with ThreadPoolExecutor() as pool:  # both launches at once: most of each is start-up
        results = {
            name: pool.submit(run_pretrain, data, tmp_path / f"run-{name}", "max_steps=2", ranks=1)
            for name, (data, _) in cases.items()
        }
    for name, (_, word) in cases.items():
        run_dir, result = tmp_path / f"run-{name}", results[name].result()
        assert result.returncode == 1, result.stderr
        (line,) = [ln for ln in result.stderr.splitlines() if "error:" in ln]
        assert name in line and word in line and "python -m data_prep" in line, line
        # refused before training: no step ran, nothing was logged or saved
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
        assert "step" not in result.stdout.lower()
