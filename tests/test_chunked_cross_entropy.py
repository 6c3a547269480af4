"""The blockwise MLM cross-entropy equals torch's fp32 cross-entropy, value and gradient."""

import pytest
import torch
import torch.nn.functional as F

import pretrain.chunked_cross_entropy as chunked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_loss_and_gradient_match_fp32_cross_entropy(dtype, monkeypatch):
    monkeypatch.setattr(
        chunked, "BLOCK_ELEMENTS", 3 * 500
    )  # 3 rows per block: 37 rows make 13 blocks, the last short
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(37, 500, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 500, (37,), generator=g)
    scale = 1024.0  # an fp16 loss scale: the upstream gradient must be applied in fp32, before the cast

    reference = logits.detach().clone().requires_grad_()
    expected = F.cross_entropy(reference.float(), labels)
    (expected * scale).backward()
    mine = logits.detach().clone().requires_grad_()
    got = chunked.chunked_cross_entropy(mine, labels)
    (got * scale).backward()

    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert mine.grad.dtype == dtype
    ulp = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[
        dtype
    ]  # both round an fp32 gradient
    assert torch.allclose(mine.grad.float(), reference.grad.float(), rtol=ulp, atol=1e-7)


def test_without_grad_it_is_the_loss_only():
    logits = torch.randn(5, 40)
    labels = torch.tensor([0, 3, 39, 7, 7])
    with torch.no_grad():
        assert chunked.chunked_cross_entropy(logits, labels).item() == pytest.approx(
            F.cross_entropy(logits, labels).item(), rel=1e-6
        )
