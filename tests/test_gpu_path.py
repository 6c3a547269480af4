"""The GPU path's pieces: the MLM loss kernels, the peak FLOP/s of each GPU model, the optimizer each
device and offload setting gets, and the offload config. Runs on CPUs; the CUDA cases run where a GPU
is visible (the GPU check, benchmarks/gpu_check.py, runs this file there)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForPreTraining

from data_prep.typed_config import ConfigError
from pretrain.chunked_cross_entropy import mlm_cross_entropy, resolve_loss_kernel
from pretrain.config import load_pretrain_config
from pretrain.ds_config import build_deepspeed_config
from pretrain.flops import gpu_peak_tflops, peak_column
from pretrain.model import PretrainingObjective
from pretrain.optim import Lamb, build_optimizer, param_groups

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["dense", "blockwise"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_loss_kernels_equal_fp32_cross_entropy(device, kernel, dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 2000, generator=g) * 3).to(dtype).to(device)
    labels = torch.randint(0, 2000, (300,), generator=g).to(device)
    reference = logits.detach().clone().requires_grad_()
    expected = F.cross_entropy(reference.float(), labels)
    expected.backward()
    mine = logits.detach().clone().requires_grad_()
    got = mlm_cross_entropy(mine, labels, kernel)
    got.backward()
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert mine.grad.dtype == dtype
    ulp = {torch.float32: 1e-5, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(mine.grad.float(), reference.grad.float(), rtol=ulp, atol=1e-7)


def test_auto_kernel_is_dense_on_cuda_and_blockwise_elsewhere():
    assert resolve_loss_kernel("auto", "cuda") == "dense"
    assert resolve_loss_kernel("auto", "cpu") == "blockwise"
    assert resolve_loss_kernel("blockwise", "cuda") == "blockwise"
    with pytest.raises(ValueError, match="mlm_loss_kernel must be one of"):
        resolve_loss_kernel("fused", "cpu")
    assert load_pretrain_config(None, ["data_dir=.", "run_dir=."]).mlm_loss_kernel == "auto"


@pytest.mark.parametrize("device", DEVICES)
def test_objective_gives_the_same_loss_and_gradients_with_either_kernel(device):
    cfg = BertConfig(
        vocab_size=500, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (4, 24))
    batch = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        token_type_ids=torch.zeros_like(ids),
        mlm_positions=torch.arange(0, 96, 6),
        mlm_labels=ids.flatten()[::6],
        next_sentence_label=torch.tensor([0, 1, 0, 1]),
    )
    batch = {key: value.to(device) for key, value in batch.items()}
    results = []
    for kernel in ("dense", "blockwise"):
        torch.manual_seed(1)
        model = PretrainingObjective(BertForPreTraining(cfg), loss_kernel=kernel).to(device).eval()
        out = model(**batch)
        out["loss"].backward()
        results.append((out["mlm_loss"].item(), model.model.cls.predictions.decoder.weight.grad.clone()))
    (dense_loss, dense_grad), (block_loss, block_grad) = results
    assert block_loss == pytest.approx(dense_loss, rel=1e-6)
    torch.testing.assert_close(block_grad, dense_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_objective_equals_the_stock_model_on_each_device(device):
    # On CUDA, SDPA runs fused attention kernels and the dense loss kernel: the loss must still be
    # the stock BertForPreTraining's on the same weights and batch.
    cfg = BertConfig(
        vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    stock = BertForPreTraining(cfg).to(device).eval()
    ours = PretrainingObjective(stock).eval()
    ids = torch.randint(5, 500, (4, 24), device=device)
    positions = torch.arange(0, 96, 5, device=device)
    labels = torch.full((96,), -100, device=device)
    labels[positions] = ids.flatten()[positions]
    nsp = torch.tensor([0, 1, 1, 0], device=device)
    with torch.no_grad():
        expected = stock(input_ids=ids, labels=labels.view(4, 24), next_sentence_label=nsp).loss
        got = ours(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            token_type_ids=torch.zeros_like(ids),
            mlm_positions=positions,
            mlm_labels=ids.flatten()[positions],
            next_sentence_label=nsp,
        )["loss"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    "name, precision, tf32, model, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", True, "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "bf16", True, "H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", "fp16", True, "H100 NVL", 835.5),
        ("NVIDIA H200", "bf16", True, "H200 SXM", 989.4),
        ("NVIDIA H200 NVL", "bf16", True, "H200 NVL", 835.5),
        ("NVIDIA A100-SXM4-40GB", "bf16", True, "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "fp32", True, "A100", 156.0),  # TF32 tensor cores
        ("NVIDIA A100 80GB PCIe", "fp32", False, "A100", 19.5),  # true fp32
        ("NVIDIA L40S", "bf16", True, "L40S", 362.05),
        ("NVIDIA L40", "bf16", True, "L40", 181.05),
        ("NVIDIA L4", "bf16", True, "L4", 121.0),
        ("NVIDIA A10", "bf16", True, "A10", 125.0),
        ("Tesla V100-SXM2-32GB", "fp16", True, "V100 SXM2", 125.0),
        ("Tesla V100-PCIE-16GB", "fp16", True, "V100 PCIe", 112.0),
        ("Tesla V100-PCIE-16GB", "fp32", True, "V100 PCIe", 14.0),  # no TF32 unit: fp32
    ],
)
def test_peak_of_the_exact_gpu_model(name, precision, tf32, model, tflops):
    assert gpu_peak_tflops(name, precision, tf32) == (model, tflops)


def test_unknown_gpus_and_missing_units_are_measured_not_guessed():
    assert gpu_peak_tflops("NVIDIA A10G", "bf16") is None  # not the A10's datasheet
    assert gpu_peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 unit
    assert gpu_peak_tflops("NVIDIA GeForce RTX 4090", "bf16") is None
    assert (peak_column("fp32", True), peak_column("fp32", False), peak_column("bf16", False)) == (
        "tf32",
        "fp32",
        "bf16",
    )


def _groups():
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.LayerNorm(16))
    return model, param_groups(model, 0.01)


def test_optimizer_per_device_and_offload_on_cpu():
    _, groups = _groups()
    assert isinstance(build_optimizer("lamb", groups, 1e-3, (0.9, 0.999), 1e-6, "cpu"), Lamb)
    adamw = build_optimizer("adamw", groups, 1e-3, (0.9, 0.999), 1e-6, "cpu")
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["fused"]
    with pytest.raises(ValueError, match="cannot be offloaded"):
        build_optimizer("lamb", groups, 1e-3, (0.9, 0.999), 1e-6, "cpu", offload=True)


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["offload=optimizer", "zero_stage=0"], "needs zero_stage 1, 2 or 3"),
        (["offload=optimizer+params", "zero_stage=2"], "needs zero_stage=3"),
        (["offload=optimizer", "zero_stage=0", "optimizer.name=lamb"], "needs optimizer.name=adamw"),
        (["optimizer.name=lamb", "zero_stage=1"], "needs zero_stage=0"),
    ],
)
def test_config_refuses_optimizer_stage_offload_combinations_that_cannot_work(overrides, error):
    with pytest.raises(ConfigError, match=error):
        load_pretrain_config(None, ["data_dir=.", "run_dir=.", *overrides])


def test_offload_becomes_deepspeed_offload_and_a_user_json_cannot_contradict_it():
    common = dict(micro_batch_size=8, grad_accum=1, precision="bf16", grad_clip=1.0)
    zero = build_deepspeed_config(zero_stage=2, offload="optimizer", **common)["zero_optimization"]
    assert zero == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    zero = build_deepspeed_config(zero_stage=3, offload="optimizer+params", **common)["zero_optimization"]
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True} and "offload_optimizer" in zero
    assert "offload_optimizer" not in build_deepspeed_config(zero_stage=2, **common)["zero_optimization"]
    user = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    with pytest.raises(ValueError, match="offload_optimizer.device='cpu'.*offload"):
        build_deepspeed_config(zero_stage=2, extra=user, **common)


@cuda_only
def test_fused_lamb_on_cuda_takes_the_torch_loops_steps():
    from deepspeed.ops.lamb import FusedLamb

    torch.manual_seed(0)
    model, groups = _groups()
    twin = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.LayerNorm(16))
    twin.load_state_dict(model.state_dict())
    model, twin = model.cuda(), twin.cuda()
    fused = build_optimizer("lamb", param_groups(model, 0.01), 1e-2, (0.9, 0.999), 1e-6, "cuda")
    loop = Lamb(param_groups(twin, 0.01), lr=1e-2, betas=(0.9, 0.999), eps=1e-6)
    assert isinstance(fused, FusedLamb)
    for step in range(3):
        x = torch.randn(32, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(step))
        for net, optimizer in ((model, fused), (twin, loop)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    for ours, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@cuda_only
def test_offloaded_optimizer_trains_on_cuda(tmp_path):
    import deepspeed
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from pretrain.distributed import init_distributed

    init_distributed(120)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
    optimizer = build_optimizer(
        "adamw", param_groups(model, 0.01), 1e-2, (0.9, 0.999), 1e-6, "cuda", offload=True
    )
    assert isinstance(optimizer, DeepSpeedCPUAdam)
    config = build_deepspeed_config(
        micro_batch_size=16, grad_accum=1, precision="bf16", zero_stage=2, grad_clip=1.0, offload="optimizer"
    )
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    x = torch.randn(16, 64, device=engine.device, dtype=torch.bfloat16)
    losses = []
    for _ in range(20):
        loss = engine(x).float().square().mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_the_gpu_wheel_set_covers_every_import_of_the_check_beyond_torch():
    from benchmarks.gpu_wheels import external_imports, required_distributions

    carry, missing = required_distributions()
    assert missing == []  # every import maps to an installed distribution
    # the packages the NVIDIA image lacks, and what they need in turn
    assert {"deepspeed", "webdataset", "hjson", "pydantic", "pydantic-core", "braceexpand"} <= set(carry)
    assert "torch" not in carry and "typing-extensions" not in carry  # torch (and its needs) is there
    assert {"deepspeed", "webdataset", "hjson", "pydantic", "transformers"} <= external_imports()
