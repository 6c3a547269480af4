"""A DeepSpeed user's own JSON driving a run (pretrain/deepspeed_json.py): the precedence command
line > JSON > YAML > defaults, the batch geometry per world size, the optimizer mapping, the
refusals and warnings; then real launches: the lr DeepSpeed's scheduler applies on 2 ranks, and an
exact resume of a JSON-driven schedule.

The resolution is a pure function of (config, JSON, world size), so most checks call it directly;
the expected values are written out here from DeepSpeed's documented rules, not computed by the
code under test.
"""

import json
import random

import pytest
import torch
import yaml
from launching import explain, metrics, run_pretrain, sample_log
from safetensors.torch import load_file
from synthetic_data import make_data_dir

from data_prep.typed_config import ConfigError
from pretrain.config import load_pretrain_config
from pretrain.deepspeed_json import check_with_deepspeed, resolve
from pretrain.ds_config import build_deepspeed_config


def _resolve(tmp_path, user: dict, *overrides: str, yaml_keys: dict | None = None, world_size: int = 1):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(user))
    config = None
    if yaml_keys is not None:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({"data_dir": "d", "run_dir": "r", **yaml_keys}))
    base = [] if config else ["data_dir=d", "run_dir=r"]
    cfg = load_pretrain_config(str(config) if config else None, [*base, f"deepspeed_config={ds}", *overrides])
    return resolve(cfg, world_size)


def test_each_precedence_level_wins_where_it_is_the_highest(tmp_path):
    user = {"gradient_clipping": 0.5, "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "eps": 1e-8}}}
    resolved = _resolve(
        tmp_path,
        user,
        "optimizer.lr=7e-4",  # command line beats the JSON's 3e-4
        yaml_keys={"grad_clip": 2.0, "max_steps": 77, "optimizer": {"eps": 1e-5}},
    )
    cfg, sources = resolved.cfg, resolved.settings(1)
    assert cfg.optimizer.lr == 7e-4 and sources["optimizer.lr"]["source"] == "command line"
    assert (
        cfg.optimizer.eps == 1e-8 and sources["optimizer.eps"]["source"] == "deepspeed_config"
    )  # JSON > YAML
    assert cfg.grad_clip == 0.5 and sources["grad_clip"]["source"] == "deepspeed_config"
    assert cfg.max_steps == 77 and sources["max_steps"]["source"] == "config file"  # the JSON is silent
    assert cfg.optimizer.betas == (0.9, 0.999) and sources["optimizer.betas"]["source"] == "default"
    # what the JSON leaves out and the run config does not set takes DeepSpeed's default, as DeepSpeed would run it
    assert cfg.zero_stage == 0 and cfg.precision == "fp32"
    assert "DeepSpeed's default" in sources["zero_stage"]["source"]
    assert (
        "note: optimizer.lr=0.0007 from the command line overrides deepspeed_config's 0.0003"
        in resolved.warnings
    )
    banner = resolved.describe(1)
    assert "lr 0.0007 [command line]" in banner and "grad_clip 0.5 [deepspeed_config]" in banner
    assert "trust_ratio" not in banner and "bias_correction" not in banner  # lamb's, not AdamW's


@pytest.mark.parametrize(
    "user, overrides, world, micro, accum",
    [
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}, [], 1, 8, 8),
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}, [], 2, 8, 4),
        ({"train_batch_size": 64, "gradient_accumulation_steps": 2}, [], 2, 16, 2),
        ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3}, [], 2, 4, 3),
        (
            {"train_batch_size": 64},
            ["micro_batch_size=4"],
            4,
            4,
            4,
        ),  # the run's micro batch, accumulation follows
        (
            {
                "train_batch_size": 64.0,
                "train_micro_batch_size_per_gpu": 8.0,
                "gradient_accumulation_steps": 4,
            },
            [],
            2,
            8,
            4,
        ),
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}, ["micro_batch_size=16"], 2, 16, 2),
    ],
)
def test_batch_geometry_resolves_for_the_world_size(tmp_path, user, overrides, world, micro, accum):
    resolved = _resolve(tmp_path, user, *overrides, world_size=world)
    assert (resolved.cfg.micro_batch_size, resolved.cfg.grad_accum) == (micro, accum)
    global_batch = resolved.settings(world)["global_batch"]["value"]
    assert global_batch == user.get("train_batch_size", micro * accum * world)
    assert not {"train_batch_size", "train_micro_batch_size_per_gpu"} & resolved.deepspeed.keys()


