"""The CPU dropout: the drop rate and scaling of torch's, attention math equal to SDPA's."""

import torch
from transformers import BertConfig, BertForPreTraining

from pretrain.cpu_dropout import (
    ATTENTION_NAME,
    Dropout,
    fast_dropout,
    keep_mask,
    sdpa_cpu_dropout,
    use_cpu_dropout,
)


def test_keep_rate_and_scaling_match_torch_dropout():
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([1000, 1000]), 0.1, torch.device("cpu"))
    assert abs(mask.float().mean().item() - 0.9) < 0.002
    rows = mask.float().mean(dim=1)  # no lane or position is biased
    assert rows.std().item() < 0.02 and rows.min().item() > 0.85
    x = torch.ones(200_000)
    y = fast_dropout(x, 0.1, training=True)
    assert torch.unique(y).tolist() == [0.0, torch.tensor(1 / 0.9).item()]
    assert abs(y.mean().item() - 1.0) < 0.01  # the expectation is kept, as torch's dropout does
    assert torch.equal(fast_dropout(x, 0.1, training=False), x)


def test_attention_math_equals_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 24, 16) for _ in range(3))
    mask = torch.ones(2, 1, 24, 24, dtype=torch.bool)
    mask[1, :, :, 20:] = False  # padding keys of the second sequence
    module = torch.nn.Module()
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.25, is_causal=False)
    # A drop rate that rounds to zero in 16 bits takes the explicit path but drops nothing.
    got, _ = sdpa_cpu_dropout(module, q, k, v, mask, dropout=1e-9, scaling=0.25, is_causal=False)
    assert torch.allclose(got, expected, atol=1e-5)


def test_model_swap_keeps_eval_outputs_and_drops_in_training():
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    stock = BertForPreTraining(cfg).eval()
    swapped = BertForPreTraining(cfg)
    swapped.load_state_dict(stock.state_dict())
    use_cpu_dropout(swapped)
    assert swapped.config._attn_implementation == ATTENTION_NAME
    assert not any(isinstance(m, torch.nn.Dropout) for m in swapped.modules())
    assert sum(isinstance(m, Dropout) for m in swapped.modules()) == sum(
        isinstance(m, torch.nn.Dropout) for m in stock.modules()
    )
    ids = torch.randint(5, 100, (3, 16))
    with torch.no_grad():
        assert torch.allclose(
            swapped.eval()(input_ids=ids).prediction_logits, stock(input_ids=ids).prediction_logits, atol=1e-5
        )
        train_a = swapped.train()(input_ids=ids).prediction_logits
        train_b = swapped(input_ids=ids).prediction_logits
    assert not torch.allclose(train_a, train_b)  # dropout is active when training
