"""The sparse-head objective computes the stock BertForPreTraining loss and gradients."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

from pretrain.model import PretrainingObjective

VOCAB = 300


def _config():
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def _batch(seed=0, rows=6, length=40):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=g)
    lengths = torch.randint(12, length + 1, (rows,), generator=g)
    attention = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    token_types = ((torch.arange(length).unsqueeze(0) > 6) & attention.bool()).long()
    chosen = (torch.rand(rows, length, generator=g) < 0.15) & attention.bool()
    chosen[:, 1] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    positions = chosen.flatten().nonzero().squeeze(1)
    nsp = torch.randint(0, 2, (rows,), generator=g)
    return ids, attention, token_types, labels, positions, nsp


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "dtype, rtol, sparse",
    [(torch.float32, 1e-5, True), (torch.bfloat16, 2e-2, True), (torch.float32, 1e-5, False)],
)
def test_mlm_nsp_loss_and_grads_match_stock_model(dtype, rtol, sparse):
    torch.manual_seed(0)
    stock = BertForPreTraining(_config()).to(dtype)
    ours = PretrainingObjective(BertForPreTraining(_config()).to(dtype), sparse_head=sparse)
    ours.model.load_state_dict(stock.state_dict())
    ids, attention, types, labels, positions, nsp = _batch()

    out = stock(
        input_ids=ids, attention_mask=attention, token_type_ids=types, labels=labels, next_sentence_label=nsp
    )
    out.loss.backward()
    mine = ours(
        input_ids=ids,
        attention_mask=attention,
        token_type_ids=types,
        mlm_positions=positions,
        mlm_labels=ids.flatten()[positions],
        next_sentence_label=nsp,
    )
    mine["loss"].backward()

    assert mine["loss"].item() == pytest.approx(out.loss.float().item(), rel=rtol)
    stock_grads, our_grads = _grads(stock), {k.removeprefix("model."): v for k, v in _grads(ours).items()}
    assert stock_grads.keys() == our_grads.keys()
    for name, grad in stock_grads.items():
        if name.endswith("attention.self.key.bias"):
            # Its true gradient is zero (softmax is invariant to a shift shared by all keys): both
            # sides hold rounding noise, and a relative error of noise means nothing.
            assert grad.float().norm() < 1e-3 and our_grads[name].float().norm() < 1e-3
            continue
        error = ((grad.float() - our_grads[name].float()).norm() / grad.float().norm()).item()
        assert error < (1e-4 if dtype == torch.float32 else 3e-2), f"{name}: relative error {error:.2e}"


def test_mlm_only_objective_matches_bert_for_masked_lm():
    torch.manual_seed(0)
    stock = BertForMaskedLM(_config())
    ours = PretrainingObjective(BertForMaskedLM(_config()))
    ours.model.load_state_dict(stock.state_dict())
    ids, attention, types, labels, positions, _ = _batch(seed=1)
    types = torch.zeros_like(types)
    expected = stock(input_ids=ids, attention_mask=attention, token_type_ids=types, labels=labels).loss
    mine = ours(
        input_ids=ids,
        attention_mask=attention,
        token_type_ids=types,
        mlm_positions=positions,
        mlm_labels=ids.flatten()[positions],
    )
    assert "nsp_loss" not in mine
    assert mine["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_activation_checkpointing_recomputes_the_same_dropout_masks_and_gradients():
    """With dropout on (and the CPU dropout kernel), recomputing the activations in the backward
    pass must replay the forward's random masks: the same loss and the same gradients."""
    from pretrain.cpu_dropout import use_cpu_dropout

    ids, attention, token_types, labels, positions, nsp = _batch()
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = _config()
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.1
        model = BertForPreTraining(cfg)
        use_cpu_dropout(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        objective = PretrainingObjective(model).train()
        calls = []
        model.bert.encoder.layer[0].intermediate.register_forward_hook(
            lambda *_, calls=calls: calls.append(1)
        )
        torch.manual_seed(1)  # the dropout masks' draws
        out = objective(ids, attention, token_types, positions, labels.flatten()[positions], nsp)
        out["loss"].backward()
        results.append((out["loss"].detach(), _grads(model)))
        assert len(calls) == (2 if checkpointing else 1), "the layer is recomputed in the backward pass"
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    assert torch.equal(loss, loss_ckpt)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)