@pytest.mark.parametrize(
    "user, overrides, world, words",
    [
        ({"train_batch_size": 60, "train_micro_batch_size_per_gpu": 8}, [], 2, ["60", "multiple", "2 rank"]),
        (
            {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2},
            [],
            1,
            ["64", "any two"],
        ),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, [], 1, ["both fp16 and bf16"]),
        (
            {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}},
            [],
            1,
            ["nvme", "cpu"],
        ),
        ({"optimizer": {"type": "OneBitAdam", "params": {}}}, [], 1, ["OneBitAdam", "removed"]),
        ({"optimizer": {"type": "Adagrad", "params": {}}}, [], 1, ["Adagrad", "Adam, AdamW or Lamb"]),
        ({"optimizer": {"type": "Adam", "params": {"adam_w_mode": False}}}, [], 1, ["adam_w_mode"]),
        (
            {"optimizer": {"type": "Lamb"}, "zero_optimization": {"stage": 2}},
            [],
            1,
            ["lamb needs zero_stage=0"],
        ),
        ({"scheduler": {"type": "NoSuchLR"}}, [], 1, ["NoSuchLR", "WarmupDecayLR"]),
        (
            {"zero_optimization": {"stage": 2, "allgather_bucket_size": "auto"}},  # no fill for this one
            [],
            1,
            ["allgather_bucket_size", "auto"],
        ),
        (
            {"sparse_attention": {"mode": "fixed"}},
            [],
            1,
            ["'sparse_attention' block", "removed", "BertSelfAttention"],
        ),
        ({"progressive_layer_drop": {"enabled": True}}, [], 1, ["'progressive_layer_drop' block", "removed"]),
    ],
)
def test_what_cannot_run_is_refused_in_one_line_naming_it(tmp_path, user, overrides, world, words):
    with pytest.raises(ConfigError) as refused:
        _resolve(tmp_path, user, *overrides, world_size=world)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("deepspeed_config ")
    for word in words:
        assert word in message, message


def test_the_bert_lamb_json_maps_onto_the_run_and_its_no_effect_keys_are_named(tmp_path):
    """The shape of DeepSpeedExamples' bing_bert LAMB JSON (64k global batch, fp16 dynamic scale)."""
    user = {
        "train_batch_size": 65536,
        "train_micro_batch_size_per_gpu": 64,
        "steps_per_print": 100,
        "prescale_gradients": False,
        "optimizer": {
            "type": "Lamb",
            "params": {
                "lr": 11e-3,
                "weight_decay": 0.01,
                "bias_correction": False,
                "max_coeff": 0.3,
                "min_coeff": 0.01,
            },
        },
        "gradient_clipping": 1.0,
        "wall_clock_breakdown": False,
        "fp16": {"enabled": True, "loss_scale": 0},
    }
    resolved = _resolve(tmp_path, user, world_size=64)
    cfg = resolved.cfg
    assert (cfg.micro_batch_size, cfg.grad_accum, cfg.precision, cfg.zero_stage) == (64, 16, "fp16", 0)
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.weight_decay) == ("lamb", 11e-3, 0.01)
    assert (opt.bias_correction, opt.max_trust_ratio, opt.min_trust_ratio) == (False, 0.3, 0.01)
    assert (
        resolved.deepspeed["fp16"] == {"loss_scale": 0} and resolved.deepspeed["prescale_gradients"] is False
    )
    assert "optimizer" not in resolved.deepspeed  # built by the trainer from the mapped keys
    (warning,) = [line for line in resolved.warnings if "steps_per_print" in line]
    assert warning.startswith("warning:") and "no effect" in warning


def test_a_hugging_face_trainer_json_takes_its_auto_values_from_the_run(tmp_path):
    """The HF Trainer's ZeRO-2 JSON: every "auto" is the run config's value, the ZeRO bucket is
    hidden_size squared as the HF Trainer fills it (the tiny preset: hidden 128)."""
    auto = "auto"
    user = {
        "fp16": {"enabled": auto, "loss_scale": 0, "initial_scale_power": 16},
        "bf16": {"enabled": auto},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": auto, "betas": auto, "eps": auto, "weight_decay": auto},
        },
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": auto, "warmup_max_lr": auto, "warmup_num_steps": auto},
        },
        "zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": auto},
        "gradient_accumulation_steps": auto,
        "gradient_clipping": auto,
        "train_batch_size": auto,
        "train_micro_batch_size_per_gpu": auto,
    }
    resolved = _resolve(
        tmp_path,
        user,
        yaml_keys={
            "model": "tiny",
            "micro_batch_size": 16,
            "grad_clip": 0.7,
            "optimizer": {"lr": 3e-4},
        },
    )
    cfg = resolved.cfg
    # precision "auto": the run config's (its default, bf16), not fp32 as for a JSON silent on it
    assert (cfg.precision, cfg.micro_batch_size, cfg.grad_accum, cfg.grad_clip, cfg.zero_stage) == (
        "bf16",
        16,
        1,
        0.7,
        2,
    )
    assert cfg.optimizer.lr == 3e-4 and cfg.optimizer.betas == (0.9, 0.999)
    assert resolved.deepspeed["zero_optimization"]["reduce_bucket_size"] == 128 * 128
    assert resolved.deepspeed["scheduler"]["params"] == {"warmup_num_steps": 100, "warmup_max_lr": 3e-4}


