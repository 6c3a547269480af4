"""The shared config mechanism: YAML + dotted key=value overrides, typed, with one-line errors."""

from pathlib import Path
from typing import Literal

import pytest

from data_prep.typed_config import ConfigError, Section, load_config, to_yaml


class Optimizer(Section):
    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)


class Run(Section):
    name: str = "run"
    steps: int = 10
    precision: Literal["fp32", "fp16", "bf16"] = "bf16"
    inputs: list[str] = []
    optimizer: Optimizer = Optimizer()


def test_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("# a comment\nsteps: 5\noptimizer:\n  lr: 1e-4\n")
    cfg = load_config(Run, path, ["optimizer.lr=3e-4", "inputs=[a.txt, b/*.jsonl]", "name=123"])
    assert cfg.steps == 5
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.optimizer.betas == (0.9, 0.999)
    assert cfg.inputs == ["a.txt", "b/*.jsonl"]
    assert cfg.name == "123"
    assert load_config(Run).steps == 10


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(Run, None, ["steps=7", "precision=fp16"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(Run, path) == cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.lrr=1", "unknown config key 'optimizer.lrr' (valid keys here: lr, betas)"),
        ("stepz=1", "unknown config key 'stepz'"),
        ("steps=ten", "config key 'steps' = 'ten': Input should be a valid integer"),
        ("precision=fp8", "config key 'precision' = 'fp8': Input should be 'fp32', 'fp16' or 'bf16'"),
        ("steps", "override 'steps' is not key=value"),
    ],
)
def test_errors_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(Run, None, [override])
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(Run, bad)
    with pytest.raises(ConfigError) as err:
        load_config(Run, bad)
    assert "line 2" in str(err.value) and "\n" not in str(err.value)


def test_malformed_model_and_deepspeed_json_name_the_file(tmp_path):
    from pretrain.ds_config import read_user_deepspeed_config
    from pretrain.model import bert_config_from_preset

    broken = tmp_path / "broken.json"
    broken.write_text('{"hidden_size": 64,\n')
    with pytest.raises(ValueError, match=r"model config .*broken.json is not a JSON object"):
        bert_config_from_preset(broken, 100, {"pad": 0}, 128)
    with pytest.raises(ValueError, match=r"deepspeed_config .*broken.json.* is not a JSON object"):
        read_user_deepspeed_config(broken)


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_parses(path):
    """A config in configs/ with a stale or misspelt key fails here, not in a user's first run."""
    from data_prep.config import load_prep_config
    from finetune.config import FinetuneConfig
    from finetune.tasks import load_task
    from pretrain.config import load_pretrain_config

    if path.parent.name == "prep":
        load_prep_config(path)
    elif path.parent.name == "pretrain":
        load_pretrain_config(str(path), [])
    elif path.parent.name == "suite":  # a scoreboard task: every grid point a valid fine-tuning config
        load_task(str(path))
    else:
        load_config(FinetuneConfig, path, [])
