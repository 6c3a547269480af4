"""The tokenizer: train a SentencePiece model and save it as a Hugging Face tokenizer, or reuse one.

A trained tokenizer puts BERT's special tokens at fixed ids, [PAD] [UNK] [CLS] [SEP] [MASK] =
0 1 2 3 4 (SentencePiece's pad/unk/bos/eos slots plus one control symbol), and is saved in
``<out_dir>/tokenizer/`` twice over: ``spm.model`` (the SentencePiece model, which data_prep encodes
with: ~20 MB/s against ~2.5 MB/s for the equivalent ``tokenizers`` Unigram) and the HF files
(``tokenizer.json``, ``tokenizer_config.json``) that ``AutoTokenizer.from_pretrained`` loads offline.
The HF tokenizer is built from the SentencePiece model by transformers' own converter, which follows
the model's normalizer spec, so both give the same ids (tests/test_prep_tokenizer.py checks it);
the one known difference is the order of pieces in exact Viterbi ties (equal-score splits of runs
like "========"), which SentencePiece and ``tokenizers`` break differently.

``transformers`` is imported only here, only when saving or loading the HF files: it pulls in torch.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from data_prep.cleaning import HAN_CHARS
from data_prep.config import TokenizerConfig
from data_prep.manifest import SPECIAL_TOKENS

SPM_FILE = "spm.model"
HF_TOKENIZER_FILE = "tokenizer.json"
SPECIAL_NAMES = ("pad", "unk", "cls", "sep", "mask")  # in the order of manifest.SPECIAL_TOKENS
CONTROL_SCORE = -1e9
NORMALIZATION_RULES = {"nfkc": "nmt_nfkc", "none": "identity"}  # tokenizer.normalization -> SentencePiece's
# tokenizer.split_ideographs: the trainer's pretokenization delimiter goes around every ideograph of
# the training sentences (a private-use character: NFKC leaves it alone and text hardly holds it),
# so no piece can span two of them or join one to the word-start mark.
IDEOGRAPH_DELIMITER = "\ue000"
_IDEOGRAPH = re.compile(f"([{HAN_CHARS}])")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained or reused; one line with the fix."""


@dataclass(frozen=True)
class TokenizerInfo:
    vocab_size: int
    special_ids: dict[str, int]
    encoder: str
    """``sentencepiece`` (trained here: encode with spm.model) or ``hf`` (reused: tokenizer.json)."""


def train_sentencepiece(sentences: Iterable[str], config: TokenizerConfig, seed: int) -> bytes:
    """A SentencePiece model (serialized proto) trained on ``sentences``, fed in the given order.

    Deterministic: our own sampling upstream (so ``input_sentence_size=0``, no shuffling here), a
    seeded generator, and a fixed thread count (the unigram EM sums floats per thread).
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    delimiter = {}
    if config.split_ideographs:
        marked = rf"{IDEOGRAPH_DELIMITER}\1{IDEOGRAPH_DELIMITER}"
        sentences = (_IDEOGRAPH.sub(marked, sentence) for sentence in sentences)
        delimiter = {"pretokenization_delimiter": IDEOGRAPH_DELIMITER}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=config.model_type,
            vocab_size=config.vocab_size,
            character_coverage=config.character_coverage,
            byte_fallback=config.byte_fallback,
            normalization_rule_name=NORMALIZATION_RULES[config.normalization],
            hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary instead of an error
            pad_id=0,
            pad_piece=SPECIAL_TOKENS[0],
            unk_id=1,
            unk_piece=SPECIAL_TOKENS[1],
            bos_id=2,
            bos_piece=SPECIAL_TOKENS[2],
            eos_id=3,
            eos_piece=SPECIAL_TOKENS[3],
            control_symbols=[SPECIAL_TOKENS[4]],  # the next free id: 4
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=config.num_threads,
            minloglevel=2,
            **delimiter,
        )
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise TokenizerError(
            f"SentencePiece could not train a {config.vocab_size}-piece {config.model_type} model ({first}); "
            "lower tokenizer.vocab_size or add text"
        ) from None
    return model.getvalue()


def _hf_backend_from_spm(model_proto: bytes):
    """A ``tokenizers.Tokenizer`` equivalent to the SentencePiece model, with BERT's specials."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        # SentencePiece never matches control pieces in text; ``tokenizers`` would (they score 0, the
        # best score) when asked to encode special-token strings as text: make them the worst choice.
        control = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
        vocab = [
            (piece.piece, CONTROL_SCORE if piece.type == control else piece.score) for piece in proto.pieces
        ]
    else:  # BPE: a piece -> id map; the converter ranks merges by piece score
        vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    cls, sep = SPECIAL_TOKENS[2], SPECIAL_TOKENS[3]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",  # token_type_ids 0 for [CLS] A [SEP], 1 for B [SEP]
        special_tokens=[(cls, 2), (sep, 3)],
    )
    return backend