def test_an_optimizer_param_the_trainer_does_not_take_is_a_warning(tmp_path):
    resolved = _resolve(
        tmp_path, {"optimizer": {"type": "Adam", "params": {"lr": 1e-3, "amsgrad": True, "torch_adam": True}}}
    )
    assert resolved.cfg.optimizer.name == "adamw"
    named = [line for line in resolved.warnings if "no effect" in line]
    assert (
        len(named) == 2
        and any("amsgrad" in line for line in named)
        and any("torch_adam" in line for line in named)
    )


def test_a_json_scheduler_gets_the_runs_length_and_peak(tmp_path):
    sched = {
        "type": "WarmupDecayLR",
        "params": {"total_num_steps": 500, "warmup_num_steps": 50, "warmup_type": "linear"},
    }
    user = {"optimizer": {"type": "AdamW", "params": {"lr": 5e-4}}, "scheduler": sched}
    resolved = _resolve(tmp_path, user, yaml_keys={"max_steps": 1000})
    params = resolved.deepspeed["scheduler"]["params"]
    assert resolved.cfg.max_steps == 500  # the JSON's length beats the YAML's
    assert params == {
        "total_num_steps": 500,
        "warmup_num_steps": 50,
        "warmup_type": "linear",
        "warmup_max_lr": 5e-4,
    }
    # a step count given on the command line is written into DeepSpeed's scheduler instead
    resolved = _resolve(tmp_path, user, "max_steps=200", "schedule.warmup_steps=20", "schedule.decay=cosine")
    params = resolved.deepspeed["scheduler"]["params"]
    assert (
        resolved.cfg.max_steps == 200
        and params["total_num_steps"] == 200
        and params["warmup_num_steps"] == 20
    )
    assert any("schedule.decay" in line and "no effect" in line for line in resolved.warnings)


def test_deepspeeds_own_parser_refuses_a_bad_field_and_names_a_key_it_never_reads():
    """What DeepSpeed itself would reject inside initialize (a traceback) is one line up front; a
    top-level key DeepSpeed never looks up (it would pass over it in silence) is a warning."""
    base = build_deepspeed_config(
        micro_batch_size=8, grad_accum=1, precision="bf16", zero_stage=2, grad_clip=1.0
    )
    assert check_with_deepspeed(base, "ds.json") == []
    (warning,) = check_with_deepspeed({**base, "wall_clock_breakdwn": True}, "ds.json")
    assert "'wall_clock_breakdwn' is not read by DeepSpeed" in warning and "no effect" in warning
    for block, field in [("zero_optimization", "overlap_com"), ("fp16", "loss_scal")]:
        bad = {**base, block: {**base[block], field: 1}}
        with pytest.raises(ConfigError) as refused:
            check_with_deepspeed(bad, "ds.json")
        message = str(refused.value)
        assert (
            "\n" not in message
            and f"refuses '{field}'" in message
            and message.startswith("deepspeed_config 'ds.json'")
        )


# ---------------------------------------------------------------------------------------------
# Real launches


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("dsjson") / "data", train_shards=4, samples_per_shard=48)


def _warmup_decay_lr(iteration: int, peak: float, warmup: int, total: int) -> float:
    """DeepSpeed's WarmupDecayLR, linear warm-up (docs: lr_schedules.WarmupDecayLR), after
    ``iteration`` + 1 scheduler steps."""
    if iteration < warmup:
        return peak * iteration / warmup
    return peak * max(0.0, (total - iteration) / max(1.0, total - warmup))


