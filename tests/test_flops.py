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


def test_model_flops_count_real_lengths_as_unpadded_sequences_execute_them():
    """MFU's model FLOPs: each sequence at its real length and the MLM head on its masked positions,
    checked against the counter on each sequence run alone, unpadded (no padding is executed)."""
    torch.manual_seed(0)
    cfg = _tiny()
    model = PretrainingObjective(BertForPreTraining(cfg))
    lengths, masked = [64, 40, 24, 8], [9, 6, 4, 1]
    counted = 0.0
    for n, m in zip(lengths, masked):
        ids = torch.randint(5, 1000, (1, n))
        positions = torch.arange(m) * (n // m)
        counted += _counted(
            lambda ids=ids, positions=positions: model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                token_type_ids=torch.zeros_like(ids),
                mlm_positions=positions,
                mlm_labels=ids.flatten()[positions],
                next_sentence_label=torch.zeros(1, dtype=torch.long),
            )["loss"]
        )
    shape = BertShape.from_config(cfg, nsp=True)
    assert model_flops(shape, lengths, sum(masked)) == pytest.approx(counted, rel=0.05)
    # the padded count is far off: the check above tells real lengths from padded ones
    padded = hardware_flops(shape, len(lengths), max(lengths), sum(masked))
    assert padded > 1.5 * counted
