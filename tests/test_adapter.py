"""The model adapter: SD layouts, CLIP's real tokenization, prompt encoding and phrase positions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import UNet2DConditionModel

from erasekit.errors import ModelLayoutError, TokenizationError
from erasekit.models import ModelAdapter
from erasekit.models.tokenizer import clip_tokenizer


def test_clip_tokenizer_splits_words_like_sd1():
    tok = clip_tokenizer()
    assert tok.convert_ids_to_tokens(tok("van gogh").input_ids) == [
        "<|startoftext|>",
        "van</w>",
        "gogh</w>",
        "<|endoftext|>",
    ]
    assert tok.convert_ids_to_tokens(tok("nudity", add_special_tokens=False).input_ids) == ["nu", "dity</w>"]
    padded = tok("a dog", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407  # SD1.x pads with EOS


def test_adapter_finds_the_sixteen_cross_attention_layers_of_the_sd1_layout(tiny_pipe):
    # the SD1.x UNet layout (3 cross-attention down blocks, 2 layers each; mid; 3 cross-attention up blocks, 3 each)
    # at toy width: 16 attn2 layers, 32 K/V matrices, as in SD1.4/1.5
    unet = UNet2DConditionModel(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=2,
        cross_attention_dim=tiny_pipe.text_encoder.config.hidden_size,
        attention_head_dim=4,
        norm_num_groups=4,
        sample_size=8,
    )
    model = ModelAdapter(SimpleNamespace(unet=unet, text_encoder=tiny_pipe.text_encoder, tokenizer=tiny_pipe.tokenizer))
    assert len(model.layers) == 16 and len(model.kv_weights()) == 32
    assert sum(name.startswith("down_blocks") for name in (layer.name for layer in model.layers)) == 6
    assert all(name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for name in model.kv_weights())


def test_adapter_reports_family_from_padding(tiny_model):
    assert tiny_model.family == "sd1"


def test_adapter_refuses_sdxl_and_pipelines_without_text_encoder(tiny_pipe):
    parts = {"unet": tiny_pipe.unet, "text_encoder": tiny_pipe.text_encoder, "tokenizer": tiny_pipe.tokenizer}
    with pytest.raises(ModelLayoutError, match="SDXL"):
        ModelAdapter(SimpleNamespace(**parts, text_encoder_2=object()))
    with pytest.raises(ModelLayoutError, match="text_encoder"):
        ModelAdapter(SimpleNamespace(**{**parts, "text_encoder": None}))


def test_adapter_refuses_a_unet_without_cross_attention(tiny_pipe):
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        norm_num_groups=4,
        sample_size=8,
        cross_attention_dim=tiny_pipe.text_encoder.config.hidden_size,
    )
    with pytest.raises(ModelLayoutError, match="no cross-attention"):
        ModelAdapter(SimpleNamespace(unet=unet, text_encoder=tiny_pipe.text_encoder, tokenizer=tiny_pipe.tokenizer))


def test_phrase_positions_cover_every_token_of_a_multi_token_phrase(tiny_model):
    assert tiny_model.phrase_positions("a painting by kelly mckernan", "Kelly McKernan") == [4, 5, 6]
    assert tiny_model.phrase_positions("nudity", "nudity") == [1, 2]
    with pytest.raises(TokenizationError, match="does not occur"):
        tiny_model.phrase_positions("a photo of a cat", "dog")


def test_token_positions_locate_phrase_eos_and_padding(tiny_model):
    positions = tiny_model.token_positions("a painting by kelly mckernan", "kelly mckernan")
    assert positions.phrase == [4, 5, 6] and positions.eos == 7
    assert positions.padding == list(range(8, 77))
    ids = tiny_model.tokenize(["a painting by kelly mckernan"])[0]
    assert ids[positions.eos] == tiny_model.tokenizer.eos_token_id


def test_last_word_index_is_bos_for_an_empty_prompt(tiny_model):
    assert tiny_model.last_word_index("") == tiny_model.last_word_index(" ") == 0
    assert tiny_model.last_word_index("a photo of a dog") == 5


def test_encode_matches_the_pipeline_prompt_encoding(tiny_pipe, tiny_model):
    ours = tiny_model.encode(["a photo of a dog"])
    theirs, _ = tiny_pipe.encode_prompt("a photo of a dog", "cpu", 1, False)
    assert torch.equal(ours, theirs)


def test_causal_shortcut_gives_the_same_leading_rows(tiny_model):
    texts = ["a photo of a dog", "kelly mckernan", ""]
    full, short = tiny_model.encode(texts), tiny_model.encode(texts, positions=6)
    assert short.shape[1] == 6
    assert torch.allclose(full[:, :6], short, atol=1e-5)


def test_encode_refuses_a_text_longer_than_the_encoder_takes(tiny_model):
    with pytest.raises(TokenizationError, match="at most 75"):
        tiny_model.encode(["word " * 80])
