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


def _words(ids, maskable, word_starts):
    """[B, L] word number of each maskable token (-1 elsewhere), as whole-word masking defines words."""
    previous = torch.nn.functional.pad(maskable[:, :-1], (1, 0), value=False)
    starts = maskable & (word_starts[ids] | ~previous)
    return torch.where(maskable, torch.cumsum(starts, dim=1) - 1, -1)


def test_whole_word_masking_masks_whole_words_with_the_same_count():
    ids, maskable = _batch(rows=1024)
    word_starts = torch.rand(VOCAB, generator=torch.Generator().manual_seed(3)) < 0.6  # words of ~1.7 pieces
    masked, positions, labels = mask_tokens(
        ids,
        maskable,
        probability=0.15,
        mask_id=MASK,
        vocab_size=VOCAB,
        generator=torch.Generator().manual_seed(4),
        word_starts=word_starts,
    )
    length = ids.shape[1]
    per_row = torch.bincount(positions // length, minlength=ids.shape[0])
    expected = (maskable.sum(1).float() * 0.15).round().clamp(min=1).long()
    assert torch.equal(per_row, expected)  # exactly the token-level count
    assert bool(maskable.flatten()[positions].all()) and torch.equal(labels, ids.flatten()[positions])
    chosen = torch.zeros(ids.numel(), dtype=torch.bool)
    chosen[positions] = True
    chosen = chosen.view_as(ids)
    words = _words(ids, maskable, word_starts)
    partial_rows, multi_piece_words = 0, 0
    for row in range(ids.shape[0]):
        touched = words[row][chosen[row]].unique()
        partial = [w for w in touched.tolist() if not bool(chosen[row][words[row] == w].all())]
        assert len(partial) <= 1, f"row {row}: more than one word masked in part"
        partial_rows += bool(partial)
        multi_piece_words += sum(int((words[row] == w).sum()) > 1 for w in touched.tolist())
    assert partial_rows / ids.shape[0] < 0.05, f"{partial_rows} rows needed a partial word"
    assert multi_piece_words > 1000  # multi-piece words were really masked together
    # the 80/10/10 decision stays per token
    new = masked.flatten()[positions]
    assert abs((new == MASK).float().mean().item() - 0.8) < 0.02
    assert abs((new == labels).float().mean().item() - 0.1) < 0.015


def test_one_piece_words_mask_like_tokens():
    ids, maskable = _batch(rows=64)
    common = dict(probability=0.15, mask_id=MASK, vocab_size=VOCAB)
    by_word = mask_tokens(
        ids,
        maskable,
        **common,
        generator=torch.Generator().manual_seed(5),
        word_starts=torch.ones(VOCAB, dtype=torch.bool),
    )
    by_token = mask_tokens(ids, maskable, **common, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(by_word, by_token))


def test_word_start_table_reads_the_tokenizers_convention(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from pretrain.masking import word_start_table

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for pieces, expected, style in (
        (["\u2581the", "\u2581walk", "ing", ","], [True, True, False, False], "SentencePiece"),
        (["the", "walk", "##ing", ","], [True, True, False, True], "WordPiece"),
        # Chinese and Japanese mark no word start: each CJK piece is a word, not a continuation
        (
            ["\u2581在", "中", "国人", "こ", "\u2581A", "pple"],
            [True, True, True, True, True, False],
            "SentencePiece",
        ),
    ):
        vocab = {p: i for i, p in enumerate(specials + pieces)}
        fast = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]")),
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        fast.save_pretrained(tmp_path / f"{style}-{len(vocab)}")
        table, found = word_start_table(tmp_path / f"{style}-{len(vocab)}", len(vocab))
        assert found.startswith(style) and table.tolist() == [True] * 5 + expected
