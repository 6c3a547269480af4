"""The optimizer set-up of the trainer: what is decayed, LAMB's update, the schedules, and what a
DeepSpeed JSON's settings and scheduler do to the engine (pretrain/deepspeed_json.py).

Engines are built in this process by the trainer's own set-up (``prepare_run``, one rank), so what
is checked is the optimizer a run gets, whatever builds it. Parameters are classified here from
the modules (``nn.LayerNorm``) and names (``.bias``), independently of the code under test.
"""

import json
import math

import pytest
import torch
from launching import FAST, LAUNCHER_VARS
from synthetic_data import make_data_dir
from torch import nn

from pretrain.config import load_pretrain_config
from pretrain.optim import warmup_decay_schedule
from pretrain.train import prepare_run

LR, WD = 0.1, 0.5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("optim") / "data", train_shards=1, samples_per_shard=8)


@pytest.fixture(scope="module")
def build(data_dir, tmp_path_factory):
    """``build(*overrides)`` -> a fresh engine from the trainer's set-up, in a one-rank group."""
    runs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        for var in LAUNCHER_VARS:  # the in-process rank-0 group sets these; restore them afterwards
            patch.setenv(var, "")
            patch.delenv(var)

        def make(*overrides):
            run_dir = tmp_path_factory.mktemp("run")
            args = [f"data_dir={data_dir}", f"run_dir={run_dir}", *FAST, "precision=fp32", *overrides]
            run = prepare_run(load_pretrain_config(None, args))
            runs.append(run)
            return run.engine

        yield make
        for run in runs:
            run.log.close()
        # The one-rank group stays: DeepSpeed caches its groups, and a later in-process run in this
        # session (fine-tuning tests) would find them destroyed.


def _no_decay_names(module):
    """Biases and LayerNorm parameters, found from the modules themselves."""
    names = {name for name, _ in module.named_parameters() if name.endswith(".bias")}
    for prefix, sub in module.named_modules():
        if isinstance(sub, nn.LayerNorm):
            names |= {f"{prefix}.{name}" for name, _ in sub.named_parameters()}
    return names


def _step_with_gradients(engine, grads):
    """One optimizer step of the engine with gradients ``grads(name, param)``; returns the weights
    before and after, and the gradients."""
    before = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
    given = {}
    for name, p in engine.module.named_parameters():
        p.grad = given[name] = grads(name, p)
    engine.step()
    after = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
    return before, after, given


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_biases_and_layer_norm_are_never_decayed(build, optimizer):
    """With zero gradients the only change a step makes is weight decay: every weight matrix
    shrinks by the same factor, and no bias or LayerNorm parameter moves at all."""
    engine = build(
        "zero_stage=0",
        f"optimizer.name={optimizer}",
        f"optimizer.lr={LR}",
        f"optimizer.weight_decay={WD}",
        "schedule.warmup_steps=0",
        "schedule.decay=constant",
    )
    before, after, _ = _step_with_gradients(engine, lambda name, p: torch.zeros_like(p))
    exempt = _no_decay_names(engine.module)
    assert any("LayerNorm" in name for name in exempt) and len(exempt) > 20
    # AdamW: decoupled decay w -= lr*wd*w. LAMB: update wd*w scaled by its trust ratio
    # ||w|| / ||wd*w|| = 1/wd, so w -= lr*w.
    factor = 1 - LR * WD if optimizer == "adamw" else 1 - LR
    for name, weight in before.items():
        if name in exempt:
            assert torch.equal(after[name], weight), f"{name} was decayed"
        else:
            assert weight.ndim == 2, name  # what is left are the matrices (embeddings included)
            assert torch.allclose(after[name], weight * factor, rtol=1e-6, atol=1e-9), name


