"""The pretraining model: transformers' BERT with an objective that spends no compute on waste.

The weights are a stock ``BertForPreTraining`` (``BertForMaskedLM`` for the ``mlm`` objective), so
the export is a standard Hugging Face checkpoint. Only the loss is computed differently:

* The MLM head (transform + tied vocabulary projection) runs on the masked positions only, gathered
  before the head, as NVIDIA's BERT and the academic-budget recipes (Izsak et al. 2021) do. With
  15% masking that skips 85% of the largest matmul in a small BERT (hidden x vocab per position)
  and of the softmax over the vocabulary.
* The MLM cross-entropy runs in fp32 (``pretrain.chunked_cross_entropy``, ``mlm_loss_kernel``): on
  CUDA one ``F.cross_entropy`` over the gathered rows; on CPUs on blocks of rows that stay in cache,
  instead of several fp32 passes over all [M, V] logits.
* The NSP head sees the pooled [CLS] vector only (as in the stock model).

The loss equals the stock model's on the same batch and weights (tested), because positions that
are not masked contribute nothing to the stock cross-entropy (label -100). Model code imports
neither DeepSpeed nor WebDataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

from pretrain.chunked_cross_entropy import mlm_cross_entropy, resolve_loss_kernel


def bert_config_from_preset(
    path: str | Path,
    vocab_size: int,
    special_ids: dict[str, int],
    max_positions: int,
    attn_implementation: str = "sdpa",
) -> BertConfig:
    """A BertConfig from a preset JSON, with the vocabulary and special ids of the prepared data."""
    try:
        fields = {k: v for k, v in json.loads(Path(path).read_text()).items() if not k.startswith("_")}
    except (json.JSONDecodeError, AttributeError) as err:  # AttributeError: JSON, but not an object
        raise ValueError(
            f"model config {path} is not a JSON object of BertConfig fields ({err}); see configs/model/*.json"
        ) from None
    fields.update(vocab_size=vocab_size, pad_token_id=special_ids["pad"])
    if fields.get("max_position_embeddings", 512) < max_positions:
        fields["max_position_embeddings"] = max_positions
    config = BertConfig(**fields)
    config._attn_implementation = attn_implementation
    return config


def compile_encoder_layers(model: BertForPreTraining | BertForMaskedLM) -> None:
    """``torch.compile`` each transformer layer in place (regional compilation).

    Inductor fuses the element-wise work around the matmuls (bias adds, GELU, dropout, residual
    adds, LayerNorm) into a few generated kernels, the standard lever on GPUs. One layer's graph
    serves all layers, so compiling takes seconds, and module names and parameters stay those of
    the stock model. Sequence lengths vary by batch: after the first change, the graph is made
    shape-generic instead of recompiled per length.
    """
    for layer in model.bert.encoder.layer:
        layer.compile()


def build_hf_model(config: BertConfig, nsp: bool) -> BertForPreTraining | BertForMaskedLM:
    """A freshly initialised stock model: with the NSP head for ``mlm+nsp``, without for ``mlm``."""
    config.architectures = ["BertForPreTraining" if nsp else "BertForMaskedLM"]
    return BertForPreTraining(config) if nsp else BertForMaskedLM(config)


class PretrainingObjective(nn.Module):
    """MLM (+ NSP) loss of a stock HF BERT, with the MLM head applied to masked positions only.

    ``forward`` takes the collated batch (see ``pretrain.data.collate``) and returns a dict of 0-d
    tensors: ``loss`` (mlm + nsp), ``mlm_loss``, ``nsp_loss`` and, in eval mode, the counts
    ``mlm_correct``, ``mlm_count``, ``nsp_correct``, ``nsp_count``.
    """

    def __init__(
        self, model: BertForPreTraining | BertForMaskedLM, sparse_head: bool = True, loss_kernel: str = "auto"
    ):
        super().__init__()
        self.model = model
        self.nsp = isinstance(model, BertForPreTraining)
        self.sparse_head = sparse_head
        resolve_loss_kernel(loss_kernel, "cpu")  # a wrong name fails here, not at the first step
        self.loss_kernel = loss_kernel

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        mlm_positions: torch.Tensor,
        mlm_labels: torch.Tensor,
        next_sentence_label: torch.Tensor | None = None,
        **_: Any,
    ) -> dict[str, torch.Tensor]:
        encoded = self.model.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
        )
        hidden = encoded.last_hidden_state  # [B, L, H]
        if self.sparse_head:
            gathered = hidden.reshape(-1, hidden.shape[-1]).index_select(0, mlm_positions)  # [M, H]
            logits = self.model.cls.predictions(gathered)  # [M, V], the model's dtype
            out = {"mlm_loss": mlm_cross_entropy(logits, mlm_labels, self.loss_kernel)}  # in fp32
        else:  # the stock head over every position, then the masked rows: the unoptimised reference
            every = self.model.cls.predictions(hidden)  # [B, L, V]
            logits = every.reshape(-1, every.shape[-1]).index_select(0, mlm_positions).float()  # [M, V]
            out = {"mlm_loss": F.cross_entropy(logits, mlm_labels)}
        if not self.training:  # accuracy counts for evaluation (an argmax over [M, V] costs ~1% of a step)
            out.update(
                mlm_correct=(logits.argmax(-1) == mlm_labels).sum(),
                mlm_count=torch.tensor(mlm_labels.numel(), device=logits.device),
            )
        out["loss"] = out["mlm_loss"]
        if self.nsp and next_sentence_label is not None:
            nsp_logits = self.model.cls.seq_relationship(encoded.pooler_output).float()  # [B, 2]
            out["nsp_loss"] = F.cross_entropy(nsp_logits, next_sentence_label)
            out["loss"] = out["loss"] + out["nsp_loss"]
            if not self.training:
                out.update(
                    nsp_correct=(nsp_logits.argmax(-1) == next_sentence_label).sum(),
                    nsp_count=torch.tensor(next_sentence_label.numel(), device=logits.device),
                )
        return out


def set_tf32(enabled: bool) -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (Ampere and later), or in true fp32.

    torch's default is true fp32 for matmuls; the datasheet's fp32 training peak (and so the MFU of an
    fp32 run) assumes TF32, which keeps fp32's range with a 10-bit mantissa. bf16/fp16 runs are not
    affected. No effect on CPUs.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
