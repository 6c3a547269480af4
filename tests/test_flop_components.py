"""Each term of the FLOP formula (pretrain/flops.py) against what torch's FLOP counter sees in the
module that computes it, forward and backward: encoder projections, attention, MLM transform and
decoder, NSP head. A wrong term cannot hide behind the others, as it could in a total within 5%."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForPreTraining

from pretrain.flops import TRAIN_MULTIPLIER, BertShape, forward_flops_by_component
from pretrain.model import PretrainingObjective

B, L, V = 3, 48, 700


def _config():
    cfg = BertConfig(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=160
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def _sum(counts: dict, prefix: str, ops=None) -> int:
    """FLOPs the counter attributed to modules named ``prefix`` (forward and backward), of ``ops``."""
    return sum(
        flops
        for module, by_op in counts.items()
        if module == prefix
        for op, flops in by_op.items()
        if ops is None or str(op) in ops
    )


@pytest.fixture(scope="module")
def counted():
    torch.manual_seed(0)
    cfg = _config()
    model = PretrainingObjective(BertForPreTraining(cfg))
    ids = torch.randint(5, V, (B, L))
    positions = torch.arange(0, B * L, 5)
    with FlopCounterMode(display=False) as counter:
        model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            token_type_ids=torch.zeros_like(ids),
            mlm_positions=positions,
            mlm_labels=ids.flatten()[positions],
            next_sentence_label=torch.zeros(B, dtype=torch.long),
        )["loss"].backward()
    expected = {
        name: TRAIN_MULTIPLIER * value
        for name, value in forward_flops_by_component(
            BertShape.from_config(cfg, nsp=True), [L] * B, positions.numel()
        ).items()
    }
    return counter.get_flop_counts(), expected, cfg


def test_encoder_projections(counted):
    counts, expected, cfg = counted
    # Per layer: the counter splits backward wrongly among Q, K and V (they share their input), so
    # the layer's matmuls are taken together; attention's are batched (bmm / SDPA), not counted here.
    got = sum(
        _sum(counts, f"PretrainingObjective.model.bert.encoder.layer.{layer}", {"aten.mm", "aten.addmm"})
        for layer in range(cfg.num_hidden_layers)
    )
    assert got == expected["encoder_projections"]


def test_attention(counted):
    counts, expected, _ = counted
    # Q K^T and attention x V: batched matmuls (or a fused SDPA op) inside the encoder, nowhere else.
    ops = {
        "aten.bmm",
        "aten._scaled_dot_product_flash_attention_for_cpu",
        "aten._scaled_dot_product_efficient_attention",
        "aten._scaled_dot_product_flash_attention",
        "aten._scaled_dot_product_cudnn_attention",
    }
    assert _sum(counts, "PretrainingObjective.model.bert.encoder", ops) == expected["attention"]


def test_mlm_transform_and_decoder(counted):
    counts, expected, _ = counted
    head = "PretrainingObjective.model.cls.predictions"
    assert _sum(counts, f"{head}.transform.dense") == expected["mlm_transform"]
    assert _sum(counts, f"{head}.decoder") == expected["mlm_decoder"]


def test_nsp_head():
    # Run alone: the counter's module attribution of backward is not reliable for the last module of
    # a graph with two heads, so the pooler and the classifier are measured on their own.
    torch.manual_seed(0)
    cfg = _config()
    model = BertForPreTraining(cfg)
    hidden = torch.randn(B, L, cfg.hidden_size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model.cls.seq_relationship(model.bert.pooler(hidden)).sum().backward()
    shape = BertShape.from_config(cfg, nsp=True)
    expected = TRAIN_MULTIPLIER * forward_flops_by_component(shape, [L] * B, 0)["nsp_head"]
    assert counter.get_total_flops() == expected
