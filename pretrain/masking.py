"""Dynamic masking for masked-language-model pretraining (BERT, Devlin et al. 2019, section 3.1).

Per sequence, round(15%) of its non-special tokens (at least one) are chosen as prediction targets,
as in BERT's ``create_pretraining_data.py``; of those, 80% become ``[MASK]``, 10% a random token
and 10% stay unchanged. Masks are drawn anew each time a sample is seen (RoBERTa's dynamic masking),
from an explicit generator so that a resumed run draws the same masks as an uninterrupted one.
"""

from __future__ import annotations

import torch


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    probability: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask a padded batch.

    Args:
        input_ids: [B, L] token ids.
        maskable: [B, L] bool, True where a token may be chosen (not special, not padding).
    Returns:
        masked_ids [B, L], positions [M] (flat indices into B*L of the chosen tokens, row-major,
        ascending) and labels [M] (their original ids).
    """
    batch, length = input_ids.shape
    counts = maskable.sum(dim=1)
    targets = torch.where(counts > 0, (counts.float() * probability).round().clamp(min=1), 0).long()  # [B]
    # Choose `targets[b]` random maskable positions per row: rank uniform scores, keep the lowest.
    scores = torch.rand(batch, length, generator=generator)
    scores.masked_fill_(~maskable, 2.0)  # never among the lowest
    rank = scores.argsort(dim=1).argsort(dim=1)  # [B, L] rank of each position's score in its row
    chosen = rank < targets.unsqueeze(1)
    positions = chosen.flatten().nonzero().squeeze(1)  # [M]
    flat = input_ids.flatten()
    labels = flat[positions]
    masked = flat.clone()
    action = torch.rand(positions.numel(), generator=generator)
    masked[positions[action < 0.8]] = mask_id
    randomize = positions[(action >= 0.8) & (action < 0.9)]
    masked[randomize] = torch.randint(vocab_size, (randomize.numel(),), generator=generator)
    return masked.view(batch, length), positions, labels
