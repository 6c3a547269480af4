"""The written-down FLOP formulas agree with torch's FLOP counter on the tiny model."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForPreTraining

from pretrain.flops import BertShape, hardware_flops, model_flops
from pretrain.model import PretrainingObjective

B, L = 4, 64


def _tiny():
    cfg = BertConfig(
        vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def _counted(fn):
    with FlopCounterMode(display=False) as counter:
        fn().backward()
    return counter.get_total_flops()


def test_executed_flops_of_stock_model_match_counter():
    torch.manual_seed(0)
    cfg = _tiny()
    model = BertForPreTraining(cfg)
    ids = torch.randint(5, 1000, (B, L))
    counted = _counted(
        lambda: model(input_ids=ids, labels=ids, next_sentence_label=torch.zeros(B, dtype=torch.long)).loss
    )
    formula = hardware_flops(BertShape.from_config(cfg, nsp=True), B, L, head_positions=B * L)
    assert formula == pytest.approx(counted, rel=0.05)


def test_executed_flops_of_sparse_head_match_counter():
    torch.manual_seed(0)
    cfg = _tiny()
    model = PretrainingObjective(BertForPreTraining(cfg))
    ids = torch.randint(5, 1000, (B, L))
    positions = torch.arange(0, B * L, 7)
    counted = _counted(
        lambda: model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            token_type_ids=torch.zeros_like(ids),
            mlm_positions=positions,
            mlm_labels=ids.flatten()[positions],
            next_sentence_label=torch.zeros(B, dtype=torch.long),
        )["loss"]
    )
    shape = BertShape.from_config(cfg, nsp=True)
    assert hardware_flops(shape, B, L, head_positions=positions.numel()) == pytest.approx(counted, rel=0.05)
    # without padding, the model FLOPs of MFU equal the executed ones
    assert model_flops(shape, [L] * B, positions.numel()) == hardware_flops(shape, B, L, positions.numel())