def test_lamb_scales_each_tensors_step_to_its_own_norm(build):
    """LAMB (You et al. 2019, algorithm 2): each tensor moves by lr x ||w|| (trust ratio
    ||w|| / ||update||), in the direction of Adam's update, which at the first step is
    g / (|g| + eps): every tensor moves by the same fraction of its own norm."""
    engine = build(
        "zero_stage=0",
        "optimizer.name=lamb",
        "optimizer.lr=0.01",
        "optimizer.weight_decay=0",
        "optimizer.eps=1e-6",
        "grad_clip=0",
        "schedule.warmup_steps=0",
        "schedule.decay=constant",
    )
    generator = torch.Generator().manual_seed(0)
    before, after, grads = _step_with_gradients(
        engine, lambda name, p: torch.randn(p.shape, generator=generator) * 1e-2
    )
    moved = []
    for name, weight in before.items():
        if weight.norm() == 0:  # a zero-initialised bias: trust ratio 1, moves by lr x ||update||
            continue
        direction = grads[name] / (grads[name].abs() + 1e-6)
        expected = -0.01 * weight.norm() * direction / direction.norm()
        assert torch.allclose(after[name] - weight, expected, rtol=1e-3, atol=1e-7), name
        moved.append(float((after[name] - weight).norm() / weight.norm()))
    assert len(moved) > 20 and max(moved) == pytest.approx(min(moved), rel=1e-3)  # all by 1% of their norm


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("weight, bound", [(2.0, 0.3), (0.001, 0.01)])  # trust ratio above max / below min
def test_lamb_takes_deepspeeds_bias_correction_and_trust_ratio_bounds(bias_correction, weight, bound):
    """DeepSpeed's BERT LAMB recipe: bias_correction false, trust ratio clamped to [min_coeff, max_coeff]."""
    from pretrain.optim import Lamb

    w = torch.full((4, 4), weight)
    g = torch.linspace(-1, 1, 16).reshape(4, 4) * 1e-3
    param = nn.Parameter(w.clone())
    param.grad = g.clone()
    Lamb(
        [param],
        lr=0.1,
        eps=1e-6,
        weight_decay=0.0,
        bias_correction=bias_correction,
        max_trust_ratio=0.3,
        min_trust_ratio=0.01,
    ).step()
    m, v = 0.1 * g, 0.001 * g * g  # Adam's moments after one step, betas (0.9, 0.999)
    if bias_correction:
        m, v = m / 0.1, v / 0.001
    update = m / (v.sqrt() + 1e-6)
    assert not bound * 0.5 < float(w.norm() / update.norm()) < bound * 2  # the clamp is what decides
    assert torch.allclose(param.detach(), w - 0.1 * bound * update, rtol=1e-5, atol=1e-9)


def _lrs(build, *overrides, steps):
    engine = build("zero_stage=0", f"optimizer.lr={LR}", f"max_steps={steps}", *overrides)
    lrs = [engine.get_lr()[0]]
    for _ in range(steps):
        engine.lr_scheduler.step()
        lrs.append(engine.get_lr()[0])
    return lrs


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_the_runs_learning_rate_follows_its_schedule(build):
    """The engine a run gets steps its learning rate as configured: linear warm-up over 4 steps
    to lr, then cosine to end_lr_ratio x lr at max_steps (=20)."""
    lrs = _lrs(
        build,
        "schedule.warmup_steps=4",
        "schedule.decay=cosine",
        "schedule.end_lr_ratio=0.1",
        steps=20,
    )
    warmup = [LR * (s + 1) / 4 for s in range(4)]
    decay = [LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 16))) for s in range(4, 21)]
    assert lrs == pytest.approx(warmup + decay, rel=1e-9)