@pytest.mark.slow
def test_two_ranks_run_the_json_geometry_and_schedule_and_resume_it_exactly(tmp_path, data_dir):
    """train_batch_size 32 on 2 ranks of micro batch 8 (the command line's): accumulation 2; the lr
    logged after step s is DeepSpeed's WarmupDecayLR at iteration s - 1. A rank killed at a random
    step after the step-4 save, and the relaunch: the run resumes from step 4 (the later steps of the
    crashed launch dropped) with the uninterrupted run's schedule, samples, losses and final weights,
    bit for bit. This is the suite's crash-and-exact-resume test; the user's JSON is its hardest case
    (DeepSpeed's own scheduler must resume too)."""
    ds = tmp_path / "ds.json"
    ds.write_text(
        json.dumps(
            {
                "train_batch_size": 32,
                "scheduler": {
                    "type": "WarmupDecayLR",
                    "params": {"total_num_steps": 8, "warmup_num_steps": 3, "warmup_type": "linear"},
                },
                "steps_per_print": 10,
                "wall_clock_breakdwn": False,  # misspelt: DeepSpeed never reads it
            }
        )
    )
    common = [
        "--deepspeed",
        "--deepspeed_config",
        str(ds),
        "save_every=4",
        "log_samples=true",
        "precision=bf16",
    ]
    straight = run_pretrain(data_dir, tmp_path / "straight", *common)
    assert straight.returncode == 0, explain(straight)
    out = straight.stdout
    assert "micro_batch_size 8 [command line]" in out
    assert "grad_accum 2 [derived from deepspeed_config's train_batch_size 32]" in out
    assert "max_steps 8 [deepspeed_config scheduler.params.total_num_steps]" in out
    assert "warning: deepspeed_config key 'steps_per_print' has no effect" in out
    assert "warning: deepspeed_config key 'wall_clock_breakdwn' is not read by DeepSpeed" in out
    rows = metrics(tmp_path / "straight")
    assert [r["step"] for r in rows] == list(range(1, 9))
    # FAST sets optimizer.lr=2e-3 on the command line: the scheduler's peak
    expected = [_warmup_decay_lr(step - 1, 2e-3, 3, 8) for step in range(1, 9)]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-6)
    settings = json.loads((tmp_path / "straight" / "settings.json").read_text())
    assert settings["global_batch"] == {"value": 32, "source": "deepspeed_config"}

    resumed_dir = tmp_path / "resumed"
    kill_at, victim = random.randint(5, 7), random.randint(0, 1)  # after the step-4 save, before the end
    print(f"rank {victim} is killed after step {kill_at}")  # shown by pytest if the test fails
    crashed = run_pretrain(
        data_dir, resumed_dir, *common, env={"PRETRAIN_CRASH_AT": f"step:{kill_at}@{victim}"}
    )
    assert crashed.returncode != 0, explain(crashed)
    assert (resumed_dir / "checkpoints" / "latest").read_text() == "step00000004"
    at_4 = json.loads((resumed_dir / "checkpoints" / "step00000004" / "run_state.json").read_text())
    resumed = run_pretrain(data_dir, resumed_dir, *common)
    assert resumed.returncode == 0, explain(resumed)
    assert "resumed from step00000004" in resumed.stdout
    assert [r["lr"] for r in metrics(resumed_dir) if r["step"] > 4] == pytest.approx(expected[4:], rel=1e-6)
    for rank in range(2):
        expected_samples, got = sample_log(tmp_path / "straight", rank), sample_log(resumed_dir, rank)
        assert [r["step"] for r in got] == [r["step"] for r in expected_samples]  # none repeated
        assert [r["keys"] for r in got] == [r["keys"] for r in expected_samples]
        assert [r["loss"] for r in got] == [r["loss"] for r in expected_samples]
    a = load_file(tmp_path / "straight" / "export" / "model.safetensors")
    b = load_file(resumed_dir / "export" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the model's training time: the crashed launch's up to the step-4 checkpoint, then the resumed one's
    summary = json.loads((resumed_dir / "summary.json").read_text())
    assert at_4["wall_time_s"] > 0 and summary["wall_time_s"] > 0
    assert summary["run_wall_time_s"] == pytest.approx(at_4["wall_time_s"] + summary["wall_time_s"])


@pytest.mark.slow
def test_a_removed_block_ends_the_launch_with_one_line_and_exit_2(tmp_path, data_dir):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 8, "sparse_attention": {"mode": "fixed", "block": 16}}))
    result = run_pretrain(data_dir, tmp_path / "run", f"deepspeed_config={ds}", "max_steps=2", ranks=1)
    assert result.returncode == 2, explain(result)
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert "'sparse_attention' block" in line and "remove the block" in line