def save_trained_tokenizer(model_proto: bytes, directory: Path, seq_len: int) -> TokenizerInfo:
    """Write ``spm.model`` and the HF tokenizer files into ``directory``."""
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPM_FILE).write_bytes(model_proto)
    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    hf = PreTrainedTokenizerFast(
        tokenizer_object=_hf_backend_from_spm(model_proto),
        pad_token=pad,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        model_max_length=seq_len,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    hf.save_pretrained(str(directory))
    return TokenizerInfo(len(hf), dict(zip(SPECIAL_NAMES, range(5))), "sentencepiece")


def _load_hf(directory: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def reuse_tokenizer(source: Path, directory: Path) -> TokenizerInfo:
    """Copy a local HF tokenizer dir (not model weights) into ``directory`` and read its special ids."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copyfile(path, directory / path.name)
    try:
        hf = _load_hf(directory)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError... for a bad dir
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise TokenizerError(
            f"tokenizer.path {str(source)!r} is not a loadable Hugging Face tokenizer dir ({reason}); "
            "give a dir saved with save_pretrained, or drop tokenizer.path to train one"
        ) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(
            f"tokenizer.path {str(source)!r} has no fast (tokenizers) version; save it with a fast tokenizer"
        )
    ids = {name: getattr(hf, f"{name}_token_id") for name in SPECIAL_NAMES}
    missing = [name for name in ("cls", "sep", "pad", "mask") if ids[name] is None]
    if missing:
        raise TokenizerError(
            f"tokenizer.path {str(source)!r} lacks the {'/'.join(missing)} token(s) BERT needs; "
            "use a BERT-style tokenizer or drop tokenizer.path to train one"
        )
    if ids["unk"] is None:  # byte-level vocabularies have no unknown token
        ids["unk"] = -1
    if not (directory / HF_TOKENIZER_FILE).is_file():  # e.g. a vocab.txt-only BERT dir
        backend.save(str(directory / HF_TOKENIZER_FILE))
    return TokenizerInfo(len(hf), ids, "hf")


class SentenceEncoder:
    """Token ids of sentences, without special tokens; loaded once per worker process.

    Special-token strings that occur in the raw text ("[SEP]" in a docstring about BERT) are
    encoded as text, never as the special ids, so a document cannot forge the [CLS] A [SEP] B [SEP]
    structure: SentencePiece never matches control symbols, and ``encode_special_tokens`` tells
    ``tokenizers`` the same.
    """

    def __init__(self, directory: Path, encoder: str, special_ids: dict[str, int] | None = None):
        self._structural = {i for name, i in (special_ids or {}).items() if name != "unk" and i >= 0}
        if encoder == "sentencepiece":
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=str(directory / SPM_FILE))
            self._hf = None
        else:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker
            from tokenizers import Tokenizer

            self._sp = None
            self._hf = Tokenizer.from_file(str(directory / HF_TOKENIZER_FILE))
            self._hf.encode_special_tokens = True

    def encode(self, sentences: list[str]) -> list[list[int]]:
        if self._sp is not None:
            return self._sp.encode(sentences, num_threads=1)
        encodings = self._hf.encode_batch(sentences, add_special_tokens=False)
        # A reused tokenizer's model may still hold its special tokens as ordinary entries: drop
        # any that text produced, so the [CLS] A [SEP] B [SEP] structure stays unambiguous.
        return [[i for i in encoding.ids if i not in self._structural] for encoding in encodings]


def decoder_for(directory: Path):
    """A ``tokenizers.Tokenizer`` for showing ids as text (inspect), without importing transformers."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(directory / HF_TOKENIZER_FILE))