@pytest.mark.parametrize("decay", ["linear", "polynomial", "cosine", "constant"])
def test_each_schedule_has_its_shape(decay):
    warmup, total, end = 10, 110, 0.2
    factor = warmup_decay_schedule(warmup, total, decay, power=2.0, end_ratio=end)
    values = [factor(step) for step in range(total + 1)]
    # warm-up: a straight line from lr/warmup to lr
    assert values[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    after = values[warmup:]  # progress p = (step - warmup) / (total - warmup) from 0 to 1
    p = [i / (total - warmup) for i in range(len(after))]
    if decay == "constant":
        assert after == pytest.approx([1.0] * len(after))
        return
    assert after[0] == pytest.approx(1.0) and after[-1] == pytest.approx(end)
    assert all(a >= b for a, b in zip(after, after[1:]))
    shape = {
        "linear": [1 - x for x in p],
        "polynomial": [(1 - x) ** 2 for x in p],  # power 2: below the straight line
        "cosine": [0.5 * (1 + math.cos(math.pi * x)) for x in p],  # half-way at the middle
    }[decay]
    assert after == pytest.approx([end + (1 - end) * s for s in shape])
    middle = after[len(after) // 2]
    assert middle == pytest.approx({"linear": 0.6, "polynomial": 0.4, "cosine": 0.6}[decay])


def test_a_deepspeed_jsons_settings_reach_the_engine_and_the_command_line_beats_them(build, tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(
        json.dumps(
            {
                "train_batch_size": 32,  # FAST's micro batch 8 on the command line: accumulation 4
                "gradient_clipping": 0.5,
                "zero_optimization": {"stage": 2, "reduce_bucket_size": 1234567},
            }
        )
    )
    engine = build(f"deepspeed_config={user}")
    assert engine.zero_optimization_stage() == 2 and engine.zero_reduce_bucket_size() == 1234567
    assert engine.gradient_clipping() == 0.5
    assert (engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()) == (8, 4)
    engine = build(f"deepspeed_config={user}", "zero_stage=1", "grad_clip=2.0", "grad_accum=2")
    assert engine.zero_optimization_stage() == 1 and engine.gradient_clipping() == 2.0
    assert engine.gradient_accumulation_steps() == 2  # train_batch_size overridden, with a note


PEAK, WARMUP, TOTAL = 2e-3, 3, 10  # FAST: optimizer.lr=2e-3 and schedule.warmup_steps=3 on the command line


def _one_cycle(i, low=1e-4, high=1e-3, half=4):
    """Up over ``half`` steps, down over ``half``, then held at ``low`` (decay_lr_rate 0)."""
    if i + 1 >= 2 * half:
        return low
    return low + (high - low) * (1 - abs((i + 1) - half) / half)


@pytest.mark.parametrize(
    "kind, params, formula",
    [
        (
            "WarmupLR",
            {"warmup_min_lr": 1e-4, "warmup_type": "linear"},
            lambda i: 1e-4 + (PEAK - 1e-4) * min(i / WARMUP, 1),
        ),
        (
            "WarmupLR",
            {},
            lambda i: PEAK * (math.log(i + 1) / math.log(WARMUP) if i < WARMUP else 1),
        ),  # log warm-up
        (
            "WarmupDecayLR",
            {"warmup_type": "linear"},
            lambda i: PEAK * (i / WARMUP if i < WARMUP else (TOTAL - i) / (TOTAL - WARMUP)),
        ),
        (
            "WarmupCosineLR",
            {"warmup_type": "linear", "cos_min_ratio": 0.1},
            lambda i: (
                PEAK
                * (
                    i / WARMUP
                    if i < WARMUP
                    else 0.1 + 0.9 * (1 + math.cos(math.pi * min(1, (i - WARMUP + 1) / (TOTAL - WARMUP)))) / 2
                )
            ),
        ),
        (
            "OneCycle",
            {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 4, "cycle_momentum": False},
            _one_cycle,
        ),
        (
            "LRRangeTest",
            {"lr_range_test_min_lr": 1e-4, "lr_range_test_step_size": 2, "lr_range_test_step_rate": 1.0},
            lambda i: 1e-4 * (1 + (i + 1) / 2),
        ),
    ],
)
def test_each_deepspeed_scheduler_type_sets_the_lr_by_its_formula(build, tmp_path, kind, params, formula):
    """DeepSpeed builds the JSON's scheduler (its own class); after the (i+1)-th step the lr is the
    documented formula at iteration i, with the run's max_steps, warm-up and peak written in."""
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"scheduler": {"type": kind, "params": params}}))
    engine = build(f"deepspeed_config={user}", f"max_steps={TOTAL}")
    assert type(engine.lr_scheduler).__name__ == kind
    applied = []
    for _ in range(TOTAL):
        engine.lr_scheduler.step()
        applied.append(engine.get_lr()[0])
    assert applied == pytest.approx([formula(i) for i in range(TOTAL)], rel=1e-6)
