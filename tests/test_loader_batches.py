"""What the training loader hands the model, checked against the shards' own tokens.

The original tokens are read from the tar files directly (tarfile + ``np.load``), not through the
code under test; each loader batch is then compared with them: [CLS], [SEP] and padding never
masked, labels equal to the original tokens, token type ids (segment A then B), padding to the
longest sequence rounded up to a multiple of 8, BERT's per-sequence masking count, and the
80/10/10 split over thousands of masked positions.
"""

import io
import itertools
import json
import tarfile

import numpy as np
import pytest
import torch
from synthetic_data import CLS, MASK, PAD, SEP, make_data_dir, train_stream

from data_prep.atomic import write_json_atomic
from pretrain.data import train_loader

SEQ_LEN = 64
LONGEST = 45  # every sample holds at most 45 tokens: a full-length batch pads to 48, not to seq_len
VOCAB = 200
MICRO = 16


def _data_dir(root, nsp, shards):
    data = make_data_dir(
        root, train_shards=shards, samples_per_shard=64, vocab_size=VOCAB, seq_len=LONGEST, nsp=nsp
    )
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["seq_len"] = SEQ_LEN  # samples may be shorter than seq_len; the loader must not pad to it
    write_json_atomic(data / "manifest.json", manifest)
    return data


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _data_dir(tmp_path_factory.mktemp("loader") / "pairs", nsp=True, shards=12)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _data_dir(tmp_path_factory.mktemp("loader") / "single", nsp=False, shards=2)


def _shard_contents(data_dir):
    """key -> (token ids, NSP label or None), read straight from the tar files."""
    found = {}
    for tar_path in sorted((data_dir / "shards" / "train").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                payload = tar.extractfile(member).read()
                ids, label = found.get(key, (None, None))
                if ext == "tokens.npy":
                    ids = np.load(io.BytesIO(payload), allow_pickle=False).astype(np.int64)
                else:
                    label = int(payload)
                found[key] = (ids, label)
    return found


def _loader_batches(data_dir, count, workers=1):
    """The first ``count`` batches of rank 0's training loader (one rank), as the trainer builds it."""
    stream = train_stream(data_dir, seed=5, micro_batch_size=MICRO)
    return list(itertools.islice(iter(train_loader(stream, workers, 2)), count))


def _check_batch(batch, originals, nsp):
    """Every per-batch promise; returns (masked input ids, original ids) at the masked positions."""
    ids, attention, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    rows, width = ids.shape
    lengths = [originals[key][0].size for key in batch["keys"]]
    assert rows == MICRO == len(batch["keys"])
    assert width % 8 == 0 and max(lengths) <= width < max(lengths) + 8, (width, max(lengths))
    assert batch["num_tokens"] == sum(lengths) == int(attention.sum())

    chosen = torch.zeros(rows * width, dtype=torch.bool)
    chosen[batch["mlm_positions"]] = True
    chosen = chosen.view(rows, width)
    assert torch.equal(batch["mlm_positions"], batch["mlm_positions"].sort().values)
    originals_at = []
    for row, key in enumerate(batch["keys"]):
        tokens, label = originals[key]
        n = tokens.size
        original = torch.from_numpy(tokens)
        assert attention[row, :n].all() and not attention[row, n:].any()
        assert (ids[row, n:] == PAD).all()
        # unmasked positions keep their token; masked ones are never [CLS], [SEP] or padding
        assert torch.equal(ids[row, :n][~chosen[row, :n]], original[~chosen[row, :n]])
        assert not chosen[row, n:].any()
        picked = original[chosen[row, :n]]
        assert not ((picked == CLS) | (picked == SEP)).any()
        # BERT's count: round(15%) of the sequence's non-special tokens, at least one
        maskable = int(((original != CLS) & (original != SEP)).sum())
        assert max(1, int(np.floor(0.15 * maskable + 0.5))) - int(chosen[row].sum()) in (0, 1), (
            maskable,
            int(chosen[row].sum()),
        )
        originals_at.append(picked)
        seps = (original == SEP).nonzero().flatten().tolist()
        if nsp:
            assert len(seps) == 2 and batch["next_sentence_label"][row] == label
            expected = torch.zeros(width, dtype=torch.long)
            expected[seps[0] + 1 : n] = 1  # segment B: after the first [SEP], through the closing one
            assert torch.equal(types[row], expected), (types[row], seps)
        else:
            assert len(seps) == 1 and not types[row].any()
    labels = torch.cat(originals_at)
    assert torch.equal(batch["mlm_labels"], labels)
    return ids[chosen], labels


def test_pair_batches_keep_every_promise_and_split_80_10_10(pairs):
    originals = _shard_contents(pairs)
    batches = _loader_batches(pairs, count=12 * 64 // MICRO)  # one whole epoch
    assert len({key for batch in batches for key in batch["keys"]}) == 12 * 64
    widths = set()
    masked_inputs, labels = [], []
    for batch in batches:
        inputs, originals_at = _check_batch(batch, originals, nsp=True)
        masked_inputs.append(inputs)
        labels.append(originals_at)
        widths.add(batch["input_ids"].shape[1])
    assert widths <= {24, 32, 40, 48} and 48 in widths  # never padded to seq_len=64
    inputs, labels = torch.cat(masked_inputs), torch.cat(labels)
    n = inputs.numel()
    assert n > 4000
    share_mask = float((inputs == MASK).float().mean())
    share_kept = float((inputs == labels).float().mean())
    share_random = 1 - share_mask - share_kept
    # 4 standard deviations of a binomial share at this n; a random token equals the original 1/V of the time
    tol = lambda p: 4 * (p * (1 - p) / n) ** 0.5  # noqa: E731
    assert share_mask == pytest.approx(0.8, abs=tol(0.8)), share_mask
    assert share_kept == pytest.approx(0.1 + 0.1 / VOCAB, abs=tol(0.1)), share_kept
    assert share_random == pytest.approx(0.1 - 0.1 / VOCAB, abs=tol(0.1)), share_random
    # random replacements are spread over the vocabulary, not a few ids
    replaced = inputs[(inputs != MASK) & (inputs != labels)]
    assert replaced.unique().numel() > 0.5 * min(VOCAB, replaced.numel())


def test_single_segment_batches_have_one_segment_and_no_nsp_label(single):
    originals = _shard_contents(single)
    for batch in _loader_batches(single, count=4, workers=0):
        _check_batch(batch, originals, nsp=False)
        assert "next_sentence_label" not in batch
