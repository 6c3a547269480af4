"""BERT's 15% / 80-10-10 dynamic masking, checked on counts over a large batch."""

import torch

from pretrain.masking import mask_tokens

MASK, VOCAB = 4, 1000


def _batch(rows=256, length=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=g)
    lengths = torch.randint(10, length + 1, (rows,), generator=g)
    maskable = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    maskable[:, 0] = False  # [CLS]
    return ids, maskable


def test_selects_round_15_percent_of_maskable_tokens_per_row():
    ids, maskable = _batch()
    masked, positions, labels = mask_tokens(
        ids,
        maskable,
        probability=0.15,
        mask_id=MASK,
        vocab_size=VOCAB,
        generator=torch.Generator().manual_seed(1),
    )
    rows = positions // ids.shape[1]
    per_row = torch.bincount(rows, minlength=ids.shape[0])
    expected = (maskable.sum(1).float() * 0.15).round().clamp(min=1).long()
    assert torch.equal(per_row, expected)
    assert bool(maskable.flatten()[positions].all()), "a special or padding position was chosen"
    assert torch.equal(labels, ids.flatten()[positions])
    unchosen = torch.ones(ids.numel(), dtype=torch.bool)
    unchosen[positions] = False
    assert torch.equal(masked.flatten()[unchosen], ids.flatten()[unchosen])


def test_80_10_10_split():
    ids, maskable = _batch(rows=1024)
    masked, positions, labels = mask_tokens(
        ids,
        maskable,
        probability=0.15,
        mask_id=MASK,
        vocab_size=VOCAB,
        generator=torch.Generator().manual_seed(2),
    )
    new = masked.flatten()[positions]
    n = positions.numel()
    as_mask = (new == MASK).sum().item() / n
    kept = (new == labels).sum().item() / n
    randomized = 1 - as_mask - kept
    assert n > 10000
    assert abs(as_mask - 0.8) < 0.015
    # a random replacement equals the original with probability 1/VOCAB, so "kept" is ~10.01%
    assert abs(kept - 0.1) < 0.01
    assert abs(randomized - 0.1) < 0.01


def test_same_generator_seed_same_masks():
    ids, maskable = _batch(rows=8)
    first = mask_tokens(
        ids,
        maskable,
        probability=0.15,
        mask_id=MASK,
        vocab_size=VOCAB,
        generator=torch.Generator().manual_seed(3),
    )
    again = mask_tokens(
        ids,
        maskable,
        probability=0.15,
        mask_id=MASK,
        vocab_size=VOCAB,
        generator=torch.Generator().manual_seed(3),
    )
    for a, b in zip(first, again):
        assert torch.equal(a, b)
